"""Output folders replaced all or nothing, and the staging folders a killed run leaves behind cleaned up.

A new folder is built beside the old one (`staging_folder`) and swapped in by `replace_folder`:

- on Linux with one atomic renameat2(RENAME_EXCHANGE): at every instant the folder's name holds either the whole
  old folder or the whole new one;
- elsewhere with two renames (old aside as `.NAME.PID-TOKEN.old`, new in): the old folder stays whole under its
  aside name until the new one is in place, and `clean_stale` puts it back if the process died in between.

Staging names are `.NAME.PID-TOKEN.tmp` / `.old`: `clean_stale` removes them when the process that made them is
gone (or, whoever made them, when they are older than STALE_AFTER_S), and nothing else.

`resolve_target` says, before any work, which folder a replacement really swaps (symbolic links followed, so a link
stays a link and the staging folder sits on the target's own file system) and refuses a folder that cannot be
swapped: a dangling link, a mount point, the current folder or one holding it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

STALE_AFTER_S = 3600.0
"""A staging folder whose process still seems alive (or cannot be told) is removed after this long."""

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]{12})\.(?P<kind>tmp|old)$")
# Staging folders named by earlier versions (tempfile.mkdtemp): no process id, so removed by age only.
_LEGACY = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")

_step_hook: Optional[Callable[[str], None]] = None
"""Called with the name of each step of replace_folder as it completes (the kill-at-every-step test sets it)."""


def resolve_target(out) -> Path:
    """The folder that replacing `out` really swaps, symbolic links followed; ValueError when it cannot be swapped.

    A link to a folder is followed and stays a link: the folder it points to is replaced, and its staging folder is
    made beside that folder, on that folder's file system (a rename never crosses file systems).

    Raises:
        ValueError: one line naming the problem: a link (anywhere on the path) to nothing, something that is not a
            folder, a mount point or the root, the current folder or one holding it, a parent that cannot be
            written.
    """
    out = Path(out)
    path = Path(os.path.abspath(out))
    for step in (path, *path.parents):
        if os.path.islink(step) and not os.path.exists(step):
            where = "" if step == path else f": {step}"
            raise ValueError(f"output folder {out}{where} is a link to {os.readlink(step)}, which does not exist")
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_dir():
        raise ValueError(f"output folder {out} is a file" if target.is_file() else
                         f"output folder {out} is not a folder")
    if target == target.parent or (target.exists() and os.path.ismount(target)):
        raise ValueError(f"output folder {out} is a mount point: a folder is replaced whole by a rename, which a "
                         f"mount point cannot take; choose a folder inside it")
    try:
        here = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was removed: nothing to protect
        here = None
    if here is not None and (target == here or target in here.parents):
        what = "is the current folder" if target == here else "holds the current folder"
        raise ValueError(f"output folder {out} {what}: it is replaced whole, which would leave this shell in a "
                         f"removed folder; run from outside it or choose another folder")
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {out} cannot be written ({parent or target.parent} is not a writable "
                         f"folder)")
    if target.exists() and not os.access(target, os.W_OK | os.X_OK):  # a folder is renamed only when writable
        raise ValueError(f"output folder {out} cannot be written")
    return target


def staging_folder(out: Path) -> Path:
    """Create an empty hidden staging folder beside `out` (links followed: beside the folder it points to), with
    the user's normal permissions (umask applies).

    Raises:
        OSError: the parent cannot be created or written.
    """
    target = Path(os.path.realpath(out))
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
    os.mkdir(path, 0o777)
    return path


def replace_folder(staging: Path, out: Path) -> None:
    """Put the complete folder `staging` in the place of `out` (created, or replaced whole); `staging` is gone after.

    A link to a folder is followed: the folder it points to is replaced and the link stays.

    Raises:
        OSError: a rename failed; `out` is then as it was before.
    """
    staging, out = Path(staging), Path(os.path.realpath(out))
    _step("staged")
    if not os.path.lexists(out):
        os.rename(staging, out)
        _step("moved-in")
        return
    if _exchange(staging, out):
        _step("exchanged")  # `staging` now holds the old folder (or the link that stood in its place)
        _remove(staging)
        _step("removed-old")
        return
    aside = staging.with_name(staging.name[: -len(".tmp")] + ".old")
    os.rename(out, aside)
    _step("moved-aside")
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(aside, out)
        raise
    _step("moved-in")
    _remove(aside)
    _step("removed-old")


def carry_over(old: Path, staging: Path, ours) -> None:
    """Bring into `staging` what the user added to the folder `old` (entries whose names are not in `ours`).

    Files are hard-linked where the file system allows it (else copied); symbolic links stay links.
    """
    for entry in os.scandir(old):
        if entry.name in ours or os.path.lexists(Path(staging) / entry.name):
            continue
        dest = Path(staging) / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.copytree(entry.path, dest, symlinks=True, copy_function=_link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry.path), dest)
        else:
            _link_or_copy(entry.path, dest)


def _link_or_copy(src, dest) -> None:
    try:
        os.link(src, dest, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dest, follow_symlinks=False)


def clean_stale(parent: Path, *, now: Optional[float] = None, max_age: float = STALE_AFTER_S) -> list[str]:
    """Remove the staging folders in `parent` that no running process is writing; restore an old folder set aside.

    A `.NAME.PID-TOKEN.*` folder is stale when process PID is gone, or when it is older than `max_age` seconds. A
    stale `.old` folder whose NAME is missing is the last complete folder of a run killed mid-swap: it is renamed
    back to NAME instead of removed.

    Args:
        parent: the folder holding output folders.
        now: the current time (seconds since the epoch); default time.time().
        max_age: age beyond which a staging folder is stale whatever its process.

    Returns:
        The names removed or restored.
    """
    now = time.time() if now is None else now
    done = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return done
    for entry in entries:
        match = _STAGING.match(entry.name)
        legacy = None if match else _LEGACY.match(entry.name)
        if not (match or legacy) or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        if not (age > max_age or (match and not _alive(int(match["pid"])))):
            continue
        target = Path(parent) / (match or legacy)["name"]
        try:
            if match and match["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry.path, target)
            else:
                shutil.rmtree(entry.path)
        except FileNotFoundError:
            continue  # another process cleaned it meanwhile
        except OSError:
            continue  # not ours to remove after all (permissions): leave it
        done.append(entry.name)
    return done


def _remove(path: Path) -> None:
    if os.path.islink(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _step(name: str) -> None:
    if _step_hook is not None:
        _step_hook(name)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE). False where the system cannot."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = getattr(libc, "renameat2", None)
        if func is None:
            _renameat2 = False
            return False
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        func.restype = ctypes.c_int
        _renameat2 = func
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # this file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


__all__ = ["STALE_AFTER_S", "carry_over", "clean_stale", "replace_folder", "resolve_target", "staging_folder"]
