"""One process per run directory: an exclusive OS lock (``fcntl.flock``) beside the run.

The lock file is ``<variant>/.seed-<k>.lock``, next to the run directory rather than in it,
so that ``--restart`` can delete the run directory while holding the lock. The holder
writes its PID into the file; a second process is refused at once with that PID. The OS
drops the lock when the holder exits, however it exits (SIGKILL included), so a stale lock
file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from bnlab.errors import BnlabError

__all__ = ["RunLockedError", "lock_path", "run_lock"]


class RunLockedError(BnlabError):
    """Another process holds the lock of this run directory (it is training it now).

    Attributes:
        pid: the holder's process id, or ``None`` when it could not be read.
    """

    def __init__(self, run_path: Path, pid: int | None) -> None:
        self.pid = pid
        holder = f"PID {pid}" if pid is not None else "PID unknown"
        super().__init__(
            f"{run_path} is being trained by another bnlab process ({holder}); wait for it to "
            "finish (rerunning this command then skips the finished run) or stop it, or pass "
            "--out DIR to train elsewhere"
        )


def lock_path(run_path: str | Path) -> Path:
    """``<parent>/.<name>.lock`` for the run directory ``run_path``."""
    p = Path(run_path)
    return p.parent / f".{p.name}.lock"


def _holder(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def run_lock(run_path: str | Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of ``run_path`` for the body; refuse at once if held.

    Args:
        enabled: ``False`` makes this a no-op (ranks other than 0 under data parallelism,
            which write nothing).

    Raises:
        RunLockedError: another process holds the lock (the message names its PID).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: unlocked, writes stay atomic
        enabled = False
    if not enabled:
        yield
        return
    path = lock_path(run_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(Path(run_path), _holder(path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
