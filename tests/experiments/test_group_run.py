"""Group runs: several seeds of sigmoid-mlp trained as one stacked model must leave every
run directory as the one-run-at-a-time path leaves it, bit for bit, whatever seeds share
the group, after an interruption, and when the group falls back to single runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.data import write_fake_mnist
from bnlab.experiments import get_experiment
from bnlab.experiments.scheduler import RunSettings, plan, run_all
from bnlab.train import FitResult, Trainer
from bnlab.train.group import GroupTrainer

VARIANTS = ["no-bn", "bn", "bn-population"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=600, n_test=100, seed=3)


def _train(out: Path, mnist_dir: Path, seeds: list[int], *, group: bool, **kw: Any) -> list[Any]:
    spec = get_experiment("sigmoid-mlp")
    requests = plan([spec], seeds, variants=kw.pop("variants", VARIANTS), quick=True, group=group)
    assert all(bool(r.seeds) == (group and len(seeds) > 1) for r in requests)
    settings = RunSettings(out_dir=out, quick=True, data_dir=mnist_dir)
    outcomes, not_run = run_all(requests, settings, jobs=1, progress=False, **kw)
    assert not_run == {}
    return outcomes


def _evidence(run: Path) -> dict[str, Any]:
    """What must not depend on how the run was trained: the metrics log (bytes), the final
    metrics (timings left out), the artefacts and the checkpoint's tensors."""
    result = json.loads((run / "result.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "train.pt", weights_only=True)
    out: dict[str, Any] = {
        "log": (run / "metrics.jsonl").read_bytes(),
        "metrics": {k: v for k, v in result["metrics"].items() if not k.endswith("_time_s")},
        "step": ckpt["step"],
        "offset": ckpt["metrics_offset"],
        "sampler": ckpt["sampler"],
        "optimizer": ckpt["optimizer"],
    }
    out.update({f"model/{k}": v for k, v in ckpt["model"].items()})
    for path in sorted((run / "artefacts").glob("*")):
        if path.suffix == ".pt":
            state = torch.load(path, weights_only=True)
            out.update({f"{path.name}/{k}": v for k, v in state.items()})
        else:
            out[path.name] = path.read_bytes()
    return out


def _assert_same(a: Path, b: Path) -> None:
    ea, eb = _evidence(a), _evidence(b)
    assert sorted(ea) == sorted(eb), b
    for key in ea:
        if isinstance(ea[key], torch.Tensor):
            assert torch.equal(ea[key], eb[key]), f"{b}: {key}"
        else:
            assert ea[key] == eb[key], f"{b}: {key}"


@pytest.fixture(scope="module")
def single(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    _train(out, mnist_dir, [0, 1, 2], group=False)
    return out


def _runs(out: Path, variant: str, seeds: list[int]) -> list[Path]:
    return [out / "sigmoid-mlp" / variant / f"seed-{s}" for s in seeds]


def test_a_group_trains_each_seed_bit_for_bit_as_alone(
    single: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    lines: list[str] = []
    outcomes = _train(tmp_path / "g", mnist_dir, [0, 1, 2], group=True, log=lines.append)
    assert [(o.variant, o.seed, o.status) for o in outcomes] == [
        (v, s, "done") for v in VARIANTS for s in (0, 1, 2)
    ]
    assert not any("one at a time" in line for line in lines), lines
    for variant in VARIANTS:
        for a, b in zip(
            _runs(single, variant, [0, 1, 2]),
            _runs(tmp_path / "g", variant, [0, 1, 2]),
            strict=True,
        ):
            _assert_same(a, b)
    # The time ledger is the group's, charged evenly.
    result = json.loads((tmp_path / "g/sigmoid-mlp/bn/seed-1/result.json").read_text())
    assert result["time_s"]["train_steps"] > 0 and result["sessions"] == 1


def test_a_seeds_result_does_not_depend_on_its_group(
    single: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    _train(tmp_path, mnist_dir, [2, 0], group=True, variants=["bn"])
    for a, b in zip(_runs(single, "bn", [2, 0]), _runs(tmp_path, "bn", [2, 0]), strict=True):
        _assert_same(a, b)


def _interrupt_after(
    monkeypatch: pytest.MonkeyPatch,
    stop_at: int,
    error: type[BaseException] = KeyboardInterrupt,
) -> None:
    """Make a group that starts from scratch raise ``error`` at its step ``stop_at``
    (after the step-60 checkpoint of the quick config)."""
    original = GroupTrainer.__init__

    def init(self: GroupTrainer, members: Any, step: Any, **kw: Any) -> None:
        count = [0]

        def counting(xs: Any, ys: Any) -> Any:
            count[0] += 1
            if count[0] > stop_at:
                raise error("the group broke")
            return step(xs, ys)

        original(self, members, counting, **kw)

    monkeypatch.setattr(GroupTrainer, "__init__", init)


def test_an_interrupted_group_resumes_together_or_alone(
    single: Path, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 70)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path, mnist_dir, [0, 1, 2], group=True, variants=["bn-population"])
    runs = _runs(tmp_path, "bn-population", [0, 1, 2])
    assert all(torch.load(r / "checkpoints/train.pt")["step"] == 60 for r in runs)
    # Seed 2 starts over: its checkpoint is at another step than the others', so the group
    # falls back to single runs, which resume from their own checkpoints.
    (runs[2] / "checkpoints/train.pt").unlink()
    lines: list[str] = []
    _train(tmp_path, mnist_dir, [0, 1, 2], group=True, variants=["bn-population"], log=lines.append)
    assert any("one at a time" in line for line in lines), lines
    for a, b in zip(_runs(single, "bn-population", [0, 1, 2]), runs, strict=True):
        _assert_same(a, b)

    # Interrupted again, every run at step 60: the group resumes as a group.
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 70)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "again", mnist_dir, [0, 1], group=True, variants=["no-bn"])
    lines.clear()
    _train(tmp_path / "again", mnist_dir, [0, 1], group=True, variants=["no-bn"], log=lines.append)
    assert not any("one at a time" in line for line in lines), lines
    assert sum("resuming" in line for line in lines) == 2
    for a, b in zip(
        _runs(single, "no-bn", [0, 1]), _runs(tmp_path / "again", "no-bn", [0, 1]), strict=True
    ):
        _assert_same(a, b)


def test_a_group_that_fails_trains_its_runs_alone_from_their_checkpoints(
    single: Path, mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error of the group (a NaN loss in one seed, say) is not a failed run: the
    runner trains each run on its own from its last checkpoint, and the files end as the
    single runs'."""
    lines: list[str] = []
    fits: list[FitResult] = []
    fit = Trainer.fit

    def recording_fit(self: Trainer) -> FitResult:
        fits.append(fit(self))
        return fits[-1]

    with monkeypatch.context() as patch:
        _interrupt_after(patch, 70, RuntimeError)
        patch.setattr(Trainer, "fit", recording_fit)
        outcomes = _train(
            tmp_path, mnist_dir, [0, 1, 2], group=True, variants=["bn"], log=lines.append
        )
    assert [o.status for o in outcomes] == ["done", "done", "done"]
    fallback = [line for line in lines if "one at a time" in line]
    assert len(fallback) == 1 and "RuntimeError: the group broke" in fallback[0], lines
    # Each run alone, from the group's step-60 checkpoint to the quick config's 120 steps.
    assert [(f.resumed_from, f.trained_steps) for f in fits] == [(60, 60)] * 3
    for a, b in zip(_runs(single, "bn", [0, 1, 2]), _runs(tmp_path, "bn", [0, 1, 2]), strict=True):
        _assert_same(a, b)
