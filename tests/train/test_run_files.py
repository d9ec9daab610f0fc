"""Atomic writes, the metrics log (torn lines, truncation, duplicates) and checkpoints."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from bnlab.train import (
    Checkpoint,
    MetricsLog,
    RunDir,
    capture_rng_state,
    read_json,
    read_metrics,
    restore_rng_state,
    write_json_atomic,
)
from bnlab.train.io import atomic_open


def test_failed_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"{partial")
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    # Readable like a file written with open() (mkstemp alone would leave it 0600).
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_metrics_log_truncates_and_reader_drops_a_torn_line(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl")
    log.extend({"tag": "train", "step": s, "loss": 1.0 / s} for s in (1, 2))
    offset = log.flush(fsync=True)
    log.append({"tag": "train", "step": 3, "loss": 0.3})
    log.flush()
    log.truncate(offset)
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2]  # type: ignore[arg-type]
    with open(tmp_path / "m.jsonl", "ab") as handle:
        handle.write(b'{"tag": "train", "st')
    with pytest.warns(UserWarning, match="torn last line"):
        assert len(read_metrics(tmp_path / "m.jsonl")) == 2
    with pytest.raises(ValueError, match="cannot truncate"):
        log.truncate(10**9)


def test_reader_keeps_the_last_of_duplicate_records(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"phase":"a","tag":"v","step":1,"x":1}\n{"phase":"a","tag":"v","step":2,"x":2}\n'
        '{"phase":"a","tag":"v","step":1,"x":9}\n'
    )
    assert [r["x"] for r in read_metrics(path)] == [9, 2]
    path.write_text('not json\n{"tag":"v","step":1}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:1"):
        read_metrics(path)


def test_record_without_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="'tag' and 'step'"):
        MetricsLog(None).append({"tag": "x"})


def test_checkpoint_round_trip_restores_the_generators(tmp_path: Path) -> None:
    torch.manual_seed(3)
    random.seed(4)
    state = capture_rng_state()
    expected = (torch.rand(3), random.random())
    ckpt = Checkpoint("train", 5, 10, {"w": torch.ones(2)}, {}, {"pos": 7}, state, 42, 1.5)
    ckpt.save(tmp_path / "c.pt")
    loaded = Checkpoint.load(tmp_path / "c.pt")
    assert (loaded.step, loaded.metrics_offset, loaded.sampler, loaded.finished) == (
        5,
        42,
        {"pos": 7},
        False,
    )
    restore_rng_state(loaded.rng)
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_corrupt_or_foreign_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pass --restart"):
        Checkpoint.load(tmp_path / "bad.pt")
    torch.save({"format": 999}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format 1, found 999"):
        Checkpoint.load(tmp_path / "old.pt")


def test_run_dir_marks_completion_last(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert not run.is_complete
    run.write_artefact("a.bin", b"xyz")
    run.write_result({"acc": 0.5}, wall_time_s=1.0)
    assert run.is_complete and run.read_result()["metrics"] == {"acc": 0.5}
    assert (run.artefacts / "a.bin").read_bytes() == b"xyz"
    with pytest.raises(ValueError, match="plain file name"):
        run.checkpoint_path("../x")
