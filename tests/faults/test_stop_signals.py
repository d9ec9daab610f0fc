"""A job of ``--jobs N`` stopped from outside (what ``timeout``, systemd, ``docker stop`` and
a CI cancel send) leaves nothing running: on SIGTERM or SIGHUP the parent stops its workers
and exits; on SIGKILL the workers notice their parent's death and exit. Either way every
lock is free for the rerun and every checkpoint loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnlab.experiments.runner import run_path
from bnlab.experiments.scheduler import Stopped, stop_on_signals
from bnlab.train.checkpoint import Checkpoint
from bnlab.train.lock import RunLockedError, lock_path, run_lock

VARIANTS = ("bn", "no-bn")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _free(run: Path) -> bool:
    """Whether the run's lock can be taken (and it is released again)."""
    try:
        with run_lock(run):
            return True
    except RunLockedError:
        return False


def _holder(run: Path) -> int | None:
    try:
        text = lock_path(run).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_job_leaves_no_worker_and_no_held_lock(
    tmp_path: Path, mnist_dir: Path, signum: int
) -> None:
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "bnlab", "run", "deep-cnn", "--variant", ",".join(VARIANTS)]
    argv += ["--jobs", "2", "--quick", "--no-progress", "--threads", "1"]
    argv += ["--data-dir", str(mnist_dir), "--out", str(out)]
    # Long enough never to finish here; a checkpoint every 5 steps.
    argv += ["--set", "num_batches=1000000", "--set", "num_conv_layers=1"]
    argv += ["--set", "checkpoint_every=1"]
    runs = [run_path(out, "deep-cnn", v, 0) for v in VARIANTS]
    # stderr to a file: a worker that outlived its parent would hold a pipe open forever.
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        parent = subprocess.Popen(argv, stderr=stderr, stdout=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        # SIGKILL: wait for a checkpoint to see it intact afterwards; SIGTERM: for the locks.
        marker = "checkpoints/train.pt" if signum == signal.SIGKILL else "config.json"
        _wait(lambda: all((r / marker).is_file() for r in runs), 120, f"both runs' {marker}")
        workers = [pid for pid in map(_holder, runs) if pid is not None]
        assert len(workers) == 2 and parent.pid not in workers, workers
        parent.send_signal(signum)
        parent.wait(timeout=30)
        # A process is gone once its last thread has exited (the main thread may be a
        # zombie a moment before the others): until then its lock may still be held.
        _wait(
            lambda: not any(map(_alive, workers)) and all(map(_free, runs)),
            10,
            "the workers to exit and their locks to be free",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in workers:  # never leave one behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    err = log.read_text()
    if signum == signal.SIGTERM:
        assert parent.returncode == 128 + signum, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines[-1] == "bnlab run: stopped by SIGTERM; rerun the same command to resume"
        assert "Traceback" not in err
    for run in runs:
        if signum == signal.SIGKILL:
            assert Checkpoint.load(run / "checkpoints" / "train.pt").step >= 1
        assert not (run / "result.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_job_as_ctrl_c_does(signum: int) -> None:
    # Start from the default disposition: under nohup SIGHUP arrives ignored, and an
    # ignored signal stays ignored (tested below).
    inherited = signal.signal(signum, signal.SIG_DFL)
    try:
        with pytest.raises(Stopped) as stopped, stop_on_signals():
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises in this thread at once
        assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.signum == signum
        assert signal.getsignal(signum) is signal.SIG_DFL  # restored
    finally:
        signal.signal(signum, inherited)


def test_an_ignored_hangup_stays_ignored() -> None:
    inherited = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, inherited)
