"""End to end through the CLI on synthetic MNIST: run, rerun, report, reproduce, errors, kill."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bnlab.cli.main import main
from bnlab.data import write_fake_mnist
from bnlab.train import read_metrics


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    # --threads sets a process-wide torch option; give the rest of the suite its own back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=240, n_test=40, seed=1)


def _run(*argv: str) -> int:
    return main([*argv, "--no-progress", "--threads", "1"])


def test_quick_run_report_and_rerun(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    args = ("run", "deep-cnn", "--quick", "--variant", "no-bn,bn", "--seeds", "2")
    assert _run(*args, "--out", str(out), "--data-dir", str(mnist_dir)) == 0
    printed = capsys.readouterr().out
    assert "test acc." in printed and "no-bn" in printed and "2/2" in printed

    run = out / "deep-cnn" / "bn" / "seed-1"
    for name in ("config.json", "env.json", "metrics.jsonl", "result.json", "checkpoints/train.pt"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert (config["experiment"], config["variant"], config["seed"], config["quick"]) == (
        "deep-cnn",
        "bn",
        1,
        True,
    )
    assert config["config"]["norm"] == "bn" and config["config"]["bn_eps"] == 1e-3
    env = json.loads((run / "env.json").read_text())
    assert env["torch_threads"] == 1 and "revision" in env["git"]  # --threads 1 held
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["tag"] == "train"] == list(range(1, 13))
    # Validation after batch_i 0, 5, 10 (steps 1, 6, 11) and the final one at step 12.
    assert [r["step"] for r in records if r["tag"] == "validation"] == [1, 6, 11, 12]
    assert [r["step"] for r in records if r["tag"] == "train_batch"] == [
        3,
        5,
        7,
        9,
    ]  # batch_i 2, 4, 6, 8
    metrics = json.loads((run / "result.json").read_text())["metrics"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["single_batched_agreement"] == 1.0
    predictions = json.loads((run / "artefacts" / "first_test_predictions.json").read_text())
    assert len(predictions["one_at_a_time"]) == 10

    # A rerun of the same command skips the finished runs (no new records, same result).
    before = (run / "metrics.jsonl").read_bytes()
    assert _run(*args, "--out", str(out), "--data-dir", str(mnist_dir)) == 0
    assert "already finished" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == before

    # The report, built twice from the run directories, gives identical files.
    assert main(["report", str(out)]) == 0
    first = {n: (out / n).read_bytes() for n in ("report.html", "report.md", "report.json")}
    assert main(["report", str(out), "--out", str(tmp_path / "again")]) == 0
    assert main(["report", str(out)]) == 0
    for name, data in first.items():
        assert (out / name).read_bytes() == data, name
    assert (tmp_path / "again" / "report.json").read_bytes() == first["report.json"]
    html = first["report.html"].decode()
    assert html.count('<img src="data:image/png;base64,') >= 3
    png = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    tables = json.loads(first["report.json"])["tables"]
    final = next(t for t in tables if t["caption"].startswith("Final metrics"))
    assert [row[0] for row in final["rows"]] == ["no-bn", "bn"]
    assert "--quick runs" in first["report.md"].decode()


def test_reproduce_records_missing_data_and_writes_the_report(
    mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The suite here: deep-cnn, and an experiment whose data are missing (as CIFAR-10 is on
    # these machines). reproduce must run the first, record the second, write the report.
    from bnlab.errors import BnlabError
    from bnlab.experiments import registry
    from bnlab.experiments.deep_cnn import SPEC

    def no_cifar(data_dir: Path | None, progress: bool) -> None:
        raise BnlabError("CIFAR-10 not found in the cache; download it and pass --data-dir DIR")

    monkeypatch.setattr(registry, "BUILTIN", {"deep-cnn": registry.BUILTIN["deep-cnn"]})
    monkeypatch.setitem(
        registry._REGISTERED,
        "needs-cifar",
        dataclasses.replace(SPEC, name="needs-cifar", load_data=no_cifar),
    )

    out = tmp_path / "runs"
    assert (
        _run(
            "reproduce", "--quick", "--seeds", "1", "--out", str(out), "--data-dir", str(mnist_dir)
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "not run (see the report for why and what to do): needs-cifar" in captured.out
    assert len(list((out / "deep-cnn").glob("*/seed-0/result.json"))) == 6
    assert (
        "download it and pass --data-dir"
        in json.loads((out / "needs-cifar" / "not-run.json").read_text())["reason"]
    )
    md = (out / "report.md").read_text()
    assert "NOT RUN. CIFAR-10 not found in the cache; download it and pass --data-dir DIR" in md
    assert "| deep-cnn | 6/6 runs finished |" in md

    # With no data at all, deep-cnn is recorded as not run too, and the report still appears.
    empty = tmp_path / "empty"
    empty.mkdir()
    out2 = tmp_path / "runs2"
    assert (
        _run(
            "reproduce",
            "--quick",
            "--experiment",
            "deep-cnn",
            "--out",
            str(out2),
            "--data-dir",
            str(empty),
        )
        == 0
    )
    reason = json.loads((out2 / "deep-cnn" / "not-run.json").read_text())["reason"]
    assert str(empty) in reason and str(empty) in (out2 / "report.md").read_text()


def test_user_errors_exit_2_with_the_valid_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run("run", "deep-cn", "--out", str(tmp_path)) == 2
    assert "expected one of: deep-cnn" in capsys.readouterr().err
    assert _run("run", "deep-cnn", "--variant", "bm", "--out", str(tmp_path)) == 2
    assert "no-bn, bn, bn-lowlevel" in capsys.readouterr().err
    assert _run("run", "deep-cnn", "--set", "lr=0.1", "--out", str(tmp_path)) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert _run("run", "deep-cnn", "--seeds", "0", "--out", str(tmp_path)) == 2
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    assert "--seeds K" in capsys.readouterr().out


def test_changed_config_is_refused_unless_restart(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "runs")
    base = (
        "run",
        "deep-cnn",
        "--quick",
        "--variant",
        "bn",
        "--out",
        out,
        "--data-dir",
        str(mnist_dir),
    )
    assert _run(*base, "--set", "num_batches=4") == 0
    assert _run(*base, "--set", "num_batches=6") == 2
    assert "num_batches: 4 -> 6" in capsys.readouterr().err
    assert _run(*base, "--set", "num_batches=6", "--restart") == 0
    records = read_metrics(tmp_path / "runs" / "deep-cnn" / "bn" / "seed-0" / "metrics.jsonl")
    assert max(r["step"] for r in records) == 6


def _bnlab(*argv: str) -> subprocess.Popen[bytes]:
    # Fresh processes for every run of this test: torch's thread count (which the first
    # fused-kernel launch can change) must be the same in the runs being compared.
    cmd = [sys.executable, "-m", "bnlab", *argv, "--no-progress"]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _finish(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


def test_killed_run_resumes_to_the_uninterrupted_result(mnist_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a real `bnlab run` after its first checkpoint; the rerun finishes identically."""
    # A smaller network (6 conv layers, batches of 16) keeps the three processes fast.
    sizes = ("num_batches=30", "num_conv_layers=6", "batch_size=16")
    common = ["--quick", "--variant", "bn", "--data-dir", str(mnist_dir)]
    common += [arg for size in sizes for arg in ("--set", size)]
    reference = tmp_path / "reference"
    _finish(_bnlab("run", "deep-cnn", *common, "--out", str(reference)))

    out = tmp_path / "killed"
    run = out / "deep-cnn" / "bn" / "seed-0"
    proc = _bnlab("run", "deep-cnn", *common, "--out", str(out))
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "train.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists(), "the run finished before it could be killed"
    killed_at = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert 5 <= killed_at < 30

    _finish(_bnlab("run", "deep-cnn", *common, "--out", str(out)))
    assert not list(out.rglob("*.tmp"))
    got = json.loads((run / "result.json").read_text())
    want = json.loads((reference / "deep-cnn" / "bn" / "seed-0" / "result.json").read_text())
    assert got["sessions"] == 2
    for key, value in want["metrics"].items():
        if key != "train_time_s":
            assert got["metrics"][key] == value, key
    # No duplicated or lost records: the log equals the uninterrupted run's.
    ref_log = read_metrics(reference / "deep-cnn" / "bn" / "seed-0" / "metrics.jsonl")
    assert read_metrics(run / "metrics.jsonl") == ref_log
    assert len(json.loads((run / "env.json").read_text())["resumes"]) == 1
