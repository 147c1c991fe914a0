// Interactive parallax viewer: the layers of #parallax follow the pointer (mouse, pen or touch).
// Runs as gr.HTML's js_on_load: `element` is the component's root. The stage inside is replaced each time a new
// result arrives, so it is looked up on every frame instead of being captured once.
const target = { x: 0, y: 0 };
const current = { x: 0, y: 0 };
let frame = null;

const stage = () => element.querySelector(".lc-stage");
const clamp = (v) => Math.max(-1, Math.min(1, v));

function draw() {
  frame = null;
  // Ease towards the pointer so the motion stays smooth when events arrive unevenly.
  current.x += (target.x - current.x) * 0.2;
  current.y += (target.y - current.y) * 0.2;
  const s = stage();
  if (!s) return;
  const amount = parseFloat(s.dataset.amount || "0.05");
  s.querySelectorAll(".lc-plane").forEach((img) => {
    const depth = parseFloat(img.dataset.depth || "0");
    const dx = -current.x * depth * amount * 100;
    const dy = -current.y * depth * amount * 60;
    // Each plane is enlarged just enough that its shifted edge never shows.
    const scale = 1 + 2 * amount * depth + 0.01;
    img.style.transform = `translate3d(${dx.toFixed(3)}%, ${dy.toFixed(3)}%, 0) scale(${scale.toFixed(4)})`;
  });
  s.dataset.x = current.x.toFixed(3);
  s.dataset.y = current.y.toFixed(3);
  if (Math.abs(target.x - current.x) > 0.001 || Math.abs(target.y - current.y) > 0.001) {
    frame = requestAnimationFrame(draw);
  }
}

function schedule() {
  if (frame === null) frame = requestAnimationFrame(draw);
}

function pointAt(clientX, clientY) {
  const s = stage();
  if (!s) return;
  const r = s.getBoundingClientRect();
  if (r.width === 0 || r.height === 0) return;
  target.x = clamp(((clientX - r.left) / r.width) * 2 - 1);
  target.y = clamp(((clientY - r.top) / r.height) * 2 - 1);
  s.classList.add("lc-active");
  schedule();
}

function recenter() {
  target.x = 0;
  target.y = 0;
  const s = stage();
  if (s) s.classList.remove("lc-active");
  schedule();
}

element.addEventListener("pointermove", (e) => pointAt(e.clientX, e.clientY));
element.addEventListener("pointerdown", (e) => pointAt(e.clientX, e.clientY));
element.addEventListener("pointerleave", recenter);
element.addEventListener("touchstart", (e) => {
  if (e.touches.length) pointAt(e.touches[0].clientX, e.touches[0].clientY);
}, { passive: true });
element.addEventListener("touchmove", (e) => {
  if (e.touches.length) pointAt(e.touches[0].clientX, e.touches[0].clientY);
}, { passive: true });
element.addEventListener("touchend", recenter);
