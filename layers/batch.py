"""Many stacks from one job file: skip the finished jobs, run the rest on one machine or on Ray, summarise.

The job file is read by `layers.jobs` (a folder of `.txt` prompts, or a JSONL / CSV file with one job per line);
the jobs run on an executor of `layers.executors`, each worker holding one JobRunner. Every job gets its own
stack folder under the output folder, named from the job. A rerun skips every job whose folder is complete
(checked against its manifest, read only) and redoes the rest, so a batch killed halfway resumes where it was.

Executors:
* local: one process, or `workers` processes for CPU draft jobs; each loads its backend once.
* ray: one Ray actor per GPU (or per CPU for draft jobs) holding a loaded backend, jobs streamed to the actors.
  An actor that dies mid-job is restarted by Ray and the job retried; a job whose actor ran out of restarts is
  sent to another actor. Ray is imported only inside this executor.

Every attempt is written to `<out>/.attempts/<worker>.jsonl` (one file per worker, so no two processes ever
append to the same file): which worker loaded its backend, started, finished or failed which job. The summary
is `<out>/batch.csv` and `<out>/batch.json`, written in batches while the jobs run (at most every few seconds)
and whole at the end.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .executors import EXECUTORS, run_local, run_ray
from .jobs import STATUSES, Job, JobList, JobOutcome, job_name, one_line, planned, text_digest

SUMMARY_FIELDS = ("job", "line", "status", "seconds", "folder", "reason")
ATTEMPTS_DIR = ".attempts"


# --- complete folders ------------------------------------------------------------------------------------------

def incomplete_reason(folder, job: Optional[Job] = None) -> Optional[str]:
    """Why a stack folder is not a complete result (of this job), or None when it is. Reads only.

    Complete: manifest.json parses, every file it names (the outputs and each layer's PNG, depth and prior) is
    there and not empty, the layer PNGs have the manifest's size, and for a text job the manifest's prompt, seed,
    size and layer seeds are the job's (for a picture job, the picture's and depth map's bytes). Every file the
    manifest names must lie inside the folder: nothing outside it is looked at.

    Args:
        folder: the stack folder (a path, or an fsspec URL).
        job: the job it should hold; None checks completeness only.

    Returns:
        A one-line reason, or None.
    """
    from PIL import Image, UnidentifiedImageError

    from .store import open_store

    from .manifest import MAX_MANIFEST_BYTES

    store = open_store(folder)
    if not store.holds("manifest.json"):
        return "'manifest.json' points outside its folder"
    if store.size("manifest.json") > MAX_MANIFEST_BYTES:
        return f"manifest.json is over {MAX_MANIFEST_BYTES} bytes"
    try:
        text = store.read_text("manifest.json")
        if text is None:
            return "no manifest.json"
        manifest = json.loads(text)
        files = list(manifest["files"].items())
        layers = [dict(entry) for entry in manifest["layers"]]
        size = (int(manifest["width"]), int(manifest["height"]))
        video = bool(manifest.get("options", {}).get("video", True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"manifest.json is not readable ({type(exc).__name__})"
    formats = manifest.get("options", {}).get("formats")  # exports chosen; absent = every one
    needed = [rel for key, rel in files if (key != "mp4" or video)
              and (formats is None or key in ("composite", "manifest") or key in formats)]
    for entry in layers:
        needed += [entry.get(k) for k in ("file", "depth_file", "prior_file") if entry.get(k)]
    # Every name is checked before any is looked at: a manifest may come from anyone.
    for rel in needed:
        if not store.holds(rel):
            return f"{str(rel)[:200]!r} points outside its folder"
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
    if job is not None:
        render = manifest.get("render") or {}
        for key, path, what in (("picture", job.image, "picture"), ("depth_map", job.depth, "depth map")):
            try:
                if render.get(key) != file_identity(path):
                    return f"the folder holds another job (its {what} differs)"
            except OSError as exc:
                return f"its {what} cannot be read ({exc.strerror or exc})"
    return None


def file_identity(path) -> Optional[dict]:
    """What a picture job's manifest records of an input file: its name and its bytes' sha256, never where it lives
    (a stack folder is shared; a local path would say whose disk it came from). None for no file."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"file": os.path.basename(path), "sha256": digest.hexdigest()}


def _text_mismatch(manifest: dict, job: Job) -> Optional[str]:
    prompt, seed, width, height, layer_seeds = planned(job.prompt, job.seed, job.width, job.height, job.overrides)
    expected = {"prompt": prompt, "seed": seed, "width": width, "height": height, "layer seeds": list(layer_seeds)}
    found = {"prompt": text_digest(manifest.get("prompt")), "seed": manifest.get("seed"),
             "width": manifest.get("width"), "height": manifest.get("height"),
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
    """GenerateOptions keyword arguments; what is not given is the loaded backend's own default."""
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
        from .pipeline import GenerateOptions

        self.backend, self.notice = resolve_backend(spec.backend, **dict(spec.backend_options))
        self.options = GenerateOptions.for_backend(self.backend, **(spec.options or {}))
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
            self._store.check_target(job.name)  # a folder that is not ours fails its job before anything renders
            result = make_stack(job, self.backend, self.options, self.spec.depth_model)
            self._store.write_stack(result, job.name)
        except Exception as exc:  # noqa: BLE001 - one job's failure is recorded; the batch goes on
            reason = one_line(str(exc)) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            self._log("failed", job.name, seconds=time.perf_counter() - t, reason=one_line(reason))
            return self._outcome(job, "failed", t, one_line(reason))
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
    if job.fill is not None:
        options = dataclasses.replace(options, fill=job.fill)
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
    result.render_info = {**result.render_info, "picture": file_identity(job.image),
                          "depth_map": file_identity(job.depth)}
    return result


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
    """GenerateOptions keyword arguments for every job; what is not given is the backend's own default."""
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
        from .pipeline import GenerateOptions

        GenerateOptions(**(self.options or {}))  # every option checked before any work


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
    """The output folder (a path or an fsspec URL), created; ValueError when it cannot be written, or when it holds
    a batch.json / batch.csv that is not a Layercake batch summary (a batch replaces those whole).

    Returns:
        Its absolute location, as the workers get it.
    """
    from .store import open_store

    store = open_store(out)
    location = store.ensure_writable()
    for name, ours in (("batch.json", _is_summary_json), ("batch.csv", _is_summary_csv)):
        if store.size(name) >= 0 and not ours(store.read_text(name) or ""):
            raise ValueError(f"output folder {out} holds a {name} that is not a Layercake batch summary; choose "
                             f"another folder")
    return location


def _is_summary_json(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(data.get("jobs"), list) and isinstance(data.get("counts"), dict)


def _is_summary_csv(text: str) -> bool:
    return text.split("\n", 1)[0] == ",".join(SUMMARY_FIELDS)


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
    pending, known = [], list(job_list.invalid)
    for job in job_list.jobs:
        if incomplete_reason(root.child(job.name).location, job) is None:
            known.append(JobOutcome(job=job.name, line=job.line, status="skipped", folder=job.name,
                                    reason="already complete"))
        else:
            pending.append(job)
    summary = _SummaryWriter(root, job_list.order, t0, settings)

    def report(o: JobOutcome) -> None:
        summary.add(o)
        if progress is not None:
            progress(o, len(summary.outcomes), total)

    for o in known:
        report(o)
    if known:
        summary.write()  # what a rerun found, on disk before the first job starts
    spec = WorkerSpec(out=root.location, backend=settings.backend, backend_options=settings.backend_options,
                      options=settings.options, depth_model=settings.depth_model)
    if pending:
        if settings.executor == "ray":
            results = run_ray(pending, functools.partial(JobRunner, spec), settings.workers, settings.ray_address,
                              gpu=spec.backend != "draft")
        else:
            results = run_local(pending, functools.partial(JobRunner, spec), min(settings.workers or 1, len(pending)))
        for o in results:
            report(o)
    return summary.write()


SUMMARY_EVERY_S = 2.0
"""Shortest time between two writes of the summary while a batch runs (it is written whole at the end)."""


class _SummaryWriter:
    """The summary of a running batch, written in batches: at most every SUMMARY_EVERY_S seconds and never more
    than a tenth of the time, so a batch of N jobs spends time linear in N on it (not a rewrite per job)."""

    def __init__(self, root, order: list[str], t0: float, settings: BatchSettings):
        self.root, self.order, self.t0, self.settings = root, order, t0, settings
        self.outcomes: dict[str, JobOutcome] = {}
        self._next = time.perf_counter()

    def add(self, outcome: JobOutcome) -> None:
        self.outcomes[outcome.job] = outcome
        if time.perf_counter() >= self._next:
            self.write()

    def write(self) -> BatchSummary:
        started = time.perf_counter()
        summary = BatchSummary([self.outcomes[k] for k in self.order if k in self.outcomes], started - self.t0,
                               self.settings.executor, self.settings.workers)
        write_summary(self.root, summary)
        now = time.perf_counter()
        self._next = now + max(SUMMARY_EVERY_S, 10.0 * (now - started))
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


__all__ = ["BatchSettings", "BatchSummary", "JobRunner", "WorkerSpec", "check_out_dir", "file_identity",
           "incomplete_reason", "make_stack", "read_attempts", "run_batch", "write_summary"]
