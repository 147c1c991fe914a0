"""A stack folder is shared input: a tampered one cannot make Layercake read or write outside it, a killed run
never leaves a half-replaced folder, and every refusal is one line with exit 2."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from layers import folders
from layers.backends import get_backend
from layers.cli import main
from layers.pipeline import GenerateOptions, generate, write_outputs

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a lighthouse on a cliff at dusk, a keeper with a lantern, gulls close to the glass"
SIZE = dict(width=96, height=160)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """Two complete output folders of different scenes (old and new), written once."""
    root = tmp_path_factory.mktemp("stacks")
    draft = get_backend("draft")
    out = {}
    for key, seed in (("old", 1), ("new", 2)):
        result = generate(PROMPT, draft, seed=seed, options=GenerateOptions(video=False), **SIZE)
        write_outputs(result, root / key)
        out[key] = root / key
    return out


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def everything_under(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (a decompression bomb as far as anyone reading the header knows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def regenerate(folder: Path, capsys, backend=("--backend", "draft")) -> tuple[int, list[str]]:
    code = main(["regenerate", "--from", str(folder), "--layer", "midground", "--seed", "9", *backend])
    return code, capsys.readouterr().err.strip().splitlines()


def tamper(stacks, tmp_path, change) -> Path:
    work = tmp_path / "shared" / "received"
    shutil.copytree(stacks["old"], work)
    manifest = json.loads((work / "manifest.json").read_text())
    if change(manifest, work) is not False:  # False: the change wrote manifest.json itself
        (work / "manifest.json").write_text(json.dumps(manifest))
    return work


def _rename_layer(m, work):
    m["layers"][1]["name"] = "../../pwned1"
    m["plan"]["layers"][1]["name"] = "../../pwned1"  # the plan agreeing used to make it exit 0


def _nested(m, work):
    (work / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    return False


def _huge(m, work):
    m["padding"] = "x" * (5 * 1024 * 1024)


def _symlink(m, work):
    (work / "layers" / "background.png").unlink()
    (work / "layers" / "background.png").symlink_to(work.parent / "secret.png")


TAMPERED = {
    "layer name with ../": (_rename_layer, "manifest layers must be background, midground, foreground"),
    "plan-only layer name": (lambda m, w: m["plan"]["layers"][2].update(name="../x"), "manifest plan layers"),
    "absolute file": (lambda m, w: m["layers"][0].update(file="/etc/passwd"), "must be a path inside the folder"),
    "file with ../": (lambda m, w: m["layers"][0].update(file="../secret.png"), "must be a path inside the folder"),
    "symlink out": (_symlink, "points outside the folder"),
    "depth file out": (lambda m, w: m["layers"][2].update(depth_file="depth/../../secret.png"),
                       "must be a path inside the folder"),
    "nested 100000 deep": (_nested, "nested 100000 deep; a manifest is at most 16 deep"),
    "5 MB manifest": (_huge, "a manifest is at most 4194304 bytes"),
    "missing layer": (lambda m, w: m["layers"].pop(1), "got 'background', 'foreground'"),
    "missing plan": (lambda m, w: m.pop("plan"), "manifest has no 'plan'"),
    "layers not a list": (lambda m, w: m.update(layers={"a": 1}), "'layers' must be a list"),
    "nearness a string": (lambda m, w: m["layers"][0].update(nearness="near"), "'nearness' must be a number"),
    "400 MP layer": (lambda m, w: png_header(w / "layers" / "foreground.png", 20_000, 20_000),
                     "foreground layer foreground.png is too large: 400 MP, more than the limit of 40 MP"),
    "400 MP depth": (lambda m, w: png_header(w / "depth" / "midground.png", 20_000, 20_000),
                     "midground depth map midground.png is too large"),
    "400 MP prior": (lambda m, w: png_header(w / "priors" / "background.png", 20_000, 20_000),
                     "background prior background.png is too large"),
    "layer of another size": (lambda m, w: Image.new("RGBA", (64, 64)).save(w / "layers" / "midground.png"),
                              "midground layer midground.png is 64x64; the stack is 96x160"),
    "bad options": (lambda m, w: m["options"].update(steps=10**9), "steps must be 1..150"),
    "local model folder": (lambda m, w: m["render"].update(backend="diffusers", model=str(w.parent)),
                           "is not a preset or hub id; to use a local model, pass --model"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_folder_is_refused_in_one_line_and_nothing_is_read_or_written(case, stacks, tmp_path, capsys):
    change, needle = TAMPERED[case]
    (tmp_path / "shared").mkdir()
    Image.new("RGBA", (96, 160), (255, 0, 0, 255)).save(tmp_path / "shared" / "secret.png")
    work = tamper(stacks, tmp_path, change)
    before = everything_under(tmp_path)
    # The backend the manifest names is used unless one is given: the "local model" case relies on that.
    code, lines = regenerate(work, capsys, backend=() if case == "local model folder" else ("--backend", "draft"))
    assert code == 2 and len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    assert everything_under(tmp_path) == before, "nothing written, inside or outside the folder"
    assert not list(tmp_path.parent.rglob("pwned1*"))


def test_a_169_mp_layer_is_refused_from_its_header_without_decoding_it(stacks, tmp_path):
    """A real 13000x13000 PNG (170 KB on disk): refused in one line, peak memory far below its 676 MB RGBA."""
    work = tamper(stacks, tmp_path, lambda m, w: None)
    with open(work / "layers" / "foreground.png", "wb") as f:
        def chunk(kind, data):
            f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
        f.write(b"\x89PNG\r\n\x1a\n")
        chunk(b"IHDR", struct.pack(">IIBBBBB", 13_000, 13_000, 8, 0, 0, 0, 0))
        packer, row = zlib.compressobj(9), b"\0" * 13_001
        chunk(b"IDAT", b"".join(packer.compress(row) for _ in range(13_000)) + packer.flush())
        chunk(b"IEND", b"")
    # VmHWM is this process image's own peak: ru_maxrss would also count the pages a big parent shared at fork.
    code = ("import re, sys; from layers.cli import main; rc = main(sys.argv[1:]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('peak', int(hwm) // 1024, file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "regenerate", "--from", str(work), "--layer", "midground",
                           "--backend", "draft"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 2 and lines[0] == ("error: foreground layer foreground.png is too large: 13000x13000 pixels "
                                            "(169 MP), more than the limit of 40 MP (set LAYERCAKE_MAX_UPLOAD_PIXELS "
                                            "to change it)"), lines
    assert int(lines[1].split()[1]) < 400, f"peak RSS {lines[1]} MB: the image was decoded"


# --- the folder swap --------------------------------------------------------------------------------------------

def _killed_swap(old: Path, new: Path, out: Path, step: str, exchange: bool) -> None:
    """In a forked child: replace `out` (a copy of old) by a copy of new, dying with os._exit right after `step`."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            if not exchange:
                folders._exchange = lambda a, b: False
            folders._step_hook = lambda name: os._exit(9) if name == step else None
            staging = folders.staging_folder(out)
            shutil.copytree(new, staging, dirs_exist_ok=True)
            folders.replace_folder(staging, out)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) in (0, 9)


