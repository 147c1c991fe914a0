"""Many stacks from one job file: parse the jobs, skip the finished ones, run the rest on one machine or on Ray.

A job file is a folder of `.txt` prompts, or a JSONL / CSV file with one job per line. Every job gets its own
stack folder under the output folder, named from the job. A rerun skips every job whose folder is complete
(checked against its manifest, read only) and redoes the rest, so a batch killed halfway resumes where it was.

Executors:
* local: one process, or `workers` processes for CPU draft jobs; each loads its backend once.
* ray: one Ray actor per GPU (or per CPU for draft jobs) holding a loaded backend, jobs streamed to the actors.
  An actor that dies mid-job is restarted by Ray and the job retried; a job whose actor ran out of restarts is
  sent to another actor. Ray is imported only inside this executor.

Every attempt is written to `<out>/.attempts/<worker>.jsonl` (one file per worker, so no two processes ever
append to the same file): which worker loaded its backend, started, finished or failed which job. The summary
is `<out>/batch.csv` and `<out>/batch.json`, rewritten after every job.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import socket
import time
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

from .plan import LAYER_NAMES

EXECUTORS = ("local", "ray")
STATUSES = ("done", "skipped", "failed", "invalid")
"""done: rendered and written now; skipped: its folder was already complete; failed: the job raised (its
reason is recorded); invalid: the job file's line could not be read as a job."""

TEXT_KEYS = ("name", "prompt", "seed", "width", "height") + tuple(f"{n}_prompt" for n in LAYER_NAMES)
PICTURE_KEYS = ("name", "image", "depth", "layers", "seed")
SUMMARY_FIELDS = ("job", "line", "status", "seconds", "folder", "reason")
ATTEMPTS_DIR = ".attempts"
MAX_NAME_CHARS = 48
_MAX_RESUBMITS = 1
"""How often the Ray executor sends a job to another actor after its own actor ran out of restarts."""


# --- jobs ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One stack to make: a text job (prompt) or a picture job (image)."""

    name: str
    """Folder name under the output folder: safe, stable for the same job file, unique in the batch."""
    line: int = 0
    """Line of the job file it came from (1-based); 0 for a prompt file of a folder."""
    prompt: Optional[str] = None
    """Text job: the scene prompt."""
    seed: int = 0
    width: Optional[int] = None
    height: Optional[int] = None
    overrides: tuple[tuple[str, str], ...] = ()
    """Text job: (layer name, prompt) pairs replacing that layer's planned prompt."""
    image: Optional[str] = None
    """Picture job: the picture to decompose (absolute path)."""
    depth: Optional[str] = None
    """Picture job: an optional depth map for it (white = near)."""
    layers: Optional[Union[int, str]] = None
    """Picture job: how many layers to split it into, 2..6 or "auto" (default 3)."""

    @property
    def kind(self) -> str:
        return "picture" if self.image is not None else "text"


@dataclass(frozen=True)
class JobOutcome:
    """What became of one job: a row of the summary."""

    job: str
    line: int
    status: str
    seconds: float = 0.0
    folder: str = ""
    reason: str = ""
    worker: str = ""

    def row(self) -> dict:
        return {"job": self.job, "line": self.line, "status": self.status, "seconds": round(self.seconds, 3),
                "folder": self.folder, "reason": self.reason}


@dataclass
class JobList:
    """A job file read: the jobs, and one invalid outcome per line that is not a job."""

    jobs: list[Job]
    invalid: list[JobOutcome] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    """Names of the jobs and labels of the invalid lines, in file order (the summary's order)."""

    def __post_init__(self):
        if not self.order:
            self.order = [j.name for j in self.jobs] + [o.job for o in self.invalid]


