"""Where a batch's jobs run: in this process, in a pool of processes, or on Ray actors.

An executor knows nothing of stacks: it takes jobs and a runner factory (a picklable callable returning an object
with `run(job) -> JobOutcome`; each worker makes one runner and keeps it, so a backend loads once per worker) and
yields outcomes as jobs finish. A worker that dies fails its job with a reason instead of stopping the batch.

Workers never outlive their batch: a local worker process ends with the process that started it, however that
one ends (SIGKILL included: the parent-death signal on Linux, a watch on the parent elsewhere), so a batch killed
and resumed at once never has two processes rendering the same job. Ray actors are owned by the batch's driver and
Ray ends them with it.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections import deque
from typing import Callable, Iterator, Optional

from .jobs import Job, JobOutcome, one_line

EXECUTORS = ("local", "ray")
RunnerFactory = Callable[..., object]
"""make_runner(worker=None) -> a runner with run(job) -> JobOutcome."""
_MAX_RESUBMITS = 1
"""How often the Ray executor sends a job to another actor after its own actor ran out of restarts."""


def run_local(jobs: list[Job], make_runner: RunnerFactory, workers: int) -> Iterator[JobOutcome]:
    """Run `jobs` in this process (workers=1) or in `workers` spawned processes, each with one runner; outcomes
    in the order jobs finish. A process that dies fails its job with a reason."""
    if workers == 1:
        runner = make_runner()
        for job in jobs:
            yield runner.run(job)
        return
    import concurrent.futures as cf
    import multiprocessing

    # spawn, not fork: a parent that has imported torch or holds threads must not be forked. The children read
    # their thread limits from the environment they are started with (numpy loads its BLAS on import).
    with _environment(thread_limits(max(1, (os.cpu_count() or 1) // workers))):
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_pool_worker, initargs=(make_runner, os.getpid()))
        futures = {pool.submit(_run_in_pool_worker, job): job for job in jobs}
    with pool:
        for future in cf.as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except cf.process.BrokenProcessPool:
                yield JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason="a worker process died; rerun the batch to redo this job")


_POOL_RUNNER = None


def _init_pool_worker(make_runner: RunnerFactory, parent: int) -> None:
    global _POOL_RUNNER
    die_with_parent(parent)
    _POOL_RUNNER = make_runner()


_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 0.5


def die_with_parent(parent: int) -> None:
    """End this process as soon as the process `parent` ends.

    On Linux the kernel sends SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG), even while this process is
    inside a long computation; a thread polling the parent's id covers other systems and a parent that died before
    the signal was set.
    """
    if sys.platform.startswith("linux"):
        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
            prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl in this C library: the watch below still ends the process
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _run_in_pool_worker(job: Job) -> JobOutcome:
    return _POOL_RUNNER.run(job)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_limits(threads: int) -> dict[str, str]:
    """Environment giving a worker process its share of the CPUs; a limit the user set wins.

    N workers that each start a thread per core (numpy's BLAS, the matting's numba kernels, torch) oversubscribe
    the machine, and spinning BLAS threads then slow every worker down several times.
    """
    return {name: os.environ.get(name, str(threads)) for name in THREAD_VARIABLES}


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _RayWorker:
    """The body of a Ray actor: one runner, its backend loaded when the actor starts (and restarts)."""

    def __init__(self, make_runner: RunnerFactory, name: str):
        # The actor's name plus the process: a restarted actor is a new process, a new attempt log.
        self.runner = make_runner(worker=f"{name}-{os.getpid()}")

    def run(self, job: Job) -> JobOutcome:
        return self.runner.run(job)


def run_ray(jobs: list[Job], make_runner: RunnerFactory, workers: Optional[int], address: Optional[str], *,
            gpu: bool, cpus_per_actor: float = 1.0) -> Iterator[JobOutcome]:
    """Run `jobs` on Ray actors, each holding one runner: one actor per GPU when `gpu` (the runners load a model)
    and the cluster has GPUs, else one per `cpus_per_actor` CPUs (or `workers` actors). Ray is started here (or
    reached at `address`) and shut down after, unless it was running already."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="warning", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f" at {address}" if address else ""
            raise ValueError(f"cannot start or reach Ray{where}: {one_line(str(exc))[:300]}") from None
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and gpu
        count = workers or (gpus if use_gpu else max(1, int(resources.get("CPU", 1) // cpus_per_actor)))
        # Ray restarts a dead actor (which loads its backend again) and retries its in-flight jobs there.
        actor_cls = ray.remote(num_cpus=0 if use_gpu else cpus_per_actor, num_gpus=1 if use_gpu else 0,
                               max_restarts=2, max_task_retries=2)(_RayWorker)
        prefix = f"layercake-batch-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        env = {} if use_gpu else thread_limits(max(1, int(cpus_per_actor)))
        actors = [actor_cls.options(name=f"{prefix}-{i}", runtime_env={"env_vars": env}).remote(make_runner, f"{prefix}-{i}")
                  for i in range(count)]
        yield from _stream_to_actors(ray, actors, jobs)
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


def _stream_to_actors(ray, actors: list, jobs: list[Job]) -> Iterator[JobOutcome]:
    queue = deque(jobs)
    in_flight: dict = {}  # object ref -> (job, actor index)
    resubmits: dict[str, int] = {}
    alive = set(range(len(actors)))

    def feed(i: int, depth: int = 2) -> None:
        # Two jobs per actor: the next one is already waiting when the current one ends.
        while queue and sum(1 for _, a in in_flight.values() if a == i) < depth:
            job = queue.popleft()
            in_flight[actors[i].run.remote(job)] = (job, i)

    for depth in (1, 2):  # one job to every actor before a second to any
        for i in range(len(actors)):
            feed(i, depth)
    while in_flight:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        job, i = in_flight.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            alive.discard(i)
            n = resubmits.get(job.name, 0)
            if alive and n < _MAX_RESUBMITS:
                resubmits[job.name] = n + 1
                queue.appendleft(job)
                feed(min(alive, key=lambda a: sum(1 for _, b in in_flight.values() if b == a)))
                continue
            outcome = JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason=f"its Ray worker died: {one_line(str(exc))[:200]}")
        except ray.exceptions.RayTaskError as exc:
            outcome = JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason=one_line(str(exc.cause if exc.cause else exc))[:300])
        yield outcome
        for a in ([i] if i in alive else sorted(alive)):
            feed(a)
        if queue and not alive:
            while queue:
                job = queue.popleft()
                yield JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason="every Ray worker died")


__all__ = ["EXECUTORS", "RunnerFactory", "THREAD_VARIABLES", "die_with_parent", "run_local", "run_ray", "thread_limits"]