@pytest.mark.parametrize("exchange, steps", [(True, ["staged", "exchanged", "removed-old"]),
                                             (False, ["staged", "moved-aside", "moved-in", "removed-old"])],
                         ids=["renameat2", "two renames"])
def test_a_kill_at_every_step_of_the_swap_leaves_the_whole_old_or_the_whole_new_folder(stacks, tmp_path, exchange,
                                                                                       steps):
    old, new = fingerprint(stacks["old"]), fingerprint(stacks["new"])
    assert old != new
    seen = []
    for step in steps:
        parent = tmp_path / step
        out = parent / "scene"
        shutil.copytree(stacks["old"], out)
        _killed_swap(stacks["old"], stacks["new"], out, step, exchange)
        if exchange:  # one atomic exchange: there is no moment to catch a mix in
            assert out.is_dir() and fingerprint(out) in (old, new), step
        folders.clean_stale(parent)  # what the next run does first
        state = fingerprint(out)
        assert state in (old, new), step
        seen.append("new" if state == new else "old")
        assert [p.name for p in parent.iterdir()] == ["scene"], f"staging left after {step}"
    assert seen[0] == "old" and seen[-1] == "new"


def test_replacing_an_output_keeps_what_the_user_added_and_refuses_a_foreign_folder(stacks, tmp_path):
    from layers.pipeline import load_result

    out = tmp_path / "scene"
    shutil.copytree(stacks["old"], out)
    (out / "notes.txt").write_text("mine")
    (out / "parallax.mp4").write_bytes(b"stale video of the old scene")
    write_outputs(load_result(stacks["new"]), out)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "parallax.mp4").exists(), "an output of ours that the new run does not write is not kept"
    # These carry the time they were made; stack.glb places its cards by the nearness the manifest stores to
    # 6 decimals, so a stack read back gives the same scene a float's rounding apart.
    timestamped = ("notes.txt", "manifest.json", "stack.zip", "stack.ora", "stack.glb")
    assert {k: v for k, v in fingerprint(out).items() if k not in timestamped} == \
        {k: v for k, v in fingerprint(stacks["new"]).items() if k not in timestamped}
    home = tmp_path / "Documents"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match="already holds other files and is not a Layercake output"):
        write_outputs(load_result(stacks["new"]), home)
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    code = main(["generate", "--prompt", PROMPT, "--out", str(home), "--backend", "draft", "--no-video"])
    assert code == 2 and [p.name for p in home.iterdir()] == ["thesis.tex"]


