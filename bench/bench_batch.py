"""Batch throughput: stacks per minute for N draft jobs, local with 1 and 2 workers, Ray with 1 and 2 actors.

Usage: .venv/bin/python bench/bench_batch.py [--jobs 20] [--size 256x384] [--video] [--out bench_batch.json]

Each configuration runs the same N draft text jobs (different prompts and seeds) from scratch into its own
folder through `layers.batch.run_batch`, timed from the call to the summary written: worker start-up (process
spawn or actor start, imports, backend load) is inside the figure, as a user sees it. Ray itself is started once
(`ray.init(num_cpus=2)`, timed on its own) and kept for both Ray runs.

Reported per configuration: wall seconds, stacks/min, the seconds the workers spent inside jobs (from the
attempt logs), and the start-up (batch start to the last worker's backend loaded). Scaling efficiency =
(stacks/min with 2) / (2 x stacks/min with 1). Ray's overhead per job = (wall - start-up - job seconds / workers)
/ jobs for the Ray run, next to the same figure for the local run with as many workers: what dispatching a job
and returning its outcome costs beyond the job itself.

The figures depend on the machine's load: /proc/loadavg is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray for one process needs no token

SCENES = ["a castle on a hill, two knights, falling leaves", "a velvet hall, one dancer, glass shards",
          "a harbour at dusk, three sailors, drifting lanterns", "a library vault, a scholar, floating pages",
          "a desert temple, two pilgrims, blowing sand"]


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def run(name: str, jobs_file: Path, out: Path, settings, n_jobs: int) -> dict:
    from layers.batch import read_attempts, run_batch
    from layers.jobs import read_jobs

    t0 = time.time()
    summary = run_batch(read_jobs(jobs_file), out, settings)
    wall = summary.seconds
    done = summary.counts()["done"]
    if done != n_jobs:
        raise SystemExit(f"{name}: {done} of {n_jobs} jobs done: {[o.reason for o in summary.outcomes if o.reason]}")
    events = read_attempts(out)
    loads = [e["time"] for e in events if e["event"] == "load"]
    workers = len(loads)
    job_seconds = sum(e["seconds"] for e in events if e["event"] == "done")
    startup = max(loads) - t0
    overhead = (wall - startup - job_seconds / workers) / n_jobs
    row = {"config": name, "workers": workers, "wall_s": round(wall, 2), "stacks_per_min": round(60 * done / wall, 2),
           "job_s_total": round(job_seconds, 2), "job_s_mean": round(job_seconds / n_jobs, 3),
           "startup_s": round(startup, 2), "overhead_per_job_s": round(overhead, 3), "loadavg": loadavg()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--size", default="256x384", help="WxH of every stack (default %(default)s)")
    ap.add_argument("--video", action="store_true", help="write parallax.mp4 too (default: every other output)")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    import ray

    from layers.batch import BatchSettings

    print(f"loadavg before: {loadavg()}  cpus: {os.cpu_count()}", flush=True)
    options = {"video": args.video}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs_file = Path(tmp) / "jobs.jsonl"
        jobs_file.write_text("".join(json.dumps({"prompt": SCENES[i % len(SCENES)], "seed": i, "width": width,
                                                 "height": height}) + "\n" for i in range(args.jobs)))
        for workers in (1, 2):
            rows.append(run(f"local x{workers}", jobs_file, Path(tmp) / f"local{workers}",
                            BatchSettings(backend="draft", workers=workers, options=options), args.jobs))
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
        ray_init = time.perf_counter() - t
        print(f"ray.init: {ray_init:.1f} s", flush=True)
        try:
            for workers in (1, 2):
                rows.append(run(f"ray x{workers}", jobs_file, Path(tmp) / f"ray{workers}",
                                BatchSettings(executor="ray", backend="draft", workers=workers, options=options),
                                args.jobs))
        finally:
            ray.shutdown()

    by = {r["config"]: r for r in rows}
    report = {"jobs": args.jobs, "size": args.size, "video": args.video, "ray_init_s": round(ray_init, 2),
              "rows": rows, "loadavg_after": loadavg()}
    for kind in ("local", "ray"):
        one, two = by[f"{kind} x1"]["stacks_per_min"], by[f"{kind} x2"]["stacks_per_min"]
        report[f"{kind}_scaling_efficiency"] = round(two / (2 * one), 3)
    report["ray_overhead_per_job_s"] = {w: round(by[f"ray x{w}"]["overhead_per_job_s"]
                                              - by[f"local x{w}"]["overhead_per_job_s"], 3) for w in (1, 2)}
    print("\n| config | workers | wall s | stacks/min | mean job s | start-up s | overhead/job s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['workers']} | {r['wall_s']} | {r['stacks_per_min']} | {r['job_s_mean']} | "
              f"{r['startup_s']} | {r['overhead_per_job_s']} |")
    print(f"\nscaling efficiency 1 -> 2: local {report['local_scaling_efficiency']}, "
          f"ray {report['ray_scaling_efficiency']}")
    print(f"Ray overhead per job beyond the local executor's: {report['ray_overhead_per_job_s']} s "
          f"(+ ray.init {ray_init:.1f} s once)")
    print(f"loadavg after: {report['loadavg_after']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
