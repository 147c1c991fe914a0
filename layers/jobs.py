"""Jobs of a batch: what one stack to make is, and how a job file (a folder of prompts, JSONL or CSV) is read.

Every job gets a folder name that is safe, stable for the same job file and unique in the batch; a line that is
not a job becomes an "invalid" outcome naming the line and why, and the batch goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .plan import LAYER_NAMES, read_prompt_file

STATUSES = ("done", "skipped", "failed", "invalid")
"""done: rendered and written now; skipped: its folder was already complete; failed: the job raised (its
reason is recorded); invalid: the job file's line could not be read as a job."""
TEXT_KEYS = ("name", "prompt", "seed", "width", "height", "fill") + tuple(f"{n}_prompt" for n in LAYER_NAMES)
PICTURE_KEYS = ("name", "image", "depth", "layers", "seed", "fill")
MAX_NAME_CHARS = 48


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
    fill: Optional[str] = None
    """How hidden parts are filled, "texture" or "smooth" (picture jobs, plate-composed text jobs); None = the
    batch's."""

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
    foreground_prompt, fill, name. Keys of a picture job: image (required), depth, layers, seed, fill, name.
    Paths are relative to the job file's folder. A line that is not a job (malformed, an unknown key, a bad
    value, a missing image) becomes an invalid outcome naming its line; the other lines are still jobs.

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
    elif path.exists():
        from .images import check_file

        check_file(path, "job file")  # a named pipe is said to be one, never read
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
            invalid.append(JobOutcome(job=key, line=line, status="invalid", reason=one_line(str(exc))))
        else:
            key = _unique(job.name, taken)
            jobs.append(dataclasses.replace(job, name=key))
        taken.add(key)
        order.append(key)
    return JobList(jobs=jobs, invalid=invalid, order=order)


def _read_prompt_folder(folder: Path) -> list:
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
    fill = None
    if "fill" in record:
        from .fill import check_fill

        fill = check_fill(record["fill"].strip() if isinstance(record["fill"], str) else record["fill"])
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
                   seed=_int(record.get("seed", 0), "seed"), fill=fill)

    from .plan import check_prompt

    if "prompt" not in record:
        raise ValueError("a job needs a prompt (text job) or an image (picture job)")
    prompt = check_prompt(record["prompt"])
    seed = _int(record.get("seed", 0), "seed")
    width = _int(record["width"], "width") if "width" in record else None
    height = _int(record["height"], "height") if "height" in record else None
    overrides = tuple((n, check_prompt(record[f"{n}_prompt"])) for n in LAYER_NAMES if f"{n}_prompt" in record)
    # Planning is pure and takes milliseconds: every value is checked here, not halfway through the batch.
    planned(prompt, seed, width, height, overrides)
    return Job(name=job_name(given_name or label or prompt), line=line, prompt=prompt, seed=seed, width=width,
               height=height, overrides=overrides, fill=fill)


_PLANNED: dict[bytes, tuple] = {}
_PLANNED_MAX = 1 << 17
"""Jobs whose plan facts are kept (about 150 bytes each, whatever the prompt's length)."""


def planned(prompt: str, seed: int, width: Optional[int], height: Optional[int],
            overrides: tuple[tuple[str, str], ...] = ()) -> tuple:
    """What a text job's finished stack records of its plan: (sha256 of the prompt, seed, width, height, layer seeds).

    Kept per job: the job file is planned once when it is read (a bad value is refused there), and a rerun checks
    every finished folder against it without planning again.

    Raises:
        ValueError: the job cannot be planned (the reason names the value).
    """
    key = text_digest(json.dumps([prompt, seed, width, height, list(overrides)], ensure_ascii=False))
    facts = _PLANNED.get(key)
    if facts is None:
        from .plan import plan_scene

        plan = plan_scene(prompt, seed, width=width, height=height, overrides=dict(overrides))
        facts = (text_digest(plan.prompt), plan.seed, plan.width, plan.height, tuple(lp.seed for lp in plan.layers))
        if len(_PLANNED) >= _PLANNED_MAX:
            _PLANNED.clear()
        _PLANNED[key] = facts
    return facts


def text_digest(text) -> bytes:
    """sha256 of a text (None for anything that is not one)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest() if isinstance(text, str) else None


def _int(value, what: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return value


def _existing_file(value, base: Path, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a file path, not {value!r}")
    from .images import check_file

    path = (base / value).resolve()
    if not path.exists():
        raise ValueError(f"{what} not found: {value}")
    return str(check_file(path, what))


def _unique(name: str, taken: set) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(text: str) -> str:
    """A message on one line, without terminal colour codes (Ray colours its errors)."""
    return " ".join(_ANSI.sub("", text).split())


__all__ = ["Job", "JobList", "JobOutcome", "MAX_NAME_CHARS", "PICTURE_KEYS", "STATUSES", "TEXT_KEYS", "job_name",
           "one_line", "planned", "read_jobs"]
