"""One process per run directory: a second process is refused at once, naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fault_helpers import Outcome, snapshot

from bnlab.experiments.runner import run_path
from bnlab.train.lock import lock_path, run_lock

Cli = Callable[..., Outcome]


def test_a_held_run_is_refused_with_the_holders_pid(
    cli: Cli, tmp_path: Path, mnist_dir: Path
) -> None:
    out = tmp_path / "runs"
    run = run_path(out, "deep-cnn", "bn", 0)
    argv = ["run", "deep-cnn", "--variant", "bn", "--quick", "--no-progress", "--out", str(out)]
    argv += ["--set", "num_batches=4", "--set", "num_conv_layers=2"]
    # flock locks belong to open files: this process holding one refuses its own second open,
    # exactly as it refuses another process.
    with run_lock(run):
        before = snapshot(out)
        outcome = cli(*argv, "--data-dir", str(mnist_dir))
        assert outcome.code == 2
        line = outcome.error_line
        assert f"another bnlab process (PID {os.getpid()})" in line
        assert "wait for it to finish" in line
        assert snapshot(out) == before  # nothing trained, no log interleaved
    # Released: the run trains, and a later run of the same command skips it.
    assert cli(*argv, "--data-dir", str(mnist_dir)).code == 0
    assert (run / "result.json").is_file()
    assert not lock_path(run).read_text().strip()  # the PID is cleared on release


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    run = tmp_path / "exp" / "v" / "seed-0"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from bnlab.train.lock import run_lock\n"
            f"with run_lock({str(run)!r}):\n"
            "    print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        try:
            with run_lock(run):
                raise AssertionError("the lock was granted twice")
        except Exception as exc:
            assert f"PID {holder.pid}" in str(exc)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with run_lock(run):  # SIGKILL released it: no stale lock
        pass
