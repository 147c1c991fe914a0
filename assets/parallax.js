// Interactive parallax viewer, shared by the studio (gr.HTML's js_on_load, where `element` is the component's
// root) and by parallax.html (which calls this code with its own root as `element`).
//
// Inside `element`, a .lc-stage holds one <img class="lc-plane"> per layer, back to front, each with
// data-depth (how far the layer moves, 0..1) and data-depth-map (its own depth map, white = near). Where WebGL
// is available a canvas on top of the cards draws every layer displaced per pixel by its own depth map; the flat
// cards underneath move as a whole and are what shows where WebGL is missing. With prefers-reduced-motion the
// view stays still on the composite. The stage can be replaced (a new result in the studio), so it is looked up
// on every frame instead of being captured once.
const target = { x: 0, y: 0 };
const current = { x: 0, y: 0 };
let frame = null;
let renderer = null;
let last = 0;
const EASE_MS = 70;

const stage = () => element.querySelector(".lc-stage");
const clamp = (v) => Math.max(-1, Math.min(1, v));
const reduced = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : { matches: false };

// How far a layer moves and how much it is enlarged so that its shifted edge never shows: one rule for the
// flat cards (CSS) and the shader (GLSL below).
const shiftOf = (depth, amount) => [-current.x * depth * amount, -current.y * depth * amount * 0.6];
// No motion (reduced motion) needs no margin: every layer at scale 1 is exactly the composite.
const scaleOf = (depth, amount) => (amount > 0 ? 1 + 2 * amount * depth + 0.01 : 1);

const VERTEX = `
attribute vec2 aPos;
varying vec2 vUv;
void main() { vUv = vec2(aPos.x * 0.5 + 0.5, 0.5 - aPos.y * 0.5); gl_Position = vec4(aPos, 0.0, 1.0); }`;
// Each output pixel looks up the source point that moves onto it: the shift depends on the depth found there,
// so a few fixed-point steps find it (exact for a flat map, close for a smooth one).
const FRAGMENT = `
precision mediump float;
varying vec2 vUv;
uniform sampler2D uColor;
uniform sampler2D uDepth;
uniform vec2 uShift;
uniform float uAmount;
uniform vec2 uRange;
float depthAt(vec2 uv) {
  return 0.15 + 0.85 * clamp((texture2D(uDepth, uv).r - uRange.x) / uRange.y, 0.0, 1.0);
}
void main() {
  vec2 src = vUv;
  for (int i = 0; i < 4; i++) {
    float d = depthAt(src);
    src = 0.5 + (vUv - 0.5 - uShift * d) / (uAmount > 0.0 ? 1.0 + 2.0 * uAmount * d + 0.01 : 1.0);
  }
  gl_FragColor = texture2D(uColor, src);  // premultiplied: blended with ONE, ONE_MINUS_SRC_ALPHA
}`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

function texture(gl, image) {
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  // Premultiplied, so that linear filtering at a layer's edge mixes colour with transparency, not with the black
  // of transparent pixels (a dark fringe round every figure while it moves). Depth maps are opaque: unchanged.
  gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, true);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, image);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
  return tex;
}

function loaded(image) {
  if (image.complete && image.naturalWidth) return Promise.resolve(image);
  return new Promise((resolve, reject) => {
    image.addEventListener("load", () => resolve(image), { once: true });
    image.addEventListener("error", reject, { once: true });
  });
}

