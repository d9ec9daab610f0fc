"""Each bad input: one line naming what was wrong and the fix, exit status 2, nothing on disk
changed (no run directory, no report, no data file), and the check made before any data
loads or any benchmark runs."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_helpers import Outcome, snapshot

from bnlab.cli import checks

QUICK = ("--quick", "--no-progress", "--threads", "1")
TINY = ("--set", "num_batches=4", "--set", "num_conv_layers=2")

Cli = Callable[..., Outcome]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """A runs directory holding one finished quick deep-cnn run (bn, seed 0)."""
    from bnlab.cli.main import main

    out = tmp_path_factory.mktemp("finished") / "runs"
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(out)]
    assert main([*argv, "--data-dir", str(mnist_dir)]) == 0
    return out


def _refused(cli: Cli, root: Path, *argv: str) -> str:
    """Run ``argv``; assert exit 2, one line, and ``root`` unchanged; return the line."""
    before = snapshot(root)
    outcome = cli(*argv)
    line = outcome.error_line
    assert outcome.code == 2, outcome
    assert snapshot(root) == before
    return line


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (("learning_rate=abc",), "--set learning_rate=abc: config field 'learning_rate' is float"),
        (("batch_size=0",), "--set batch_size=0: DeepCNNConfig.batch_size must be >= 1; got 0"),
        (("learning_rate=-1",), "DeepCNNConfig.learning_rate must be > 0; got -1.0"),
        (("learning_rate=nan",), "DeepCNNConfig.learning_rate must be a finite number; got nan"),
        (("seed=5",), "--set seed=5 is not allowed: each run's seed comes from --seeds K"),
        (("hidden=3",), "unknown field of DeepCNNConfig 'hidden'"),
        (("checkpoint_every=-1",), "DeepCNNConfig.checkpoint_every must be >= 1; got -1"),
        (("batch_size=1000000000",), "DeepCNNConfig.batch_size must be <= 60000; got 1000000000"),
        (("filters_per_depth=0",), "DeepCNNConfig.filters_per_depth must be >= 1; got 0"),
        (("dense_units=0",), "DeepCNNConfig.dense_units must be >= 1; got 0"),
        (("bn_eps=0",), "DeepCNNConfig.bn_eps must be > 0; got 0.0"),
        (("bn_eps=-1",), "DeepCNNConfig.bn_eps must be > 0; got -1.0"),
        (("adam_eps=-1",), "DeepCNNConfig.adam_eps must be > 0; got -1.0"),
        (("bn_decay=1",), "DeepCNNConfig.bn_decay must lie in (0, 1); got 1.0"),
        (("norm=bm",), "DeepCNNConfig.norm must be one of bn, torch-bn, none"),
        (("placement=up",), "DeepCNNConfig.placement must be one of bn-relu"),
        (("num_threads=100000",), "DeepCNNConfig.num_threads must be <= 256; got 100000"),
    ],
)
def test_bad_config_values_are_refused_before_the_data_loads(
    cli: Cli, tmp_path: Path, sets: tuple[str, ...], expected: str
) -> None:
    # --data-dir names a directory without MNIST: reaching the data would be another error.
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["run", "deep-cnn", *QUICK, "--seeds", "2", "--out", str(tmp_path / "runs")]
    argv += [a for s in sets for a in ("--set", s)]
    line = _refused(cli, tmp_path, *argv, "--data-dir", str(empty))
    assert expected in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("experiment", "sets", "expected"),
    [
        ("sigmoid-mlp", ("pop_decay=1",), "SigmoidMLPConfig.pop_decay must lie in (0, 1)"),
        ("sigmoid-mlp", ("checkpoint_every=0",), "SigmoidMLPConfig.checkpoint_every must be >="),
        ("mlp-solver", ("activation=gelu",), "MLPSolverConfig.activation must be one of relu"),
        ("mlp-solver", ("adam_eps=0",), "MLPSolverConfig.adam_eps must be > 0"),
        ("image-fcn", ("kernel_size=4",), "ImageFCNConfig.kernel_size must be odd"),
        ("cifar-convnet", ("bn_eps=-1",), "CifarConvNetConfig.bn_eps must be > 0"),
        ("renorm-small-batch", ("r_max=0.5",), "RenormConfig.r_max must be >= 1"),
        ("precise-bn", ("bn_decay=0",), "PreciseBNConfig.bn_decay must lie in (0, 1)"),
    ],
)
def test_every_experiments_config_is_checked_when_parsed(
    cli: Cli, tmp_path: Path, experiment: str, sets: tuple[str, ...], expected: str
) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    argv = ["run", experiment, *QUICK, "--out", str(tmp_path / "runs")]
    argv += [a for s in sets for a in ("--set", s)]
    line = _refused(cli, tmp_path, *argv, "--data-dir", str(empty))
    assert expected in line
    assert not (tmp_path / "runs").exists()


def test_empty_variant_is_refused(cli: Cli, tmp_path: Path, mnist_dir: Path) -> None:
    for bad in ("", ",", "bn,,no-bn"):
        argv = ["run", "deep-cnn", "--variant", bad, *QUICK, "--out", str(tmp_path / "r")]
        line = _refused(cli, tmp_path, *argv, "--data-dir", str(mnist_dir))
        assert "--variant needs a name" in line and "Leave --variant out" in line
    line = _refused(cli, tmp_path, "reproduce", "--experiment", "", *QUICK, "--out", "x")
    assert "--experiment needs a name" in line


def test_out_naming_a_file_is_refused(cli: Cli, tmp_path: Path, mnist_dir: Path) -> None:
    (tmp_path / "afile").write_text("mine\n")
    for out in ("afile", "afile/runs"):
        argv = ["run", "deep-cnn", *QUICK, "--out", str(tmp_path / out)]
        line = _refused(cli, tmp_path, *argv, "--data-dir", str(mnist_dir))
        assert "expected a directory" in line and "choose another --out" in line


def test_out_in_an_unwritable_directory_is_refused(
    cli: Cli, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, for whom chmod 0o555 does not stop writes; a read-only mount
    # makes the probe file fail exactly like this.
    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(checks.tempfile, "mkstemp", read_only)
    argv = ["run", "deep-cnn", *QUICK, "--out", str(tmp_path / "runs")]
    line = _refused(cli, tmp_path, *argv, "--data-dir", str(mnist_dir))
    assert "cannot write in" in line and "Read-only file system" in line


def test_missing_data_dir_is_refused(cli: Cli, tmp_path: Path) -> None:
    argv = ["run", "deep-cnn", *QUICK, "--out", str(tmp_path / "runs")]
    line = _refused(cli, tmp_path, *argv, "--data-dir", str(tmp_path / "nope"))
    assert "--data-dir" in line and "does not exist" in line


@pytest.mark.parametrize("command", ["run deep-cnn", "reproduce"])
def test_jobs_below_one_is_refused(cli: Cli, tmp_path: Path, command: str) -> None:
    argv = [*command.split(), *QUICK, "--out", str(tmp_path / "runs"), "--jobs", "0"]
    line = _refused(cli, tmp_path, *argv)
    assert "--jobs must be >= 1; got 0" in line


def test_report_on_a_directory_without_runs_writes_nothing(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run\n")
    line = _refused(cli, tmp_path, "report", str(tmp_path))
    assert "holds no runs" in line
    assert not (tmp_path / "report.html").exists()


def test_bench_out_is_checked_before_benchmarking(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The benchmark is not even imported before --out passes its check.
    monkeypatch.setitem(sys.modules, "bnlab.bench.report", None)
    line = _refused(cli, tmp_path, "bench", "--quick", "--out", str(tmp_path))
    assert "is a directory; expected a file name" in line
    (tmp_path / "f").write_text("x")
    line = _refused(cli, tmp_path, "bench", "--quick", "--out", str(tmp_path / "f" / "b.json"))
    assert "lies under the file" in line


def test_a_changed_config_names_the_difference_and_the_fixes(
    cli: Cli, finished: Path, mnist_dir: Path
) -> None:
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--set", "batch_size=8"]
    line = _refused(cli, finished, *argv, "--out", str(finished), "--data-dir", str(mnist_dir))
    assert "batch_size: 64 -> 8" in line or "batch_size:" in line
    assert "--restart" in line and "--out" in line


def test_other_data_is_refused_for_a_finished_run(cli: Cli, finished: Path, tmp_path: Path) -> None:
    from bnlab.data import write_fake_mnist

    other = write_fake_mnist(tmp_path / "other", n_train=240, n_test=40, seed=2)
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(finished)]
    line = _refused(cli, finished, *argv, "--data-dir", str(other))
    assert "other data" in line and "NOT the published data" in line
    assert str(other.resolve()) in line and "--restart" in line


def test_an_unreadable_config_is_refused_and_restart_replaces_it(
    cli: Cli, finished: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    (runs / "deep-cnn" / "bn" / "seed-0" / "config.json").write_text("{not json")
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    line = _refused(cli, runs, *argv, "--data-dir", str(mnist_dir))
    assert "config.json" in line and "--restart" in line
    assert cli(*argv, "--data-dir", str(mnist_dir), "--restart").code == 0
    assert (runs / "deep-cnn" / "bn" / "seed-0" / "result.json").is_file()


def test_a_corrupt_checkpoint_is_one_line(
    cli: Cli, finished: Path, tmp_path: Path, mnist_dir: Path
) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    run = runs / "deep-cnn" / "bn" / "seed-0"
    (run / "result.json").unlink()  # an interrupted run: it must resume from the checkpoint
    (run / "checkpoints" / "train.pt").write_bytes(b"\x00garbage")
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    line = _refused(cli, runs, *argv, "--data-dir", str(mnist_dir))
    assert "train.pt: expected a bnlab checkpoint" in line and "--restart" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"format": 1}, "it lacks phase, step, num_steps"),
        ({"format": 1, "phase": "train", "step": "5"}, "it lacks num_steps"),
        (
            {
                "format": 1,
                "phase": "train",
                "step": 5,
                "num_steps": 12,
                "model": [],
                "optimizer": {},
                "sampler": {},
                "rng": {},
                "metrics_offset": 0,
                "elapsed_s": 0.0,
                "extra": {},
            },
            "its model is list, not a state dict",
        ),
    ],
)
def test_a_checkpoint_of_the_wrong_shape_is_one_line(
    cli: Cli, finished: Path, tmp_path: Path, mnist_dir: Path, content: dict, expected: str
) -> None:
    import torch

    runs = tmp_path / "runs"
    shutil.copytree(finished, runs)
    run = runs / "deep-cnn" / "bn" / "seed-0"
    torch.save(content, run / "checkpoints" / "train.pt")
    outcome = cli("doctor", str(run))  # rebuilds the trained model from the checkpoint
    assert outcome.code == 2 and expected in outcome.error_line
    (run / "result.json").unlink()  # an interrupted run: the resume reads the checkpoint
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(runs)]
    line = _refused(cli, runs, *argv, "--data-dir", str(mnist_dir))
    assert "train.pt: expected a bnlab checkpoint, but " + expected in line
    assert "--restart" in line


def test_a_full_disk_names_the_real_error(
    cli: Cli, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from bnlab.train import io

    real_fsync = io.os.fsync
    calls = {"n": 0}

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 3:  # config, env and data are written; the disk fills while training
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(io.os, "fsync", fsync)
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, *TINY, "--out", str(tmp_path / "r")]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    assert outcome.code == 2
    line = outcome.error_line
    assert "No space left on device" in line and "free disk space" in line
    assert "Pytorch" not in line and "serializ" not in line.lower()
    # The file that could not be written is named (the failing fsync named none).
    assert f"No space left on device: {tmp_path / 'r' / 'deep-cnn' / 'bn' / 'seed-0'}/" in line


def test_debug_shows_the_traceback(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = cli("--debug", "run", "deep-cnn", *QUICK, "--set", "batch_size=0")
    assert outcome.code == 2 and "Traceback" in outcome.err
    monkeypatch.setenv("BNLAB_DEBUG", "1")
    outcome = cli("run", "deep-cnn", *QUICK, "--set", "batch_size=0")
    assert outcome.code == 2 and "Traceback" in outcome.err


def test_jobs_above_the_cores_are_lowered_with_a_note(
    cli: Cli, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnlab.experiments import scheduler

    asked: list[int] = []

    def run_all(*args: object, jobs: int, **kwargs: object) -> tuple[list[object], dict]:
        asked.append(jobs)
        return [], {}

    monkeypatch.setattr(scheduler, "run_all", run_all)
    (tmp_path / "r").mkdir()  # what the (here skipped) runs would have made
    argv = ["run", "deep-cnn", *QUICK, *TINY, "--out", str(tmp_path / "r"), "--jobs", "1000"]
    outcome = cli(*argv, "--data-dir", str(mnist_dir))
    cores = scheduler.available_cores()
    assert outcome.code == 0 and asked == [cores]
    assert f"--jobs 1000: lowered to {cores}, the CPU cores this process may use" in outcome.err


@pytest.mark.skipif(sys.platform != "linux", reason="file-descriptor limits and /proc")
def test_a_group_of_many_seeds_stays_within_the_open_file_limit(
    tmp_path: Path, mnist_dir: Path
) -> None:
    import resource
    import subprocess

    def limit() -> None:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )

    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "bnlab", "run", "sigmoid-mlp", "--variant", "bn", *QUICK]
    argv += ["--seeds", "40", "--jobs", "1", "--out", str(out), "--data-dir", str(mnist_dir)]
    for field in ("num_steps=4", "eval_every=2", "checkpoint_every=2", "log_every=2"):
        argv += ["--set", field]
    # 40 seeds of one variant are one group: one open lock file each, under `ulimit -n 40`.
    done = subprocess.run(argv, preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("sigmoid-mlp/bn/seed-*/result.json"))) == 40
