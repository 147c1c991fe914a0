"""The Ray executor on a Ray started here (2 CPUs, 2 actors): the same stacks as the local executor, byte for byte,
and an actor killed mid-job still leaves every job done exactly once."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import ray

from layers.batch import BatchSettings, incomplete_reason, read_attempts, run_batch
from layers.jobs import read_jobs
from layers.cli import main

SCENES = ["a castle on a hill, two knights, falling leaves", "a velvet hall, one dancer, glass shards",
          "a harbour at dusk, three sailors, drifting lanterns", "a library vault, a scholar, floating pages"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield
    ray.shutdown()


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    return path


def pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def manifest_without_clock(folder: Path) -> dict:
    """The manifest less what a clock says: when it was made and how long each step took."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del manifest["created"], manifest["timings"]
    manifest["render"].pop("timings", None)
    return manifest


@pytest.mark.parametrize("backend", ["draft", "diffusers"])
def test_ray_gives_byte_identical_stacks_to_the_local_executor(local_ray, tmp_path, backend, request):
    if backend == "diffusers":
        model = request.getfixturevalue("tiny_sd15_dir")
        size, extra = {"width": 64, "height": 96}, {"backend_options": (("model", str(model)),)}
    else:
        size, extra = {"width": 128, "height": 192}, {}
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": s, "seed": i, **size} for i, s in enumerate(SCENES[:2])])
    listed = read_jobs(jobs)
    if backend == "draft":  # as a user runs it; the command line finds the Ray this process started
        for executor, out in (("local", "local"), ("ray", "ray")):
            assert main(["batch", str(jobs), "--out", str(tmp_path / out), "--backend", "draft", "--no-video",
                         "--executor", executor, "--workers", "2" if executor == "ray" else "1"]) == 0
    else:
        common = dict(backend=backend, options={"video": False, "steps": 2}, **extra)
        run_batch(listed, tmp_path / "local", BatchSettings(**common))
        run_batch(listed, tmp_path / "ray", BatchSettings(executor="ray", workers=2, **common))

    for out in ("local", "ray"):
        assert [r["status"] for r in json.loads((tmp_path / out / "batch.json").read_text())["jobs"]] == ["done"] * 2
    events = read_attempts(tmp_path / "ray")
    workers = {e["worker"] for e in events if e["event"] == "done"}
    assert len(workers) == 2, f"both actors made stacks: {events}"
    for job in listed.jobs:
        a, b = tmp_path / "local" / job.name, tmp_path / "ray" / job.name
        files = pngs(a)
        assert len(files) == 10, "composite + 3 layers + 3 depth maps + 3 priors"
        assert files == pngs(b), f"{job.name}: every PNG byte-identical"
        assert manifest_without_clock(a) == manifest_without_clock(b)
        assert manifest_without_clock(b)["backend"] == backend


def test_an_actor_killed_mid_job_still_leaves_every_job_done_exactly_once(local_ray, tmp_path):
    jobs = [{"prompt": s, "seed": i, "width": 128, "height": 192} for i, s in enumerate(SCENES)]
    # A large job takes seconds: the actor is killed while it renders it.
    jobs.insert(1, {"prompt": SCENES[0], "seed": 9, "width": 768, "height": 1024, "name": "large"})
    listed = read_jobs(write_jobs(tmp_path / "jobs.jsonl", jobs))
    out = tmp_path / "out"
    result = {}
    batch = threading.Thread(target=lambda: result.update(summary=run_batch(
        listed, out, BatchSettings(executor="ray", workers=2, backend="draft", options={"video": False}))))
    batch.start()
    try:
        deadline = time.monotonic() + 240
        while not (started := [e for e in read_attempts(out) if e["job"] == "large" and e["event"] == "start"]):
            assert time.monotonic() < deadline and batch.is_alive()
            time.sleep(0.05)
        victim = started[0]["worker"]
        ray.kill(ray.get_actor(victim.rsplit("-", 1)[0]), no_restart=False)
    finally:
        batch.join(timeout=300)
    assert not batch.is_alive()

    summary = result["summary"]
    assert [o.status for o in summary.outcomes] == ["done"] * len(jobs)
    assert all(incomplete_reason(out / j.name, j) is None for j in listed.jobs)
    events = read_attempts(out)
    done = [e["job"] for e in events if e["event"] == "done"]
    assert sorted(done) == sorted(j.name for j in listed.jobs), "every job done exactly once"
    large = [(e["event"], e["worker"]) for e in events if e["job"] == "large"]
    assert large[0] == ("start", victim) and ("done", victim) not in large, "the kill cut the large job short"
    assert large[-1][0] == "done" and large[-1][1] != victim, "another worker process finished it"
    assert len([e for e in events if e["event"] == "load"]) == 3, "two actors, and the killed one restarted"
