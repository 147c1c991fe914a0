"""Where batch results live: a local folder (a shared filesystem for many machines) or an fsspec URL.

A URL (`s3://bucket/batch`, `gs://...`, `file:///mnt/x`, `memory://...`) needs fsspec and the filesystem's own
package (s3fs, gcsfs...). Object stores cannot rename a folder, so a stack is written locally by `write_outputs`
and uploaded file by file: the old manifest.json is removed first and the new one uploaded last. A reader that
trusts only a folder whose manifest is there and names files that are all there (`batch.incomplete_reason`)
never takes a half-uploaded folder for a finished one. Text files (summary, attempt logs) are replaced whole.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Optional, Union

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


_STACK_FILE = re.compile(r"^(?:(?:layers|depth|priors)/[a-z0-9_-]+\.png"
                         r"|[a-z]+\.(?:png|psd|ora|zip|mp4|glb|html|json))$")
"""Paths a stack upload writes (pipeline.OUTPUT_NAMES, plate.png, and each layer's PNGs)."""


def _is_manifest(text: str) -> bool:
    """Whether a manifest's text has the shape of ours (its required keys), without trusting anything in it."""
    from .manifest import MANIFEST_SCHEMA

    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and all(key in data for key, (_, required) in MANIFEST_SCHEMA.items() if required)


def _relative(rel) -> bool:
    """Whether `rel` is a plain relative path that stays below its folder (no absolute path, drive, .., backslash)."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    return ".." not in rel.split("/") and not re.match(r"^[A-Za-z]:", rel)


def is_url(location) -> bool:
    """Whether `location` is a URL (scheme://...) rather than a local path."""
    return isinstance(location, str) and bool(_URL_RE.match(location))


def open_store(location) -> Union["LocalStore", "FsspecStore"]:
    """The store rooted at a local path or an fsspec URL (ValueError when fsspec or its filesystem is missing)."""
    return FsspecStore(location) if is_url(location) else LocalStore(location)


class LocalStore:
    """A folder on this machine (or a shared filesystem mounted at the same path on every worker)."""

    def __init__(self, root):
        self.root = Path(root)
        self.location = str(self.root)
        self._real: Optional[dict[str, str]] = None

    def child(self, name: str) -> "LocalStore":
        return LocalStore(self.root / name)

    def ensure_writable(self) -> str:
        """Create the folder; ValueError when it cannot be written. Returns its absolute location."""
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"output folder {self.root} is a file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"output folder {self.root} cannot be written: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ValueError(f"output folder {self.root} cannot be written")
        return str(self.root.resolve())

    def holds(self, rel) -> bool:
        """Whether the relative path `rel` names something inside this folder, symbolic links followed."""
        if not _relative(rel):
            return False
        if self._real is None:
            self._real = {"": os.path.realpath(self.root)}
        base = self._real[""]
        head, _, name = rel.rpartition("/")
        if head not in self._real:  # a stack names files in a handful of sub-folders: each resolved once
            self._real[head] = os.path.realpath(os.path.join(base, head))
        path = os.path.join(self._real[head], name)
        if os.path.islink(path):
            path = os.path.realpath(path)
        return path.startswith(base.rstrip(os.sep) + os.sep)

    def read_text(self, rel: str) -> Optional[str]:
        path = self.root / rel
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def size(self, rel: str) -> int:
        """Bytes in the file, or -1 when it is not there (or not a file)."""
        try:
            info = os.stat(os.path.join(self.root, rel))
        except (OSError, ValueError):
            return -1
        return info.st_size if stat.S_ISREG(info.st_mode) else -1

    def open_binary(self, rel: str) -> IO[bytes]:
        return open(self.root / rel, "rb")

    def replace_text(self, rel: str, text: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def append_line(self, rel: str, line: str) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def list(self, rel: str, suffix: str) -> list[str]:
        """Names of the files in the sub-folder `rel` that end with `suffix`, sorted."""
        folder = self.root / rel
        return sorted(p.name for p in folder.glob(f"*{suffix}") if p.is_file()) if folder.is_dir() else []

    def check_target(self, rel: str) -> None:
        """ValueError unless the sub-folder `rel` may take a stack: new, empty or a Layercake output (see
        pipeline.check_output_folder)."""
        from .pipeline import check_output_folder

        check_output_folder(self.root / rel)

    def write_stack(self, result, rel: str) -> None:
        from .pipeline import write_outputs

        write_outputs(result, self.root / rel)


class FsspecStore:
    """A folder behind an fsspec URL."""

    def __init__(self, url: str):
        try:
            import fsspec
        except ImportError:
            raise ValueError(f"output {url} is a URL: install fsspec (and its filesystem's package)") from None
        try:
            self.fs, self.path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ValueError(f"cannot open output {url}: {exc}") from None
        self.location = url.rstrip("/")
        self._lines: dict[str, list[str]] = {}

    def child(self, name: str) -> "FsspecStore":
        return FsspecStore(f"{self.location}/{name}")

    def _p(self, rel: str) -> str:
        return f"{self.path.rstrip('/')}/{rel}" if rel else self.path

    def ensure_writable(self) -> str:
        probe = self._p(".write-probe")
        try:
            self.fs.makedirs(self.path, exist_ok=True)
            self.fs.pipe_file(probe, b"")
            self.fs.rm_file(probe)
        except (OSError, ValueError, PermissionError) as exc:
            raise ValueError(f"output {self.location} cannot be written: {exc}") from None
        return self.location

    def holds(self, rel) -> bool:
        """Whether the relative path `rel` names something inside this folder (object stores have no links)."""
        return _relative(rel)

    def read_text(self, rel: str) -> Optional[str]:
        try:
            return self.fs.cat_file(self._p(rel)).decode("utf-8")
        except FileNotFoundError:
            return None

    def size(self, rel: str) -> int:
        try:
            info = self.fs.info(self._p(rel))
        except FileNotFoundError:
            return -1
        return int(info.get("size") or 0) if info.get("type") != "directory" else -1

    def open_binary(self, rel: str) -> IO[bytes]:
        return self.fs.open(self._p(rel), "rb")

    def replace_text(self, rel: str, text: str) -> None:
        # One object written whole: readers see the old text or the new one.
        self.fs.pipe_file(self._p(rel), text.encode("utf-8"))

    def append_line(self, rel: str, line: str) -> None:
        # Objects cannot be appended to: each worker owns its log and writes all of it again.
        if rel not in self._lines:  # the same worker name in an earlier batch of this process: keep its lines
            self._lines[rel] = (self.read_text(rel) or "").splitlines()
        lines = self._lines[rel]
        lines.append(line)
        self.replace_text(rel, "\n".join(lines) + "\n")

    def list(self, rel: str, suffix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._p(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(name.rsplit("/", 1)[-1] for name in entries if name.endswith(suffix))

    def check_target(self, rel: str) -> None:
        """ValueError unless the sub-folder `rel` may take a stack: missing, empty, or holding only the files a
        stack upload writes (an upload cut short has no manifest yet) and, when there, a manifest of ours."""
        base = self._p(rel).rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        where = f"output {self.location}/{rel}"
        prefix = self.fs._strip_protocol(base).rstrip("/") + "/"
        for name in found:
            inner = self.fs._strip_protocol(name)[len(prefix):]
            if not _STACK_FILE.match(inner):
                raise ValueError(f"{where} holds {inner}, which Layercake did not write; choose a new or empty folder")
        text = self.read_text(f"{rel}/manifest.json")
        if text is not None and not _is_manifest(text):
            raise ValueError(f"{where} is not a Layercake output: its manifest.json is not ours; choose a new or "
                             f"empty folder")

    def write_stack(self, result, rel: str) -> None:
        from .pipeline import write_outputs

        staging = Path(tempfile.mkdtemp(prefix="layercake-upload-"))
        try:
            write_outputs(result, staging / "stack")
            files = sorted(p for p in (staging / "stack").rglob("*") if p.is_file())
            target = self._p(rel)
            if self.fs.exists(f"{target}/manifest.json"):
                self.fs.rm_file(f"{target}/manifest.json")
            for path in sorted(files, key=lambda p: p.name == "manifest.json"):  # the manifest last
                remote = f"{target}/{path.relative_to(staging / 'stack').as_posix()}"
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
                self.fs.put_file(str(path), remote)
        except OSError as exc:
            raise ValueError(f"cannot upload to {self.location}/{rel}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
