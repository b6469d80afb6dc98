"""Writing files and folders so that a crash never leaves one that looks complete.

Three writers build whole folders (a converted model in the cache, a checkpoint, an export) and
two append to logs; they share these helpers:

* :func:`atomic_folder` builds a folder in a hidden temporary sibling (``.<name>.tmp-<pid>``)
  and renames it into place only when the block succeeds. A reader sees the old folder or the
  new one, never half of one; temporaries of processes that died are cleaned up next time.
* :func:`append_line` appends one line and, when asked, fsyncs it: a record reported written
  survives a power loss.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a process we may not signal is still a live process
        return True
    return True


def clean_stale_temporaries(folder: Path) -> None:
    """Remove the temporary folders (``.<name>.tmp-<pid>``, ``.<name>.old-<pid>``) that processes
    which are gone left in `folder`."""
    for tmp in Path(folder).glob(".*.*-*"):
        kind, _, pid = tmp.name.rpartition(".")[2].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_folder(path: Path) -> None:
    """Delete a folder so that it disappears at once: renamed aside first, then deleted (a crash
    mid-delete leaves a hidden temporary, never a half folder under its own name)."""
    doomed = Path(path).parent / f".{Path(path).name}.old-{os.getpid()}"
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def make_readable(folder: Path) -> None:
    """Permissions as the umask allows: some writers (safetensors) create 0600 files, but a
    model folder or cache is meant to be read by every user of the machine."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [Path(folder), *Path(folder).rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (and the folder itself)."""
    for path in [*Path(folder).rglob("*"), Path(folder)]:
        if path.is_dir() or path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(final: Path, *, replace: bool = True, readable: bool = False, durable: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it becomes `final`.

    `replace`: an existing `final` is replaced (moved aside, then deleted once the new one is in
    place, so a crash in between leaves the old one). With ``replace=False`` an existing `final`
    wins and the new folder is dropped (two processes building the same cache entry).
    `readable`: permissions as the umask allows (:func:`make_readable`). `durable`: everything
    is fsynced before and after the rename. On any error the temporary folder is removed and
    `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(final.parent)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if readable:
            make_readable(tmp)
        if durable:
            fsync_tree(tmp)
        if final.exists():
            if not replace:
                return
            os.replace(final, old)
        os.replace(tmp, final)
        if durable:
            fsync_dir(final.parent)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a small file's content all at once (written beside it, then renamed)."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def append_line(path: Path, line: str, durable: bool = False) -> None:
    """Append `line` and a newline in one write; fsync it when `durable`."""
    with open(path, "a") as f:
        f.write(line + "\n")
        if durable:
            f.flush()
            os.fsync(f.fileno())
