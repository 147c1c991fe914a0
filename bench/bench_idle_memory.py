"""Idle memory of the studio server over many requests: does what a request leaves behind grow?

    .venv/bin/python bench/bench_idle_memory.py                       # 20 warm-up + 100 requests, two servers
    .venv/bin/python bench/bench_idle_memory.py --requests 30 --warmup 10 --sessions 8

Starts `python app.py --backend draft` on the loopback interface (the launcher the tests use) and sends it
/generate requests through gradio_client, one after another, each from a fresh client: every request is a new
session, as every page visit and API client is, the case where anything kept per session shows. After each
request, once the server has been quiet for `--settle` seconds, its resident memory (RSS) is read.

Two servers side by side in one run: the studio with its session bound (LAYERCAKE_MAX_SESSIONS, here
`--sessions`, small enough to be reached in the warm-up), and the same studio keeping sessions up to the web
framework's own bound (LAYERCAKE_MAX_SESSIONS=10000, gradio's default), the reference. After the warm-up, the
idle RSS of the measured requests should stay within 10 % (max / min); the slope says what each request keeps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import psutil  # noqa: E402
from gradio_client import Client  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_app import AppServer  # noqa: E402  (the same server launcher the tests use)

PROMPT = ("a sunken cathedral under a green sea, a diver with a lamp drifting through the nave, "
          "jellyfish and bubbles close to the glass, shafts of light from above")
UNBOUNDED = 10_000
"""gradio's own bound on kept sessions (Blocks.launch's state_session_capacity default)."""


def idle_rss_series(sessions: int, requests: int, warmup: int, settle: float, width: int, height: int) -> dict:
    """Start a server keeping `sessions` sessions, send warmup + requests /generate calls; idle RSS after each."""
    with tempfile.TemporaryDirectory(prefix="layercake-idle-") as tmp:
        server = AppServer(Path(tmp) / "outputs", env={"LAYERCAKE_MAX_SESSIONS": str(sessions)})
        try:
            server.wait_ready(timeout=600)
            proc = psutil.Process(server.proc.pid)
            time.sleep(settle)
            start = proc.memory_info().rss
            series, seconds = [], []
            for i in range(warmup + requests):
                t = time.perf_counter()
                out = Client(server.url, verbose=False, httpx_kwargs={"timeout": 900}).predict(
                    prompt=PROMPT, seed=i, width=width, height=height, api_name="/generate")
                if not str(out[0]).endswith(".psd"):
                    raise RuntimeError(f"unexpected /generate output: {out[0]!r}")
                seconds.append(time.perf_counter() - t)
                time.sleep(settle)
                series.append(proc.memory_info().rss)
        finally:
            server.stop()
    measured = series[warmup:]
    n = len(measured)
    mean_x, mean_y = (n - 1) / 2, statistics.mean(measured)
    slope = (sum((x - mean_x) * (y - mean_y) for x, y in enumerate(measured))
             / max(sum((x - mean_x) ** 2 for x in range(n)), 1e-9))
    return {"sessions": sessions, "start": start, "after_warmup": series[warmup - 1] if warmup else start,
            "min": min(measured), "max": max(measured), "last": measured[-1], "slope_per_100": 100 * slope,
            "series": series, "request_s": statistics.median(seconds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100, help="measured requests after the warm-up")
    ap.add_argument("--warmup", type=int, default=20, help="requests before measuring (caches fill, bound reached)")
    ap.add_argument("--sessions", type=int, default=16, help="LAYERCAKE_MAX_SESSIONS of the bounded server")
    ap.add_argument("--settle", type=float, default=1.0, help="quiet seconds before each RSS reading")
    ap.add_argument("--size", default="512x768")
    ap.add_argument("--no-reference", action="store_true", help="skip the server without the studio's bound")
    args = ap.parse_args(argv)
    if args.warmup < args.sessions:
        ap.error("--warmup must be at least --sessions, so the bound is reached before measuring")
    width, height = (int(v) for v in args.size.lower().split("x"))
    runs = [idle_rss_series(args.sessions, args.requests, args.warmup, args.settle, width, height)]
    if not args.no_reference:
        runs.append(idle_rss_series(UNBOUNDED, args.requests, args.warmup, args.settle, width, height))
    mb = 2 ** 20
    print(f"Studio idle memory · draft backend, {width}x{height}, {args.warmup} warm-up + {args.requests} measured "
          f"requests, a fresh gradio_client each · {os.cpu_count()} cores, load average after "
          f"{os.getloadavg()[0]:.2f}")
    print("| sessions kept | RSS at start | after warm-up | measured min / max / last | spread | MB per 100 requests "
          "| request (median) |")
    print("|---|---|---|---|---|---|---|")
    failed = False
    for run in runs:
        spread = run["max"] / run["min"] - 1
        bounded = run["sessions"] != UNBOUNDED
        failed |= bounded and spread > 0.10
        print(f"| {run['sessions']}{' (gradio default)' if not bounded else ''} | {run['start'] / mb:.0f} MB "
              f"| {run['after_warmup'] / mb:.0f} MB | {run['min'] / mb:.0f} / {run['max'] / mb:.0f} / "
              f"{run['last'] / mb:.0f} MB | {100 * spread:.1f} % | {run['slope_per_100'] / mb:+.1f} "
              f"| {run['request_s']:.2f} s |")
    for run in runs:
        every = max(1, len(run["series"]) // 24)
        print(f"idle RSS (MB), sessions kept {run['sessions']}, every {every} requests: "
              + " ".join(f"{v / mb:.0f}" for v in run["series"][::every]))
    print(f"target: idle RSS within 10 % over the measured requests with the studio's bound: "
          f"{'MISSED' if failed else 'met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
