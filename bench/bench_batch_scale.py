"""A batch's own cost with many jobs: how long before the first job that needs rendering starts.

Usage: .venv/bin/python bench/bench_batch_scale.py [--invalid 10000] [--done 3000]

Three runs of `python -m layers batch` (draft, 128x192, no video), each timed from the process start to the
"start" record of the one job to render in its attempt log (so imports and reading the job file count, as a user
waits for them):

1. a job file of N invalid lines and one job;
2. a resume of M finished jobs and one pending, all M the same scene under different names (planning is paid once);
3. the same with M different prompts and seeds (every job planned once when the job file is read).

The finished folders are hard-linked copies of one real stack; in run 3 each copy gets its own manifest (its job's
prompt, seed and layer seeds), so each is a complete, matching result. Load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZE = {"width": 128, "height": 192}
WORDS = ["castle", "harbour", "library", "temple", "garden", "market", "forest", "station", "bridge", "tower"]


def loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def write_jobs(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def seconds_to_start(jobs: Path, out: Path, job: str) -> float:
    """Seconds from launching the batch to `job`'s start record; the batch is then left to finish."""
    t0 = time.time()
    with open(jobs.with_suffix(".log"), "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "layers", "batch", str(jobs), "--out", str(out), "--backend",
                                 "draft", "--no-video"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    sys.path.insert(0, str(ROOT))
    from layers.batch import read_attempts

    try:
        while True:
            started = [e for e in read_attempts(out) if e["event"] == "start" and e["job"] == job]
            if started:
                return started[0]["time"] - t0
            if proc.poll() is not None:
                raise SystemExit(f"the batch ended first: {jobs.with_suffix('.log').read_text()[-2000:]}")
            time.sleep(0.05)
    finally:
        proc.wait(timeout=600)


def finished_copies(template: Path, out: Path, records: list[dict]) -> None:
    """A complete folder per record: hard links of `template`, with the record's own manifest."""
    from layers.plan import plan_scene

    base = json.loads((template / "manifest.json").read_text(encoding="utf-8"))
    for record in records:
        folder = out / record["name"]
        shutil.copytree(template, folder, copy_function=os.link, ignore=shutil.ignore_patterns("manifest.json"))
        plan = plan_scene(record["prompt"], record["seed"], width=SIZE["width"], height=SIZE["height"])
        manifest = dict(base, prompt=plan.prompt, seed=plan.seed, plan=plan.to_dict(),
                        layers=[dict(entry, seed=lp.seed) for entry, lp in zip(base["layers"], plan.layers)])
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--invalid", type=int, default=10_000)
    parser.add_argument("--done", type=int, default=3_000)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="layercake-batch-scale-") as tmp:
        tmp = Path(tmp)
        jobs = write_jobs(tmp / "invalid.jsonl", [{"prompt": "a hall", "tint": i} for i in range(args.invalid)]
                          + [{"prompt": "a castle on a hill, two knights", "name": "real", **SIZE}])
        print(f"{args.invalid} invalid lines + 1 job: the job starts after "
              f"{seconds_to_start(jobs, tmp / 'invalid', 'real'):.1f} s", flush=True)

        same = [{"prompt": "a velvet hall, one dancer, glass shards", "seed": 4, "name": f"s{i}", **SIZE}
                for i in range(args.done)]
        out = tmp / "same"
        seconds_to_start(write_jobs(tmp / "first.jsonl", same[:1]), out, "s0")  # one real stack
        for i in range(1, args.done):
            shutil.copytree(out / "s0", out / f"s{i}", copy_function=os.link)
        pending = {"prompt": "a harbour at dusk, three sailors", "name": "pending", **SIZE}
        print(f"resume of {args.done} finished (one scene) + 1 pending: the pending job starts after "
              f"{seconds_to_start(write_jobs(tmp / 'same.jsonl', same + [pending]), out, 'pending'):.1f} s",
              flush=True)

        varied = [{"prompt": f"a {WORDS[i % 10]} number {i}, {i % 4 + 1} figures, drifting leaves", "seed": i,
                   "name": f"v{i}", **SIZE} for i in range(args.done)]
        finished_copies(out / "s0", tmp / "varied", varied)
        print(f"resume of {args.done} finished (all different) + 1 pending: the pending job starts after "
              f"{seconds_to_start(write_jobs(tmp / 'varied.jsonl', varied + [pending]), tmp / 'varied', 'pending'):.1f}"
              f" s", flush=True)
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