// A WebGL renderer for one stage, or null where WebGL (or a depth map) is missing: the flat cards stay.
function buildRenderer(s) {
  const planes = Array.from(s.querySelectorAll(".lc-plane"));
  if (!planes.length || planes.some((p) => !p.dataset.depthMap)) return null;
  const canvas = document.createElement("canvas");
  canvas.className = "lc-gl";
  // Over the cards, whatever the page's CSS: the studio and parallax.html style the rest differently.
  canvas.style.cssText = "position:absolute;inset:0;width:100%;height:100%;pointer-events:none;";
  canvas.setAttribute("aria-hidden", "true");
  let gl = null;
  try {
    gl = canvas.getContext("webgl", { alpha: false, antialias: false, preserveDrawingBuffer: true });
  } catch (err) {
    gl = null;
  }
  if (!gl) {
    s.dataset.mode = "flat";
    return null;
  }
  const program = gl.createProgram();
  try {
    gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  } catch (err) {
    s.dataset.mode = "flat";
    return null;
  }
  const r = { stage: s, canvas, gl, program, layers: null };
  const near = planes.map((p) => parseFloat(p.dataset.nearness || "NaN"));
  const lo = Math.min(...near), hi = Math.max(...near);
  r.range = Number.isFinite(lo) && hi > lo ? [lo, hi - lo] : [0, 1];
  const maps = planes.map((p) => {
    const img = new Image();
    img.src = p.dataset.depthMap;
    return img;
  });
  Promise.all([...planes.map(loaded), ...maps.map(loaded)]).then(() => {
    if (renderer !== r) return;
    gl.useProgram(program);
    const buffer = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffer);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
    const loc = gl.getAttribLocation(program, "aPos");
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    r.layers = planes.map((p, i) => ({ plane: p, color: texture(gl, p), depth: texture(gl, maps[i]) }));
    r.uniforms = Object.fromEntries(["uColor", "uDepth", "uShift", "uAmount", "uRange"].map(
      (name) => [name, gl.getUniformLocation(program, name)]));
    s.insertBefore(canvas, s.querySelector(".lc-hint"));
    s.dataset.mode = "webgl";
    schedule();
  }, () => {
    s.dataset.mode = "flat";
  });
  return r;
}

function drawGL(r, amount) {
  const { gl, canvas, uniforms } = r;
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  gl.viewport(0, 0, w, h);
  gl.clearColor(0, 0, 0, 1);
  gl.clear(gl.COLOR_BUFFER_BIT);
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
  gl.uniform1f(uniforms.uAmount, amount);
  gl.uniform2f(uniforms.uRange, r.range[0], r.range[1]);
  gl.uniform2f(uniforms.uShift, ...shiftOf(1, amount));
  gl.uniform1i(uniforms.uColor, 0);
  gl.uniform1i(uniforms.uDepth, 1);
  for (const layer of r.layers) {
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, layer.color);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, layer.depth);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
}

function draw(now) {
  frame = null;
  // Ease towards the pointer so the motion stays smooth when events arrive unevenly; by time, not by frame, so a
  // slow device (or a software renderer) arrives as soon as a fast one.
  const step = 1 - Math.exp(-Math.max(0, now - last) / EASE_MS);
  last = now;
  current.x += (target.x - current.x) * step;
  current.y += (target.y - current.y) * step;
  const s = stage();
  if (!s) return;
  // Reduced motion: no shift and the same scale for every layer, which is the composite.
  const amount = reduced.matches ? 0 : parseFloat(s.dataset.amount || "0.05");
  s.querySelectorAll(".lc-plane").forEach((img) => {
    const depth = parseFloat(img.dataset.depth || "0");
    const [dx, dy] = shiftOf(depth, amount);
    img.style.transform = `translate3d(${(dx * 100).toFixed(3)}%, ${(dy * 100).toFixed(3)}%, 0) ` +
      `scale(${scaleOf(depth, amount).toFixed(4)})`;
  });
  if (!renderer || renderer.stage !== s) renderer = s.dataset.mode === "flat" ? null : buildRenderer(s);
  if (renderer && renderer.layers) drawGL(renderer, amount);
  s.dataset.x = current.x.toFixed(3);
  s.dataset.y = current.y.toFixed(3);
  if (Math.abs(target.x - current.x) > 0.001 || Math.abs(target.y - current.y) > 0.001) {
    frame = requestAnimationFrame(draw);
  }
}

function schedule() {
  if (frame === null) {
    last = performance.now() - 16;  // after a pause, ease from one frame's worth, not from the pause
    frame = requestAnimationFrame(draw);
  }
}

function pointAt(clientX, clientY) {
  const s = stage();
  if (!s) return;
  if (reduced.matches) {
    // Reduced motion: the still composite, whatever the pointer does.
    s.dataset.still = "true";
    return;
  }
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
// A new stage (the studio shows a new result) is drawn as soon as it appears, not at the next pointer move.
new MutationObserver(() => schedule()).observe(element, { childList: true, subtree: true });
schedule();
