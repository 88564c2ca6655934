"""Run directories that cannot destroy anything else, with one writer each.

* A run directory holds a marker file (:data:`MARKER`); ``--force`` replaces
  only marked directories and refuses anything else, saying why.
* One writer per run directory: an ``fcntl.flock`` on a hidden sibling lock
  file (``.<name>.lock``) is held while a command writes the run. A second
  writer gets one line naming the holder's PID. The kernel drops the lock of
  a killed process, so a lock file left by ``kill -9`` is taken over.
* Replacing a run is a transaction: the old run is renamed to a hidden
  sibling (``.<name>.replaced-<pid>``) and the command writes a fresh
  directory; when it finishes, the new run is marked and the aside copy
  deleted if the new run holds results, or what the command created is
  removed and the old run restored if it holds none (a failed start leaves
  nothing behind and blocks no retry). What a killed command left is settled
  the same way by the next writer of that directory.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from frugalnn.errors import UserError

__all__ = [
    "MARKER",
    "USER_ERRNOS",
    "RunDir",
    "finish_all",
    "finish_run",
    "has_results",
    "is_run_dir",
    "mark_run",
    "open_run",
    "os_error_message",
]

#: Marks a directory written by frugalnn; ``--force`` replaces nothing else.
MARKER = ".frugalnn-run"
MARKER_FORMAT = "frugalnn-run"
#: Files a command writes before it has produced anything (not results).
NOT_RESULTS = frozenset({MARKER, "config.json"})

_ACTIVE: dict[Path, RunDir] = {}


#: I/O errors caused by the user's machine, reported in one line rather than a traceback.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                         errno.ENOTDIR, errno.EEXIST})


def os_error_message(exc: OSError, what: str) -> str:
    """One line for an I/O failure the user can fix (disk full, read-only, permissions)."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a path component is a file, not a directory",
        errno.EEXIST: "a file of that name already exists",
    }
    reason = reasons.get(exc.errno or -1, exc.strerror or type(exc).__name__)
    return f"cannot {what}: {reason}"


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory marked as a frugalnn run."""
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text()).get("format") == MARKER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def mark_run(path: str | os.PathLike[str], command: str | None = None) -> None:
    """Write the marker of a frugalnn run into the directory ``path``."""
    from frugalnn.utils.io import write_json_atomic

    write_json_atomic(Path(path) / MARKER, {
        "format": MARKER_FORMAT, "version": 1, "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
    })


def has_results(path: Path) -> bool:
    """Whether run ``path`` holds anything beyond its marker and config (a started run)."""
    try:
        return any(p.name not in NOT_RESULTS and not p.name.startswith(".")
                   for p in path.iterdir())
    except OSError:
        return False


def _lock_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _aside_dirs(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.replaced-*"), key=lambda p: p.stat().st_mtime)


class RunDir:
    """One command's hold on a run directory: its lock and, under ``--force``,
    the replaced run kept aside until the new one holds results."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.aside: Path | None = None
        self.created = False
        self.fresh = False  # a new run (not a resumed one): undone if it writes no results
        self.command: str | None = None
        self.stale_pid: str | None = None  # the PID in a lock file a killed writer left
        self._fd: int | None = None

    # -- lock
    def lock(self) -> None:
        import fcntl

        path = _lock_file(self.out)
        for _ in range(20):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(os_error_message(exc, f"create run directory {self.out}")) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(
                    f"{self.out} is being written by another frugalnn process (PID {holder}); "
                    "wait for it to finish or choose another --out") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not unlinked by a holder that released it meanwhile
                self.stale_pid = os.pread(fd, 64, 0).decode(errors="replace").strip() or None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return
            os.close(fd)
        raise UserError(f"could not lock {self.out}; another process keeps replacing its lock")

    def unlock(self) -> None:
        if self._fd is None:
            return
        _lock_file(self.out).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    # -- transaction
    def recover(self) -> None:
        """Settle what a killed command left: mark the run it was writing (its lock file
        is still there), restore or drop the aside copies."""
        out = self.out
        if self.stale_pid and out.is_dir() and not is_run_dir(out) and has_results(out):
            mark_run(out, f"(left by process {self.stale_pid}, which was killed)")
        for aside in _aside_dirs(self.out):
            if not self.out.exists() or (is_run_dir(self.out) and not has_results(self.out)):
                if self.out.exists():
                    shutil.rmtree(self.out)
                os.replace(aside, self.out)
            else:
                shutil.rmtree(aside, ignore_errors=True)

    def replace(self, force: bool, empty_ok: bool, command: str | None,
                taken: str | None = None) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a directory; choose another --out")
        busy = out.exists() and (not empty_ok or any(out.iterdir()))
        if busy and not force:
            raise UserError(taken or f"{out} already exists; pass --force to overwrite it or "
                            "choose another --out")
        if out.exists() and any(out.iterdir()):
            if not is_run_dir(out):
                raise UserError(
                    f"refusing to replace {out}: it is not a frugalnn run directory (no {MARKER}"
                    " marker), so --force would delete files frugalnn did not write; "
                    "choose another --out")
            self.aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.replace(out, self.aside)
        self.created = not out.exists()
        self.fresh = True
        self.command = command

    def finish(self) -> None:
        """Keep (and mark) the new run if it holds results, dropping the replaced one;
        else remove what the command created and restore the replaced run."""
        out = self.out
        try:
            if out.is_dir() and has_results(out):
                if not is_run_dir(out):
                    mark_run(out, self.command)
                if self.aside is not None:
                    shutil.rmtree(self.aside, ignore_errors=True)
            elif self.fresh:  # a resumed run is never removed
                if self.created:
                    shutil.rmtree(out, ignore_errors=True)
                elif out.is_dir():  # a directory the user made empty: leave it empty
                    (out / MARKER).unlink(missing_ok=True)
                    (out / "config.json").unlink(missing_ok=True)
                if self.aside is not None:
                    if out.is_dir() and not any(out.iterdir()):
                        out.rmdir()
                    os.replace(self.aside, out)
            self.aside = None
        finally:
            self.unlock()


