"""The environment of a run (versions, threads, machine, git revision) for ``env.json``."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bnlab
from bnlab.train import distributed as data_parallel
from bnlab.train import memory


def git_revision(directory: str | Path | None = None) -> dict[str, Any]:
    """Return ``{"revision": sha or None, "dirty": bool or None}`` of the bnlab source tree.

    ``None`` values mean git or the repository is not available (an installed wheel);
    that is recorded, not an error.
    """
    where = Path(directory) if directory is not None else Path(bnlab.__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": sha or None, "dirty": bool(status.strip())}


_PROCESS_GIT: dict[str, Any] | None = None


def process_git_revision() -> dict[str, Any]:
    """:func:`git_revision` taken once per process, at the first call.

    The code a process runs is the code it imported when it started; a long
    ``bnlab reproduce`` must not record a later revision because the tree moved under it.
    """
    global _PROCESS_GIT
    if _PROCESS_GIT is None:
        _PROCESS_GIT = git_revision()
    return dict(_PROCESS_GIT)


def adopt_process_git_revision(record: dict[str, Any]) -> None:
    """Make ``record`` (the parent's :func:`process_git_revision`) this process's revision: a
    worker the job spawned runs the parent's code, whatever the tree holds by then."""
    global _PROCESS_GIT
    _PROCESS_GIT = dict(record)


def capture_environment() -> dict[str, Any]:
    """Return a JSON-ready description of the software and machine running now."""
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bnlab": bnlab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # glibc keeps freed memory for reuse (train/memory.py): fewer page faults per step
        "malloc_settings": dict(memory.MALLOC_SETTINGS) if memory.tuned() else None,
        "argv": list(sys.argv),
        "git": process_git_revision(),
        "data_parallel": data_parallel.current().describe(),  # world size, backend, sync_bn
    }