# --- stale staging ----------------------------------------------------------------------------------------------

def test_staging_left_by_a_killed_run_is_cleaned_by_the_next_run_and_at_server_start(stacks, tmp_path):
    from layers.pipeline import load_result
    from layers.studio import Studio

    parent = tmp_path / "outputs"
    parent.mkdir()
    pid = os.fork()
    if pid == 0:  # a generate killed mid-export: a staging folder with a partial PSD
        try:
            staging = folders.staging_folder(parent / "scene")
            (staging / "stack.psd").write_bytes(b"8BPS half")
        finally:
            os._exit(9)
    os.waitpid(pid, 0)
    live = folders.staging_folder(parent / "other")  # a run still writing (this process): kept
    legacy_old = parent / ".scene.abcd1234.tmp"     # named by an earlier version, two hours old: removed
    legacy_old.mkdir()
    os.utime(legacy_old, (time.time() - 7200,) * 2)
    legacy_new = parent / ".scene.efgh5678.tmp"     # the same, a minute old: could be a run at work, kept
    legacy_new.mkdir()
    mine = parent / ".config.d"                     # not ours: never touched
    mine.mkdir()
    write_outputs(load_result(stacks["new"]), parent / "scene")
    assert sorted(p.name for p in parent.iterdir()) == sorted(["scene", live.name, legacy_new.name, ".config.d"])

    runs = tmp_path / "studio" / "runs"
    runs.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:
        try:
            folders.staging_folder(runs / ("0" * 32))
        finally:
            os._exit(9)
    os.waitpid(pid, 0)
    assert len(list(runs.iterdir())) == 1
    Studio(get_backend("draft"), output_root=tmp_path / "studio")
    assert list(runs.iterdir()) == [], "a dead server's staging is removed at start, not an hour later"


def test_output_folders_get_the_users_normal_permissions(stacks, tmp_path):
    from layers.pipeline import load_result

    result = load_result(stacks["new"])
    previous = os.umask(0o027)
    try:
        write_outputs(result, tmp_path / "a")
    finally:
        os.umask(previous)
    previous = os.umask(0o022)
    try:
        write_outputs(result, tmp_path / "b")
    finally:
        os.umask(previous)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "b" / "layers").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "b" / "stack.psd").stat().st_mode & 0o777 == 0o644


# --- the command line -------------------------------------------------------------------------------------------

def test_a_closed_stdout_pipe_ends_quietly_with_141():
    """`plan --json | head -c 100`: head has gone; no traceback, exit 141 as `cat` killed by SIGPIPE reports."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "layers", "plan", "--prompt", PROMPT, "--json"], cwd=ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == 141
    shell = subprocess.run(f"{sys.executable} -m layers plan --prompt '{PROMPT}' --json | head -c 100",
                           shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shell.stdout.startswith("{") and len(shell.stdout) == 100 and shell.stderr == ""


def test_the_studio_limit_is_the_only_one_applied_to_an_upload(tmp_path, monkeypatch):
    """The studio's own limit decides; no inner loader checks the map again against the built-in default."""
    from layers import images
    from layers.studio import Studio, StudioLimits

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1_000)  # the built-in default, far below the studio's
    Image.new("L", (120, 100), 128).save(tmp_path / "map.png")
    studio = Studio(get_backend("draft"), output_root=tmp_path / "out",
                    limits=StudioLimits(max_upload_pixels=20_000))
    run = studio.generate(PROMPT, **SIZE, depth_source="map", depth_map=str(tmp_path / "map.png"),
                          options=GenerateOptions(video=False))
    assert run.result.depth_source == "map"
    small = Studio(get_backend("draft"), output_root=tmp_path / "out2", limits=StudioLimits(max_upload_pixels=5_000))
    with pytest.raises(ValueError) as info:
        small.generate(PROMPT, **SIZE, depth_source="map", depth_map=str(tmp_path / "map.png"))
    assert str(info.value) == ("depth map map.png is too large: 120x100 pixels (0.012 MP), more than the limit of "
                               "0.005 MP (set LAYERCAKE_MAX_UPLOAD_PIXELS to change it)")


def test_a_written_stack_leaves_no_encodings_in_memory(stacks, tmp_path):
    """A long-running server kept the last 24 PNG encodings (tens of MB per large stack) after every request."""
    from layers import export
    from layers.pipeline import load_result

    write_outputs(load_result(stacks["new"]), tmp_path / "scene")
    assert len(export._PNG_CACHE) == 0