def open_run(out: str | os.PathLike[str], *, force: bool = False, empty_ok: bool = True,
             resume: bool = False, command: str | None = None,
             taken: str | None = None) -> RunDir:
    """Lock run directory ``out`` for this process and prepare it.

    New run: refuse an existing non-empty ``out`` without ``force`` (message
    ``taken`` if given) and, with it, anything not marked as a frugalnn run;
    a marked run is set aside until :func:`finish_run`. ``resume``: the run is
    kept as it is. The hold ends with
    :func:`finish_run`, or when the process exits.
    """
    path = Path(out).absolute()
    previous = _ACTIVE.pop(path, None)
    if previous is not None:  # the same process opens it again: settle the first hold
        previous.finish()
    run = RunDir(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_message(exc, f"create run directory {path}")) from None
    run.lock()
    try:
        run.recover()
        if not resume:  # a resumed run is marked by its command once it is checked
            run.replace(force, empty_ok, command, taken)
        run.command = command
    except UserError:
        run.unlock()
        raise
    except OSError as exc:
        run.finish()
        raise UserError(os_error_message(exc, f"prepare run directory {path}")) from None
    except BaseException:
        run.finish()
        raise
    _ACTIVE[path] = run
    return run


def finish_run(out: str | os.PathLike[str]) -> None:
    """End this process's hold on ``out`` (see :meth:`RunDir.finish`); no-op if none."""
    run = _ACTIVE.pop(Path(out).absolute(), None)
    if run is not None:
        run.finish()


def finish_all() -> None:
    """End every hold of this process (the CLI calls it when a command returns)."""
    for path in list(_ACTIVE):
        finish_run(path)


def active_runs() -> dict[Path, Any]:
    """The run directories this process holds (for tests and diagnostics)."""
    return dict(_ACTIVE)


atexit.register(finish_all)


def check_run_dir(out: str | os.PathLike[str], force: bool) -> Path:
    """``out`` as a path, refused (unless ``force``) when it already holds results; creates
    nothing, so a recipe can check before it trains and write only once it has a model."""
    path = Path(out)
    if path.exists() and has_results(path) and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it or choose "
                        "another --out")
    return path


def prepare_run_dir(out: str | os.PathLike[str], force: bool) -> Path:
    """The directory a recipe writes its run into: created if missing; one that already
    holds results is refused unless ``force`` (the CLI has opened and locked it with
    :func:`open_run` before; a recipe called from Python gets the same refusal)."""
    path = check_run_dir(out, force)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_record(config: Any, splits: Any, run_config: dict[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
    """A recipe run's ``config.json``: the caller's ``run_config`` (e.g. the command's
    flags), the recipe config (a dataclass), the sizes of the splits and how the
    validation split was made, and any further ``fields``."""
    from dataclasses import asdict

    record: dict[str, Any] = dict(run_config or {})
    record["recipe"] = asdict(config)
    record["splits"] = {"train": len(splits.train), "test": len(splits.test),
                        "validation": getattr(splits, "val_spec", None)}
    record.update(fields)
    return record
