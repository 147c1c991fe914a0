"""Benchmark the studio server as users see it: start-up, /generate latency, throughput under load, memory.

    .venv/bin/python bench/bench_app.py                 # draft backend, 512x768, 5 timed runs, 8 then 16 clients
    .venv/bin/python bench/bench_app.py --runs 3 --clients 8 16 --json bench/results/app.json
    .venv/bin/python bench/bench_app.py --size 2048x2048 --runs 4 --clients 4   # large stacks

Starts `python app.py` in a subprocess on a free port, talks to it with gradio_client, and samples the server's
resident memory (with its child processes, e.g. ffmpeg) every 50 ms. Memory is reported at start (first HTTP
200), idle after the sequential runs, peak and idle after each concurrent round: what stays after requests is
what a long-running server keeps.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
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


class MemorySampler(threading.Thread):
    """Peak RSS of a process (alone, and with its children) sampled in the background."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak_self = 0
        self.peak_tree = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                own = self.proc.memory_info().rss
                tree = own + sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:  # a child exited between listing and reading
                continue
            self.peak_self = max(self.peak_self, own)
            self.peak_tree = max(self.peak_tree, tree)
            time.sleep(self.every)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def reset_peak(self) -> None:
        self.peak_self = self.peak_tree = 0


def rss_after_quiet(pid: int, settle: float = 2.0) -> int:
    """The process's RSS once requests are over: sampled after `settle` seconds of no work."""
    time.sleep(settle)
    return psutil.Process(pid).memory_info().rss


def concurrent_round(url: str, clients: int, first_seed: int, width: int, height: int) -> tuple[float, list[float]]:
    """`clients` /generate calls started at once; returns (wall seconds, each call's seconds)."""
    results: list[float] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        seconds = generate(url, first_seed + i, width, height)
        with lock:
            results.append(seconds)

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    if len(results) != clients:
        raise RuntimeError(f"only {len(results)} of {clients} concurrent requests succeeded")
    return wall, results


SERVER_SECONDS: list[float] = []
"""Time each request spent in the server's studio (render + files), from the run summary."""


def generate(url: str, seed: int, width: int, height: int) -> float:
    """One /generate from a fresh client, files downloaded as a user's client does; returns seconds."""
    t = time.perf_counter()
    # Generous timeouts: on a loaded machine the server answers late, and a late answer is a figure, not a failure.
    out = Client(url, verbose=False, httpx_kwargs={"timeout": 900}).predict(prompt=PROMPT, seed=seed, width=width, height=height,
                                             api_name="/generate")
    if not str(out[0]).endswith(".psd"):
        raise RuntimeError(f"unexpected /generate output: {out[0]!r}")
    SERVER_SECONDS.append(out[10]["seconds"])
    return time.perf_counter() - t


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="draft")
    parser.add_argument("--size", default="512x768", help="WIDTHxHEIGHT")
    parser.add_argument("--runs", type=int, default=5, help="timed sequential /generate calls")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16],
                        help="concurrent clients, one round per value (default 8 16)")
    parser.add_argument("--max-concurrency", type=int, default=None, help="passed to app.py")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    extra = ["--max-concurrency", str(args.max_concurrency)] if args.max_concurrency else []
    with tempfile.TemporaryDirectory(prefix="layercake-bench-") as tmp:
        server = AppServer(Path(tmp) / "outputs", *extra)
        if args.backend != "draft":
            raise SystemExit("only the draft backend is benchmarked here (no weights on this machine)")
        sampler = MemorySampler(server.proc.pid)
        sampler.start()
        try:
            startup = server.wait_ready(timeout=600)  # a loaded machine starts gradio slowly
            start_rss = rss_after_quiet(server.proc.pid)
            first = generate(server.url, 0, width, height)
            latencies = [generate(server.url, 1 + i, width, height) for i in range(args.runs)]
            in_server = statistics.median(SERVER_SECONDS[1:])
            idle_rss = rss_after_quiet(server.proc.pid)
            peak_sequential = sampler.peak_self
            requests = 1 + args.runs
            rounds = []
            for clients in args.clients:
                sampler.reset_peak()
                wall, results = concurrent_round(server.url, clients, 100 * (len(rounds) + 1), width, height)
                requests += clients
                rounds.append({"clients": clients, "wall_s": round(wall, 2),
                               "throughput_per_min": round(60 * clients / wall, 1),
                               "latency_median_s": round(statistics.median(results), 2),
                               "latency_max_s": round(max(results), 2),
                               "peak_rss_mb": round(sampler.peak_self / 2**20),
                               "peak_rss_with_children_mb": round(sampler.peak_tree / 2**20),
                               "idle_rss_after_mb": round(rss_after_quiet(server.proc.pid) / 2**20),
                               "requests_so_far": requests})
        finally:
            try:
                sampler.stop()
            finally:
                server.stop()  # never leave the server running, whatever failed

    figures = {
        "backend": args.backend,
        "size": f"{width}x{height}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "startup_to_first_200_s": round(startup, 2),
        "first_generate_s": round(first, 2),
        "generate_median_s": round(statistics.median(latencies), 2),
        "generate_min_s": round(min(latencies), 2),
        "generate_max_s": round(max(latencies), 2),
        "generate_in_server_median_s": round(in_server, 2),
        "start_rss_mb": round(start_rss / 2**20),
        "idle_rss_after_sequential_mb": round(idle_rss / 2**20),
        "peak_rss_sequential_mb": round(peak_sequential / 2**20),
        "rounds": rounds,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
    }
    rows = [
        ("server start -> first HTTP 200", f"{figures['startup_to_first_200_s']:.2f} s"),
        (f"/generate {figures['size']}, first call", f"{figures['first_generate_s']:.2f} s"),
        (f"/generate {figures['size']}, median of {args.runs}",
         f"{figures['generate_median_s']:.2f} s (min {figures['generate_min_s']:.2f}, "
         f"max {figures['generate_max_s']:.2f})"),
        ("  of which inside the server (render + files)", f"{figures['generate_in_server_median_s']:.2f} s"),
        ("server RSS at start", f"{figures['start_rss_mb']} MB"),
        (f"server RSS idle after {1 + args.runs} requests (peak meanwhile)",
         f"{figures['idle_rss_after_sequential_mb']} MB ({figures['peak_rss_sequential_mb']} MB)"),
    ]
    for r in rounds:
        rows += [
            (f"{r['clients']} concurrent clients: wall, throughput",
             f"{r['wall_s']:.2f} s, {r['throughput_per_min']:.1f} stacks/min"),
            ("  latency under load (median / max)", f"{r['latency_median_s']:.2f} / {r['latency_max_s']:.2f} s"),
            ("  server peak RSS (with children)", f"{r['peak_rss_mb']} MB ({r['peak_rss_with_children_mb']} MB)"),
            (f"  server RSS idle after ({r['requests_so_far']} requests in all)", f"{r['idle_rss_after_mb']} MB"),
        ]
    width_col = max(len(r[0]) for r in rows)
    print(f"Layercake studio benchmark · backend {args.backend} · {figures['machine']} · "
          f"load average after: {figures['load_average_1min_after']}")
    print(f"| {'measure'.ljust(width_col)} | value |")
    print(f"|{'-' * (width_col + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width_col)} | {value} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
