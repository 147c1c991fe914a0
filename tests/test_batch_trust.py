"""A batch under pressure: killed workers do not outlive their batch, a resume redoes no finished job, the summary
costs time linear in the jobs, and a job folder is trusted only as far as its own files."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from layers.batch import BatchSettings, incomplete_reason, read_attempts, run_batch
from layers.jobs import read_jobs

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"width": 128, "height": 192}
DRAFT = BatchSettings(backend="draft", options={"video": False})
SCENES = ["a castle on a hill, two knights, falling leaves", "a velvet hall, one dancer, glass shards",
          "a harbour at dusk, three sailors, drifting lanterns", "a library vault, a scholar, floating pages"]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def batch_process(jobs: Path, out: Path, *extra: str) -> subprocess.Popen:
    """`python -m layers batch` in the background; its messages go to a file beside the job file (a pipe nobody
    reads would fill up and stall it)."""
    log = open(jobs.with_suffix(".log"), "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(out), "--backend",
                             "draft", "--no-video", *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    proc.log = jobs.with_suffix(".log")
    return proc


def first_event(out: Path, event: str, job: str | None, proc: subprocess.Popen, timeout: float) -> dict:
    """The first attempt-log record of `event` (for `job`), waiting at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in read_attempts(out) if e["event"] == event and (job is None or e["job"] == job)]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the batch ended first: {proc.log.read_text()[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no {event} of {job or 'any job'} within {timeout} s")


# --- killed batches ---------------------------------------------------------------------------------------------

def kill_after_first_job(proc: subprocess.Popen, out: Path) -> list[psutil.Process]:
    """Once a job is done, SIGKILL the batch (the others are under way); returns the processes it had started."""
    try:
        first_event(out, "done", None, proc, timeout=300)
        family = psutil.Process(proc.pid).children(recursive=True)
        for p in family:  # read now: once the batch is gone they may be zombies with no command line
            p.command = " ".join(p.cmdline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    return family


def end_all(processes: list[psutil.Process]) -> None:
    """Kill what is left of the processes a test started (and only those)."""
    for p in processes:
        if p.is_running():
            p.kill()


def test_a_killed_batch_leaves_no_worker_behind_and_a_resume_redoes_no_finished_job(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": SCENES[i % 4], "seed": i, "width": 256, "height": 384}
                                                 for i in range(6)])
    out = tmp_path / "out"
    workers = kill_after_first_job(batch_process(jobs, out, "--workers", "2"), out)
    try:
        assert len([w for w in workers if "spawn_main" in w.command]) == 2, [w.command for w in workers]
        _, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, f"workers outlived their batch: {alive}"
    finally:
        end_all(workers)
    first = read_attempts(out)
    finished = {e["job"] for e in first if e["event"] == "done"}
    assert 1 <= len(finished) < 6

    resumed = subprocess.run([sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(out), "--backend",
                              "draft", "--no-video", "--workers", "2"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    done = [e["job"] for e in read_attempts(out) if e["event"] == "done"]
    assert sorted(done) == sorted(set(done)), f"a job was rendered twice: {sorted(done)}"
    assert set(done) == {j.name for j in read_jobs(jobs).jobs}
    rows = {r["job"]: r["status"] for r in json.loads((out / "batch.json").read_text())["jobs"]}
    assert {j for j, s in rows.items() if s == "skipped"} == finished


def test_a_killed_ray_batch_leaves_no_actor_behind(tmp_path):
    """Ray ends the actors of a driver that died (they are owned by it), then its own processes."""
    pytest.importorskip("ray")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": SCENES[i % 4], "seed": i, "width": 256, "height": 384}
                                                 for i in range(8)])
    out = tmp_path / "out"
    family = kill_after_first_job(batch_process(jobs, out, "--executor", "ray", "--workers", "2"), out)
    try:
        actors = [p for p in family if "_RayWorker" in p.command]
        assert len(actors) == 2, [p.command for p in family]
        _, alive = psutil.wait_procs(actors, timeout=20)
        assert not alive, "Ray actors outlived their batch"
        _, alive = psutil.wait_procs(family, timeout=150)
        assert not alive, f"Ray's processes outlived their batch: {[p.command[:80] for p in alive]}"
    finally:
        end_all(family)
    done = [e["job"] for e in read_attempts(out) if e["event"] == "done"]
    assert sorted(done) == sorted(set(done)) and len(done) < 8


# --- the summary in time linear in the jobs ---------------------------------------------------------------------

def test_ten_thousand_invalid_lines_do_not_hold_up_the_one_job(tmp_path):
    lines = [{"prompt": "a hall", "tint": i} for i in range(10_000)] + [{"prompt": SCENES[0], "name": "real", **SIZE}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    t0 = time.time()
    proc = batch_process(jobs, out)
    try:
        start = first_event(out, "start", "real", proc, timeout=60)
        assert start["time"] - t0 <= 15.0, f"the job started {start['time'] - t0:.1f} s after the batch"
        assert proc.wait(timeout=300) == 1  # invalid lines make the exit code 1
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((out / "batch.json").read_text())
    assert summary["counts"] == {"done": 1, "skipped": 0, "failed": 0, "invalid": 10_000}
    assert summary["jobs"][-1]["job"] == "real" and summary["jobs"][-1]["status"] == "done"
    assert len((out / "batch.csv").read_text().splitlines()) == 10_002


def test_resuming_three_thousand_finished_jobs_reaches_the_pending_one_quickly(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": SCENES[1], "seed": 4, "name": "s0", **SIZE}])
    out = tmp_path / "out"
    run_batch(read_jobs(one), out, DRAFT)
    for i in range(1, 3000):  # the same job under 3,000 names: hard links, made in a second or two
        shutil.copytree(out / "s0", out / f"s{i}", copy_function=os.link)
    records = [{"prompt": SCENES[1], "seed": 4, "name": f"s{i}", **SIZE} for i in range(3000)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", records + [{"prompt": SCENES[2], "name": "pending", **SIZE}])
    t0 = time.time()
    proc = batch_process(jobs, out)
    try:
        start = first_event(out, "start", "pending", proc, timeout=120)
        assert start["time"] - t0 <= 15.0, f"the pending job started {start['time'] - t0:.1f} s after the batch"
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    counts = json.loads((out / "batch.json").read_text())["counts"]
    assert counts == {"done": 1, "skipped": 3000, "failed": 0, "invalid": 0}


def test_the_summary_is_there_while_a_long_batch_runs(tmp_path):
    """Written in batches, not only at the end: a batch killed late still leaves a summary of what it did."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a hall", "tint": 1}]
                       + [{"prompt": SCENES[i % 4], "seed": i, **SIZE} for i in range(40)])
    out = tmp_path / "out"
    proc = batch_process(jobs, out)
    try:
        first_event(out, "done", None, proc, timeout=240)
        deadline = time.monotonic() + 60
        while not (out / "batch.json").is_file():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        rows = json.loads((out / "batch.json").read_text())["jobs"]
        assert rows[0]["status"] == "invalid"
    finally:
        proc.kill()
        proc.wait(timeout=30)


# --- what a job folder may name ---------------------------------------------------------------------------------

def _point_outside(manifest: dict, other: str) -> None:
    manifest["files"] = {k: f"../{other}/{v}" for k, v in manifest["files"].items()}
    for entry in manifest["layers"]:
        for key in ("file", "depth_file", "prior_file"):
            entry[key] = f"../{other}/{entry[key]}"


def test_a_resume_never_counts_a_folder_complete_from_files_outside_it(tmp_path):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": SCENES[0], "seed": 1, "name": n, **SIZE}
                                                 for n in ("real", "hollow", "absolute", "linked")])
    listed = read_jobs(jobs)
    out = tmp_path / "out"
    run_batch(listed, out, DRAFT)
    real = out / "real"
    manifest = json.loads((real / "manifest.json").read_text())
    # hollow: a manifest naming the files of its neighbour
    shutil.rmtree(out / "hollow")
    (out / "hollow").mkdir()
    hollow = json.loads(json.dumps(manifest))
    _point_outside(hollow, "real")
    (out / "hollow" / "manifest.json").write_text(json.dumps(hollow))
    # absolute: a manifest naming absolute paths
    shutil.rmtree(out / "absolute")
    (out / "absolute").mkdir()
    absolute = json.loads(json.dumps(manifest))
    absolute["files"] = {k: str(real / v) for k, v in absolute["files"].items()}
    for entry in absolute["layers"]:
        for key in ("file", "depth_file", "prior_file"):
            entry[key] = str(real / entry[key])
    (out / "absolute" / "manifest.json").write_text(json.dumps(absolute))
    # linked: its own names, but layers/ is a link to the neighbour's
    shutil.rmtree(out / "linked" / "layers")
    (out / "linked" / "layers").symlink_to(real / "layers", target_is_directory=True)

    job = {j.name: j for j in listed.jobs}
    assert incomplete_reason(real, job["real"]) is None
    for name in ("hollow", "absolute", "linked"):
        reason = incomplete_reason(out / name, job[name])
        assert reason is not None and "points outside its folder" in reason, (name, reason)
    before = {p: p.stat().st_mtime_ns for p in real.rglob("*")}
    summary = run_batch(listed, out, DRAFT)
    # Not complete, and not ours either (their files are not inside them): each fails with the reason, untouched.
    assert [o.status for o in summary.outcomes] == ["skipped", "failed", "failed", "failed"]
    assert all("points outside the folder" in o.reason or "must be a path inside the folder" in o.reason
               for o in summary.outcomes[1:]), [o.reason for o in summary.outcomes]
    assert (out / "linked" / "layers").is_symlink() and (out / "hollow" / "manifest.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in real.rglob("*")} == before


def test_a_manifest_behind_a_url_naming_files_outside_its_folder_is_not_complete(tmp_path):
    import fsspec

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": SCENES[0], "seed": 1, "name": n, **SIZE}
                                                 for n in ("real", "hollow")])
    listed = read_jobs(jobs)
    url = f"memory://layercake-outside-{os.getpid()}/batch"
    fs = fsspec.filesystem("memory")
    try:
        run_batch(listed, url, DRAFT)
        root = url.removeprefix("memory://")
        manifest = json.loads(fs.cat_file(f"{root}/real/manifest.json"))
        _point_outside(manifest, "real")
        fs.rm(f"{root}/hollow", recursive=True)
        fs.pipe_file(f"{root}/hollow/manifest.json", json.dumps(manifest).encode())
        reason = incomplete_reason(f"{url}/hollow", listed.jobs[1])
        assert reason is not None and "outside" in reason, reason
        assert [o.status for o in run_batch(listed, url, DRAFT).outcomes] == ["skipped", "done"]
    finally:
        fs.rm(url.removeprefix("memory://").rsplit("/", 1)[0], recursive=True)


def test_a_picture_jobs_manifest_records_no_local_path_and_still_knows_its_picture(tmp_path):
    pictures = tmp_path / "private" / "holiday"
    pictures.mkdir(parents=True)
    Image.new("RGB", (96, 64), (40, 120, 200)).save(pictures / "beach.png")
    depth = Image.linear_gradient("L").resize((96, 64))
    depth.save(pictures / "beach_depth.png")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"image": "private/holiday/beach.png",
                                                  "depth": "private/holiday/beach_depth.png"}])
    out = tmp_path / "out"
    listed = read_jobs(jobs)
    assert [o.status for o in run_batch(listed, out, DRAFT).outcomes] == ["done"]
    text = (out / "beach" / "manifest.json").read_text()
    assert str(tmp_path) not in text and "private/holiday" not in text, "no local path in a shareable manifest"
    render = json.loads(text)["render"]
    digest = hashlib.sha256((pictures / "beach.png").read_bytes()).hexdigest()
    assert render["picture"] == {"file": "beach.png", "sha256": digest}
    assert render["depth_map"]["file"] == "beach_depth.png"
    assert [o.status for o in run_batch(listed, out, DRAFT).outcomes] == ["skipped"]
    Image.new("RGB", (96, 64), (200, 120, 40)).save(pictures / "beach.png")  # another picture, same name
    assert "picture differs" in incomplete_reason(out / "beach", listed.jobs[0])
    assert [o.status for o in run_batch(listed, out, DRAFT).outcomes] == ["done"]


@pytest.mark.parametrize("name, content", [("batch.json", '{"name": "my web app"}\n'),
                                           ("batch.csv", "date,amount\n2026-01-02,40\n")])
def test_a_summary_file_of_someone_elses_is_not_overwritten(tmp_path, capsys, name, content):
    from layers.cli import main

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": SCENES[0], **SIZE}])
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(content)
    assert main(["batch", str(jobs), "--out", str(out), "--backend", "draft", "--no-video"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"holds a {name} that is not a Layercake batch summary" in err[0], err
    assert [p.name for p in out.iterdir()] == [name] and (out / name).read_text() == content