def job_name(text: str) -> str:
    """A safe folder name from a text: ASCII lower-case words joined by '-', at most MAX_NAME_CHARS characters.

    Args:
        text: a prompt, a file stem or a name given in the job file.

    Returns:
        The name; "job" when nothing of the text is left.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = [w for w in re.split(r"[^a-z0-9]+", ascii_text) if w]
    name = ""
    for word in words:
        candidate = f"{name}-{word}" if name else word
        if len(candidate) > MAX_NAME_CHARS:
            break
        name = candidate
    return name or (words[0][:MAX_NAME_CHARS] if words else "job")


def read_jobs(source) -> JobList:
    """Read a job file: a folder of `.txt` prompts, a `.jsonl` file or a `.csv` file (with a header row).

    Keys of a text job: prompt (required), seed, width, height, background_prompt, midground_prompt,
    foreground_prompt, name. Keys of a picture job: image (required), depth, layers, name. Paths are relative
    to the job file's folder. A line that is not a job (malformed, an unknown key, a bad value, a missing
    image) becomes an invalid outcome naming its line; the other lines are still jobs.

    Args:
        source: the folder or file.

    Returns:
        The JobList, jobs in file order with unique names (a repeated name gets -2, -3, ...).

    Raises:
        ValueError: the source is missing, of an unknown kind, unreadable, or holds no job at all.
    """
    path = Path(source)
    if path.is_dir():
        entries = _read_prompt_folder(path)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise ValueError(f"job file {path} must be a folder of .txt prompts, a .jsonl or a .csv file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"job file {path} is not valid UTF-8 (offset {exc.start})") from None
        except OSError as exc:
            raise ValueError(f"cannot read job file {path}: {exc.strerror or exc}") from None
        entries = _jsonl_entries(text) if suffix == ".jsonl" else _csv_entries(text)
    else:
        raise ValueError(f"job file not found: {path}")
    if not entries:
        raise ValueError(f"job file {path} holds no jobs")

    base = path if path.is_dir() else path.parent
    jobs, invalid, order, taken = [], [], [], set()
    for line, label, record in entries:
        try:
            if isinstance(record, str):  # the entry could not be read at all: its reason
                raise ValueError(record)
            job = _job_from_record(record, line, base, label)
        except ValueError as exc:
            key = _unique(label or f"line-{line}", taken)
            invalid.append(JobOutcome(job=key, line=line, status="invalid", reason=_one_line(str(exc))))
        else:
            key = _unique(job.name, taken)
            jobs.append(dataclasses.replace(job, name=key))
        taken.add(key)
        order.append(key)
    return JobList(jobs=jobs, invalid=invalid, order=order)


def _read_prompt_folder(folder: Path) -> list:
    from .cli import read_prompt_file

    entries = []
    for p in sorted(folder.glob("*.txt")):
        try:
            entries.append((0, job_name(p.stem), {"prompt": read_prompt_file(p), "name": p.stem}))
        except ValueError as exc:
            entries.append((0, job_name(p.stem), str(exc)))
    return entries


def _jsonl_entries(text: str) -> list:
    entries = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            entries.append((n, "", f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(record, dict):
            entries.append((n, "", f"a job is a JSON object, not {type(record).__name__}"))
            continue
        entries.append((n, "", record))
    return entries


def _csv_entries(text: str) -> list:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return []
    header = [h.strip() for h in header]
    entries = []
    line = reader.line_num
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                entries.append((start, "", f"{len(row)} cells for {len(header)} columns"))
                continue
            entries.append((start, "", {k: v for k, v in zip(header, row) if v.strip() != ""}))
    except csv.Error as exc:
        entries.append((line + 1, "", f"not valid CSV ({exc})"))
    return entries


def _job_from_record(record: dict, line: int, base: Path, label: str) -> Job:
    is_picture = "image" in record
    allowed = PICTURE_KEYS if is_picture else TEXT_KEYS
    unknown = [k for k in record if k not in allowed]
    if unknown:
        kind = "picture" if is_picture else "text"
        raise ValueError(f"unknown key {unknown[0]!r} for a {kind} job; use {', '.join(allowed)}")
    given_name = record.get("name")
    if given_name is not None and not isinstance(given_name, str):
        raise ValueError(f"name must be text, not {given_name!r}")
    if is_picture:
        image = _existing_file(record["image"], base, "image")
        depth = _existing_file(record["depth"], base, "depth map") if "depth" in record else None
        layers = None
        if str(record.get("layers", "")).strip().lower() == "auto":
            layers = "auto"
        elif "layers" in record:
            from .decompose import MAX_LAYERS, MIN_LAYERS

            layers = _int(record["layers"], "layers")
            if not MIN_LAYERS <= layers <= MAX_LAYERS:
                raise ValueError(f"layers {layers} is out of range {MIN_LAYERS}..{MAX_LAYERS} (or auto)")
        name = job_name(given_name or Path(image).stem)
        return Job(name=name, line=line, image=image, depth=depth, layers=layers,
                   seed=_int(record.get("seed", 0), "seed"))

    from .plan import check_prompt, plan_scene

    if "prompt" not in record:
        raise ValueError("a job needs a prompt (text job) or an image (picture job)")
    prompt = check_prompt(record["prompt"])
    seed = _int(record.get("seed", 0), "seed")
    width = _int(record["width"], "width") if "width" in record else None
    height = _int(record["height"], "height") if "height" in record else None
    overrides = tuple((n, check_prompt(record[f"{n}_prompt"])) for n in LAYER_NAMES if f"{n}_prompt" in record)
    # Planning is pure and takes milliseconds: every value is checked here, not halfway through the batch.
    plan_scene(prompt, seed, width=width, height=height, overrides=dict(overrides))
    return Job(name=job_name(given_name or label or prompt), line=line, prompt=prompt, seed=seed, width=width,
               height=height, overrides=overrides)


def _int(value, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return value


def _existing_file(value, base: Path, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a file path, not {value!r}")
    path = (base / value).resolve()
    if not path.is_file():
        raise ValueError(f"{what} not found: {value}")
    return str(path)


def _unique(name: str, taken: set) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_line(text: str) -> str:
    """A message on one line, without terminal colour codes (Ray colours its errors)."""
    return " ".join(_ANSI_RE.sub("", text).split())


# --- complete folders ------------------------------------------------------------------------------------------

def incomplete_reason(folder, job: Optional[Job] = None) -> Optional[str]:
    """Why a stack folder is not a complete result (of this job), or None when it is. Reads only.

    Complete: manifest.json parses, every file it names (the outputs and each layer's PNG, depth and prior) is
    there and not empty, the layer PNGs have the manifest's size, and for a text job the manifest's prompt, seed,
    size and layer seeds are the job's.

    Args:
        folder: the stack folder (a path, or an fsspec URL).
        job: the job it should hold; None checks completeness only.

    Returns:
        A one-line reason, or None.
    """
    from PIL import Image, UnidentifiedImageError

    from .store import open_store

    store = open_store(folder)
    try:
        text = store.read_text("manifest.json")
        if text is None:
            return "no manifest.json"
        manifest = json.loads(text)
        files = list(manifest["files"].items())
        layers = manifest["layers"]
        size = (int(manifest["width"]), int(manifest["height"]))
        video = bool(manifest.get("options", {}).get("video", True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest.json is not readable ({type(exc).__name__})"
    formats = manifest.get("options", {}).get("formats")  # exports chosen; absent = every one
    needed = [rel for key, rel in files if (key != "mp4" or video)
              and (formats is None or key in ("composite", "manifest") or key in formats)]
    for entry in layers:
        needed += [entry.get(k) for k in ("file", "depth_file", "prior_file") if entry.get(k)]
    for rel in needed:
        if store.size(rel) <= 0:
            return f"{rel} is missing"
    for entry in layers:
        try:
            with store.open_binary(entry["file"]) as f, Image.open(f) as img:
                if img.size != size:
                    return f"{entry['file']} is {img.size[0]}x{img.size[1]}, the manifest says {size[0]}x{size[1]}"
        except (OSError, UnidentifiedImageError, KeyError):
            return f"{entry.get('file')} is not an image"
    if job is not None and job.kind == "text":
        return _text_mismatch(manifest, job)
    if job is not None and manifest.get("render", {}).get("picture") != job.image:
        return "the folder holds another job (its picture differs)"
    return None


def _text_mismatch(manifest: dict, job: Job) -> Optional[str]:
    from .plan import plan_scene

    plan = plan_scene(job.prompt, job.seed, width=job.width, height=job.height, overrides=dict(job.overrides))
    expected = {"prompt": plan.prompt, "seed": plan.seed, "width": plan.width, "height": plan.height,
                "layer seeds": [lp.seed for lp in plan.layers]}
    found = {"prompt": manifest.get("prompt"), "seed": manifest.get("seed"), "width": manifest.get("width"),
             "height": manifest.get("height"),
             "layer seeds": [entry.get("seed") for entry in manifest.get("layers", [])]}
    for key, value in expected.items():
        if found[key] != value:
            return f"the folder holds another job (its {key} differs)"
    return None


# --- one worker ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs to build its backend once and run jobs: plain values, sent to other processes."""

    out: str
    """The output folder: an absolute path every worker sees, or an fsspec URL."""
    backend: str = "draft"
    backend_options: tuple[tuple[str, str], ...] = ()
    options: Optional[dict] = None
    """GenerateOptions keyword arguments; steps and guidance, when not given, are the loaded backend's own."""
    depth_model: Optional[str] = None
    """Depth estimator for picture jobs without a depth map (hub id or folder); None = estimate's default."""


class JobRunner:
    """A worker: loads its backend once, then runs job after job into `<out>/<job name>/`."""

    def __init__(self, spec: WorkerSpec, worker: Optional[str] = None):
        from .backends import resolve_backend
        from .store import open_store

        self.spec = spec
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self._store = open_store(spec.out)
        self._log_name = f"{ATTEMPTS_DIR}/{job_name(self.worker)}.jsonl"
        t = time.perf_counter()
        # Every step's imports (matting compiles or loads its kernels) are paid here, once, not in the first job.
        from . import pipeline  # noqa: F401

        self.backend, self.notice = resolve_backend(spec.backend, **dict(spec.backend_options))
        self.options = generate_options(self.backend, spec.options)
        self._log("load", "", seconds=time.perf_counter() - t, backend=getattr(self.backend, "name", "?"))

    def run(self, job: Job) -> JobOutcome:
        """Make one job's stack, or find it already complete; a failure becomes the outcome's reason."""
        t = time.perf_counter()
        self._log("start", job.name)
        # A job retried after its worker died may already have been written just before the death.
        if incomplete_reason(self._store.child(job.name).location, job) is None:
            self._log("found", job.name)
            return self._outcome(job, "skipped", t, "already complete")
        try:
            result = make_stack(job, self.backend, self.options, self.spec.depth_model)
            self._store.write_stack(result, job.name)
        except Exception as exc:  # noqa: BLE001 - one job's failure is recorded; the batch goes on
            reason = _one_line(str(exc)) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._log("failed", job.name, seconds=time.perf_counter() - t, reason=_one_line(reason))
            return self._outcome(job, "failed", t, _one_line(reason))
        self._log("done", job.name, seconds=time.perf_counter() - t)
        return self._outcome(job, "done", t)

    def _outcome(self, job: Job, status: str, t0: float, reason: str = "") -> JobOutcome:
        return JobOutcome(job=job.name, line=job.line, status=status, seconds=time.perf_counter() - t0,
                          folder=job.name, reason=reason, worker=self.worker)

    def _log(self, event: str, job: str, **extra) -> None:
        record = {"event": event, "job": job, "worker": self.worker, "time": round(time.time(), 3), **extra}
        self._store.append_line(self._log_name, json.dumps(record))


def make_stack(job: Job, backend, options, depth_model: Optional[str] = None):
    """Render one job into a StackResult (text jobs: the pipeline; picture jobs: decomposition).

    Args:
        job: the job.
        backend: the worker's loaded backend.
        options: GenerateOptions.
        depth_model: depth estimator for picture jobs without a depth map (default: estimate's).

    Returns:
        The StackResult, ready for write_outputs.
    """
    if job.kind == "picture":
        return _picture_stack(job, backend, options, depth_model)
    from .pipeline import generate

    return generate(job.prompt, backend, seed=job.seed, width=job.width, height=job.height, options=options,
                    overrides=dict(job.overrides))


def _picture_stack(job: Job, backend, options, depth_model: Optional[str] = None):
    """A picture job -> a StackResult, as `python -m layers decompose` makes it.

    The depth map is the job's own, or estimated from the picture (`depth_model`, loaded once per worker).
    A backend that can repaint fills the hidden parts; otherwise they are filled offline.
    """
    from .decompose import load_depth, load_picture
    from .pipeline import decompose_picture

    picture = load_picture(job.image)
    if job.depth is not None:
        depth, source = load_depth(job.depth), "map"
    else:
        from .estimate import DEFAULT_DEPTH_MODEL, estimate_depth

        depth, source = estimate_depth(picture, model=depth_model or DEFAULT_DEPTH_MODEL), "reference"
    result = decompose_picture(picture, depth, backend, layers=job.layers or 3, seed=job.seed, options=options,
                               depth_source=source)
    # Which picture a folder holds: a rerun compares it before skipping the job.
    result.render_info = {**result.render_info, "picture": job.image, "depth_map": job.depth}
    return result


def generate_options(backend, given: Optional[dict] = None):
    """GenerateOptions from the options a user gave; steps and guidance default to the backend's own.

    Args:
        backend: a loaded backend, or None (then steps 25, guidance 6.0).
        given: GenerateOptions keyword arguments.

    Returns:
        The GenerateOptions (ValueError for a bad value).
    """
    from .pipeline import GenerateOptions

    defaults = getattr(backend, "defaults", {}) or {}
    return GenerateOptions(**{"steps": defaults.get("steps", 25), "guidance": defaults.get("guidance", 6.0),
                              **(given or {})})


def read_attempts(out) -> list[dict]:
    """Every worker's attempt log under `<out>/.attempts/`, merged in time order."""
    from .store import open_store

    store = open_store(out)
    events = []
    for name in store.list(ATTEMPTS_DIR, ".jsonl"):
        for raw in (store.read_text(f"{ATTEMPTS_DIR}/{name}") or "").splitlines():
            if raw.strip():
                try:
                    events.append(json.loads(raw))
                except json.JSONDecodeError:
                    continue  # a line cut short by a killed worker
    return sorted(events, key=lambda e: e.get("time", 0.0))


# --- executors -------------------------------------------------------------------------------------------------

def _run_local(jobs: list[Job], spec: WorkerSpec, workers: int) -> Iterator[JobOutcome]:
    if workers == 1:
        runner = JobRunner(spec)
        for job in jobs:
            yield runner.run(job)
        return
    import concurrent.futures as cf
    import multiprocessing

    # spawn, not fork: a parent that has imported torch or holds threads must not be forked. The children read
    # their thread limits from the environment they are started with (numpy loads its BLAS on import).
    with _environment(thread_limits(max(1, (os.cpu_count() or 1) // workers))):
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_pool_worker, initargs=(spec,))
        futures = {pool.submit(_run_in_pool_worker, job): job for job in jobs}
    with pool:
        for future in cf.as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except cf.process.BrokenProcessPool:
                yield JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason="a worker process died; rerun the batch to redo this job")


_POOL_RUNNER: Optional[JobRunner] = None


def _init_pool_worker(spec: WorkerSpec) -> None:
    global _POOL_RUNNER
    _POOL_RUNNER = JobRunner(spec)


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
    """The body of a Ray actor: one JobRunner, its backend loaded when the actor starts (and restarts)."""

    def __init__(self, spec: WorkerSpec, name: str):
        # The actor's name plus the process: a restarted actor is a new process, a new attempt log.
        self.runner = JobRunner(spec, worker=f"{name}-{os.getpid()}")

    def run(self, job: Job) -> JobOutcome:
        return self.runner.run(job)


def _run_ray(jobs: list[Job], spec: WorkerSpec, workers: Optional[int], address: Optional[str],
             cpus_per_actor: float = 1.0) -> Iterator[JobOutcome]:
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
            raise ValueError(f"cannot start or reach Ray{where}: {_one_line(str(exc))[:300]}") from None
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and spec.backend != "draft"
        count = workers or (gpus if use_gpu else max(1, int(resources.get("CPU", 1) // cpus_per_actor)))
        # Ray restarts a dead actor (which loads its backend again) and retries its in-flight jobs there.
        actor_cls = ray.remote(num_cpus=0 if use_gpu else cpus_per_actor, num_gpus=1 if use_gpu else 0,
                               max_restarts=2, max_task_retries=2)(_RayWorker)
        prefix = f"layercake-batch-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        env = {} if use_gpu else thread_limits(max(1, int(cpus_per_actor)))
        actors = [actor_cls.options(name=f"{prefix}-{i}", runtime_env={"env_vars": env}).remote(spec, f"{prefix}-{i}")
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
                                 reason=f"its Ray worker died: {_one_line(str(exc))[:200]}")
        except ray.exceptions.RayTaskError as exc:
            outcome = JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason=_one_line(str(exc.cause if exc.cause else exc))[:300])
        yield outcome
        for a in ([i] if i in alive else sorted(alive)):
            feed(a)
        if queue and not alive:
            while queue:
                job = queue.popleft()
                yield JobOutcome(job=job.name, line=job.line, status="failed", folder=job.name,
                                 reason="every Ray worker died")


# --- the batch -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchSettings:
    """How a batch is run."""

    executor: str = "local"
    """local or ray."""
    workers: Optional[int] = None
    """local: processes (default 1); ray: actors (default one per GPU, else one per CPU)."""
    backend: str = "draft"
    """Backend name (auto, draft, diffusers)."""
    backend_options: tuple[tuple[str, str], ...] = ()
    """Backend constructor options (model=, controlnet=, device=, dtype=)."""
    options: Optional[dict] = None
    """GenerateOptions keyword arguments for every job; steps and guidance not given are the backend's own."""
    ray_address: Optional[str] = None
    """A Ray cluster address, "auto", or None for a Ray started on this machine."""
    depth_model: Optional[str] = None
    """Depth estimator for picture jobs without a depth map (hub id or folder); None = estimate's default."""

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)}")
        if self.workers is not None and not 1 <= self.workers <= 1024:
            raise ValueError(f"workers must be 1..1024, got {self.workers}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("a Ray address needs --executor ray")
        generate_options(None, self.options)  # every option checked before any work


@dataclass
class BatchSummary:
    """Every job's outcome, in job-file order, and the batch's totals."""

    outcomes: list[JobOutcome]
    seconds: float
    executor: str
    workers: Optional[int]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for o in self.outcomes if o.status == s) for s in STATUSES}

    def to_dict(self) -> dict:
        done = self.counts()["done"]
        return {"executor": self.executor, "workers": self.workers, "seconds": round(self.seconds, 3),
                "counts": self.counts(),
                "stacks_per_minute": round(60.0 * done / self.seconds, 3) if self.seconds > 0 and done else 0.0,
                "jobs": [o.row() for o in self.outcomes]}


def check_out_dir(out) -> str:
    """The output folder (a path or an fsspec URL), created; ValueError when it cannot be written.

    Returns:
        Its absolute location, as the workers get it.
    """
    from .store import open_store

    return open_store(out).ensure_writable()


def run_batch(job_list: JobList, out, settings: BatchSettings = BatchSettings(),
              progress: Optional[Callable[[JobOutcome, int, int], None]] = None) -> BatchSummary:
    """Run every job not already complete under `out`, and write the summary (`batch.csv`, `batch.json`).

    Args:
        job_list: read_jobs' result.
        out: the output folder; each job writes `<out>/<job name>/`.
        settings: executor, workers, backend and render options.
        progress: called with (outcome, finished, total) after each job.

    Returns:
        The BatchSummary.

    Raises:
        ValueError: the output folder cannot be written, or the executor cannot start.
    """
    from .store import open_store

    root = open_store(check_out_dir(out))
    t0 = time.perf_counter()
    total = len(job_list.jobs) + len(job_list.invalid)
    outcomes: dict[str, JobOutcome] = {}
    pending, known = [], list(job_list.invalid)
    for job in job_list.jobs:
        if incomplete_reason(root.child(job.name).location, job) is None:
            known.append(JobOutcome(job=job.name, line=job.line, status="skipped", folder=job.name,
                                    reason="already complete"))
        else:
            pending.append(job)
    keyed = job_list.order

    def report(o: JobOutcome) -> None:
        outcomes[o.job] = o
        write_summary(root, BatchSummary([outcomes[k] for k in keyed if k in outcomes],
                                         time.perf_counter() - t0, settings.executor, settings.workers))
        if progress is not None:
            progress(o, len(outcomes), total)

    for o in known:
        report(o)
    spec = WorkerSpec(out=root.location, backend=settings.backend, backend_options=settings.backend_options,
                      options=settings.options, depth_model=settings.depth_model)
    if pending:
        if settings.executor == "ray":
            results = _run_ray(pending, spec, settings.workers, settings.ray_address)
        else:
            results = _run_local(pending, spec, min(settings.workers or 1, len(pending)))
        for o in results:
            report(o)
    summary = BatchSummary([outcomes[k] for k in keyed], time.perf_counter() - t0, settings.executor,
                           settings.workers)
    write_summary(root, summary)
    return summary


def write_summary(root, summary: BatchSummary) -> None:
    """Write batch.json and batch.csv into a store, each replaced whole (a reader never sees half a summary)."""
    data = summary.to_dict()
    root.replace_text("batch.json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data["jobs"])
    root.replace_text("batch.csv", buf.getvalue())


__all__ = ["BatchSettings", "BatchSummary", "EXECUTORS", "Job", "JobList", "JobOutcome", "JobRunner", "WorkerSpec",
           "incomplete_reason", "job_name", "make_stack", "read_attempts", "read_jobs", "run_batch", "write_summary"]
