"""Batch: job files read into jobs (bad lines named by line), one stack folder per job, a summary, resuming after a
kill without redoing or losing a job, and a failing job recorded while the rest run."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layers.batch import BatchSettings, incomplete_reason, read_attempts, run_batch
from layers.jobs import job_name, read_jobs
from layers.cli import main

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"width": 128, "height": 192}
DRAFT = BatchSettings(backend="draft", options={"video": False})
STACK_FILES = {"manifest.json", "composite.png", "stack.psd", "stack.ora", "stack.zip", "layers/background.png",
               "layers/midground.png", "layers/foreground.png", "depth/background.png", "priors/foreground.png"}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def text_jobs(n: int, **extra) -> list[dict]:
    scenes = ["a castle on a hill, two knights, falling leaves", "a velvet hall, one dancer, glass shards",
              "a harbour at dusk, three sailors, drifting lanterns", "a library vault, a scholar, floating pages"]
    return [{"prompt": scenes[i % len(scenes)], "seed": i, **SIZE, **extra} for i in range(n)]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def summary_rows(out: Path) -> list[dict]:
    with open(out / "batch.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- reading job files -----------------------------------------------------------------------------------------

def test_names_are_safe_stable_and_unique(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"prompt": "Ünïcödé Hall / ../../etc, two knights!"},
        {"prompt": "Ünïcödé Hall / ../../etc, two knights!", "seed": 3},
        {"prompt": "a hall", "name": "My Scene"},
        {"prompt": "another hall", "name": "my scene"},
        {"prompt": "ザ" * 10},
    ])
    names = [j.name for j in read_jobs(jobs).jobs]
    assert names == ["unicode-hall-etc-two-knights", "unicode-hall-etc-two-knights-2", "my-scene", "my-scene-2",
                     "job"]
    assert [j.name for j in read_jobs(jobs).jobs] == names, "the same file gives the same names"
    assert len(job_name("word " * 40)) <= 48


def test_three_job_file_kinds(tmp_path):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "02 Night Market.txt").write_text("a night market, two vendors, paper lanterns", encoding="utf-8")
    (folder / "01-dawn.txt").write_text("a dawn field, a shepherd, mist", encoding="utf-8")
    (folder / "notes.md").write_text("not a job", encoding="utf-8")
    assert [(j.name, j.prompt[:7]) for j in read_jobs(folder).jobs] == [("01-dawn", "a dawn "),
                                                                         ("02-night-market", "a night")]

    (tmp_path / "pic.png").write_bytes(b"")
    Image.new("RGB", (64, 64), "red").save(tmp_path / "pic.png")
    table = tmp_path / "jobs.csv"
    table.write_text('prompt,seed,width,height,midground_prompt,image,layers\n'
                     '"a hall, two knights",7,128,192,a masked dancer,,\n'
                     ',,,,,pic.png,3\n'
                     ',,,,,pic.png,auto\n'
                     ',,,,,pic.png,7\n', encoding="utf-8")
    listed = read_jobs(table)
    text, picture, auto = listed.jobs
    assert auto.layers == "auto" and auto.name == "pic-2"
    assert [(o.line, o.reason) for o in listed.invalid] == [(5, "layers 7 is out of range 2..6 (or auto)")]
    assert (text.prompt, text.seed, text.width, text.height) == ("a hall, two knights", 7, 128, 192)
    assert text.overrides == (("midground", "a masked dancer"),)
    assert (picture.kind, Path(picture.image), picture.layers, picture.name) == ("picture", tmp_path / "pic.png", 3,
                                                                                 "pic")


def test_bad_lines_are_named_by_line_and_the_rest_are_jobs(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"prompt": "a castle, two knights"},
        "{not json",
        {"prompt": "a hall", "colour": "red"},
        {"image": "nowhere.png"},
        "",
        {"prompt": "a hall", "width": 100},
        ["a list"],
        {"seed": 3},
    ])
    listed = read_jobs(jobs)
    assert [j.line for j in listed.jobs] == [1]
    reasons = {o.line: o.reason for o in listed.invalid}
    assert set(reasons) == {2, 3, 4, 6, 7, 8}
    assert "not valid JSON" in reasons[2]
    assert "unknown key 'colour'" in reasons[3]
    assert "image not found: nowhere.png" in reasons[4]
    assert "width 100 is not a multiple of 8" in reasons[6]
    assert "JSON object" in reasons[7]
    assert "needs a prompt" in reasons[8]
    assert all("\n" not in r for r in reasons.values())

    table = tmp_path / "jobs.csv"
    table.write_text("prompt,mood\na hall,grim\na vault,calm\n", encoding="utf-8")
    bad = read_jobs(table)
    assert not bad.jobs and [(o.line, "unknown key 'mood'" in o.reason) for o in bad.invalid] == [(2, True), (3, True)]


@pytest.mark.parametrize("content", ["", "\n\n", "prompt,seed\n"])
def test_an_empty_job_file_exits_2_with_one_line(tmp_path, capsys, content):
    suffix = ".csv" if "," in content else ".jsonl"
    jobs = tmp_path / f"jobs{suffix}"
    jobs.write_text(content, encoding="utf-8")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--backend", "draft"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds no jobs" in err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_out_exits_2_before_any_work(tmp_path, capsys):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(1))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert main(["batch", str(jobs), "--out", str(out), "--backend", "draft"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "output folder" in err
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "jobs.jsonl"]


# --- running a batch -------------------------------------------------------------------------------------------

def write_picture(folder: Path) -> tuple[Path, Path]:
    """A 160x120 picture (sky, a red disc in the middle distance, a green box in front) and its depth map."""
    h, w = 120, 160
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = (0.3 + 0.4 * y[..., None] / h) * np.array([120, 160, 220], np.float32)
    disc, box = (x - 60) ** 2 + (y - 60) ** 2 < 30 ** 2, (x > 110) & (y > 70)
    rgb[disc], rgb[box] = (200, 60, 40), (40, 180, 60)
    depth = np.where(box, 0.9, np.where(disc, 0.5, 0.1))
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "scene.png")
    Image.fromarray((depth * 255).astype(np.uint8)).save(folder / "scene_depth.png")
    return folder / "scene.png", folder / "scene_depth.png"


def test_local_batch_of_text_and_picture_jobs_and_a_failure_does_not_stop_it(tmp_path):
    write_picture(tmp_path)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(3)[:2] + [
        {"image": "scene.png", "depth": "scene_depth.png", "layers": 3},
        {"prompt": "bad", "tint": 3},
        text_jobs(3)[2],
        {"image": "scene.png", "name": "no depth map"},
    ])
    out = tmp_path / "out"
    listed = read_jobs(jobs)
    harbour = listed.jobs[3].name
    assert harbour == "a-harbour-at-dusk-three-sailors-drifting", "names stop at a word within 48 characters"
    # A file where the third text job's folder should go: that job fails when written, the others go on.
    out.mkdir()
    (out / harbour).write_text("in the way")
    summary = run_batch(listed, out, DRAFT)

    rows = summary_rows(out)
    assert [(r["job"], r["line"], r["status"]) for r in rows] == [
        ("a-castle-on-a-hill-two-knights-falling-leaves", "1", "done"),
        ("a-velvet-hall-one-dancer-glass-shards", "2", "done"),
        ("scene", "3", "done"),
        ("line-4", "4", "invalid"),
        (harbour, "5", "failed"),
        ("no-depth-map", "6", "failed"),
    ]
    assert "unknown key 'tint'" in rows[3]["reason"]
    assert "is a file" in rows[4]["reason"]
    # No depth map and no estimator weights here: the job says which model it needed.
    assert "Depth-Anything" in rows[5]["reason"] and "\n" not in rows[5]["reason"]
    assert json.loads((out / "batch.json").read_text())["jobs"] == [
        {**r, "line": int(r["line"]), "seconds": float(r["seconds"])} for r in rows]
    assert summary.counts() == {"done": 3, "skipped": 0, "failed": 2, "invalid": 1}
    for row in rows[:3]:
        folder = out / row["folder"]
        assert STACK_FILES <= files_under(folder)
        assert incomplete_reason(folder) is None
        assert float(row["seconds"]) > 0
    for row in rows[:2]:
        manifest = json.loads((out / row["folder"] / "manifest.json").read_text())
        assert (manifest["width"], manifest["height"], manifest["backend"]) == (128, 192, "draft")
        with Image.open(out / row["folder"] / "layers" / "midground.png") as img:
            alpha = np.asarray(img.getchannel("A"))
        assert 0.01 < (alpha > 128).mean() < 0.9, "a matted midground"
    seeds = [json.loads((out / r["folder"] / "manifest.json").read_text())["seed"] for r in rows[:2]]
    assert seeds == [0, 1], "each job's own seed"

    # The picture job: its layers put back together give the picture, the disc in the middle, the box in front.
    scene = out / "scene"
    manifest = json.loads((scene / "manifest.json").read_text())
    assert manifest["render"]["picture"]["file"] == "scene.png" and manifest["depth_source"] == "map"
    with Image.open(tmp_path / "scene.png") as a, Image.open(scene / "composite.png") as b:
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b.convert("RGB"), np.int16)).max() <= 2
    with Image.open(scene / "layers" / "midground.png") as mid, Image.open(scene / "layers" / "foreground.png") as fg:
        assert mid.getpixel((60, 60))[3] == 255 and mid.getpixel((140, 100))[3] < 255
        assert fg.getpixel((140, 100))[3] == 255 and fg.getpixel((60, 60))[3] == 0


def test_the_fill_of_picture_jobs_is_the_batchs_or_the_jobs_own(tmp_path):
    write_picture(tmp_path)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"image": "scene.png", "depth": "scene_depth.png", "name": "own", "fill": "texture"},
        {"image": "scene.png", "depth": "scene_depth.png", "name": "batch"},
        {"image": "scene.png", "fill": "blurry"},
    ])
    listed = read_jobs(jobs)
    assert [(j.name, j.fill) for j in listed.jobs] == [("own", "texture"), ("batch", None)]
    assert "unknown fill 'blurry'" in listed.invalid[0].reason
    with pytest.raises(ValueError, match="unknown fill"):
        BatchSettings(backend="draft", options={"fill": "blurry"})
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--backend", "draft", "--no-video",
                 "--fill", "smooth"]) == 1  # the third line is invalid; the others are made
    for name, fill in (("own", "texture"), ("batch", "smooth")):
        manifest = json.loads((tmp_path / "out" / name / "manifest.json").read_text())
        assert manifest["options"]["fill"] == fill and manifest["render"]["decompose"]["fill"] == fill, name


def test_incomplete_folders_are_recognised_and_redone(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(3))
    out = tmp_path / "out"
    listed = read_jobs(jobs)
    run_batch(listed, out, DRAFT)
    a, b, c = (out / j.name for j in listed.jobs)
    (b / "layers" / "foreground.png").unlink()
    (c / "stack.psd").write_bytes(b"")
    assert incomplete_reason(b) == "layers/foreground.png is missing"
    assert incomplete_reason(c) == "stack.psd is missing"
    # A folder holding another job (the job file was edited) is not this job's result.
    assert "seed differs" in incomplete_reason(a, dataclasses.replace(listed.jobs[0], seed=9))
    before = (a / "manifest.json").stat().st_mtime_ns

    summary = run_batch(listed, out, DRAFT)
    assert [o.status for o in summary.outcomes] == ["skipped", "done", "done"]
    assert (a / "manifest.json").stat().st_mtime_ns == before, "a complete folder is not written again"
    assert all(incomplete_reason(out / j.name, j) is None for j in listed.jobs)

    # A stack written with only some exports (manifest options "formats") is complete without the others.
    manifest = json.loads((c / "manifest.json").read_text())
    manifest["options"]["formats"] = ["psd"]
    (c / "manifest.json").write_text(json.dumps(manifest))
    (c / "stack.ora").unlink()
    assert incomplete_reason(c) is None
    (c / "stack.psd").unlink()
    assert incomplete_reason(c) == "stack.psd is missing"


def test_one_backend_per_worker_reused_for_every_job(tmp_path, tiny_sd15_dir):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{**j, "width": 64, "height": 96} for j in text_jobs(3)])
    out = tmp_path / "out"
    settings = BatchSettings(backend="diffusers", backend_options=(("model", str(tiny_sd15_dir)),),
                             options={"video": False, "steps": 2})
    summary = run_batch(read_jobs(jobs), out, settings)
    assert [o.status for o in summary.outcomes] == ["done"] * 3
    events = read_attempts(out)
    assert [e["event"] for e in events if e["event"] == "load"] == ["load"]
    assert [e["event"] for e in events if e["job"]] == ["start", "done"] * 3
    manifest = json.loads((out / summary.outcomes[0].folder / "manifest.json").read_text())
    assert manifest["backend"] == "diffusers" and manifest["options"]["steps"] == 2


def test_two_local_workers_each_load_once_and_share_the_jobs(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(4))
    out = tmp_path / "out"
    summary = run_batch(read_jobs(jobs), out, BatchSettings(backend="draft", workers=2, options={"video": False}))
    assert [o.status for o in summary.outcomes] == ["done"] * 4
    events = read_attempts(out)
    loads = [e["worker"] for e in events if e["event"] == "load"]
    done = [e["worker"] for e in events if e["event"] == "done"]
    # Which process takes which job is the pool's choice; each of the two loads its backend once.
    assert len(loads) == len(set(loads)) == 2 and set(done) <= set(loads)
    assert sorted(e["job"] for e in events if e["event"] == "done") == sorted(o.job for o in summary.outcomes)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layers", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_resume_after_a_kill_does_no_job_twice_and_loses_none(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(5))
    out = tmp_path / "out"
    names = [j.name for j in read_jobs(jobs).jobs]
    cmd = [sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(out), "--backend", "draft",
           "--no-video"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while sum((out / n / "manifest.json").is_file() for n in names) < 2:
            assert proc.poll() is None, "the batch ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    finished = {n: (out / n / "manifest.json").stat() for n in names if (out / n / "manifest.json").is_file()}
    assert 2 <= len(finished) < len(names), "killed midway"
    first_run = {(e["event"], e["job"]) for e in read_attempts(out)}

    proc = run_cli("batch", jobs, "--out", out, "--backend", "draft", "--no-video")
    assert proc.returncode == 0, proc.stderr
    rows = {r["job"]: r["status"] for r in summary_rows(out)}
    assert rows == {n: ("skipped" if n in finished else "done") for n in names}
    for n, st in finished.items():
        after = (out / n / "manifest.json").stat()
        assert (after.st_ino, after.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), f"{n} was written again"
    events = read_attempts(out)
    done = [e["job"] for e in events if e["event"] == "done"]
    assert sorted(done) == sorted(set(done)), "no job done twice"
    assert set(done) | set(finished) == set(names) and all(incomplete_reason(out / n) is None for n in names)
    # The job the kill interrupted was started in the first run and done in the second.
    interrupted = {j for ev, j in first_run if ev == "start"} - {j for ev, j in first_run if ev == "done"}
    assert interrupted <= set(done) - set(finished)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    assert "skipped" in proc.stdout and "batch.csv" in proc.stdout
    # Not a terminal: one progress line per job instead of a bar.
    assert [line.split()[0] for line in proc.stderr.splitlines() if line.startswith("[")] == [
        f"[{k}/{len(names)}]" for k in range(1, len(names) + 1)]


def test_results_at_an_fsspec_url_are_complete_and_resumed(tmp_path):
    import fsspec

    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(2))
    url = f"memory://layercake-test-{os.getpid()}/batch"
    listed = read_jobs(jobs)
    assert main(["batch", str(jobs), "--out", url, "--backend", "draft", "--no-video"]) == 0
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://")
    rows = list(csv.DictReader(io.StringIO(fs.cat_file(f"{root}/batch.csv").decode())))
    assert [r["status"] for r in rows] == ["done", "done"]
    for job in listed.jobs:
        assert incomplete_reason(f"{url}/{job.name}", job) is None
        assert fs.cat_file(f"{root}/{job.name}/layers/midground.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # An upload cut short before its manifest is not a finished stack, and a rerun redoes only that one.
    fs.rm_file(f"{root}/{listed.jobs[1].name}/manifest.json")
    assert incomplete_reason(f"{url}/{listed.jobs[1].name}") == "no manifest.json"
    summary = run_batch(listed, url, DRAFT)
    assert [o.status for o in summary.outcomes] == ["skipped", "done"]
    assert len([e for e in read_attempts(url) if e["event"] == "done"]) == 3
    fs.rm(root, recursive=True)


def test_a_progress_bar_covers_the_batch_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import select
    import struct
    import termios

    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(2))
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(tmp_path / "out"),
                             "--backend", "draft", "--no-video"], cwd=ROOT, stdin=child, stdout=child, stderr=child)
    os.close(child)
    screen = b""
    try:
        while select.select([parent], [], [], 120)[0]:
            try:
                chunk = os.read(parent, 4096)
            except OSError:  # the program ended and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        proc.wait(timeout=60)
        os.close(parent)
    frames = [f for f in screen.decode(errors="replace").replace("\r", "\n").split("\n") if "job" in f]
    assert proc.returncode == 0
    assert any("0/2" in f for f in frames) and any("100%" in f and "2/2" in f for f in frames), frames


def test_no_ray_cluster_to_reach_exits_2_with_one_line(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", text_jobs(1))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(tmp_path / "out"),
                           "--backend", "draft", "--executor", "ray", "--ray-address", "auto"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot start or reach Ray at auto" in errors[0]
    assert not any((tmp_path / "out").iterdir()), "no job ran"
