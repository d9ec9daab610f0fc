"""The shared training loop: determinism, hooks, logging, NaN errors and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from bnlab.train import (
    Hook,
    HookContext,
    NonFiniteLossError,
    RunDir,
    Trainer,
    every,
    read_metrics,
)


class ToySampler:
    """A seeded sampler over a fixed toy data set, with a saveable state."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, self.x.shape[0], (self.batch_size,), generator=self.gen)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y


def _setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, ToySampler]:
    torch.manual_seed(seed)
    # Dropout consumes the global RNG every step, so exact resume needs its state restored.
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _data()
    return model, opt, ToySampler(x, y, 16, seed)


def _val_hook(ctx: HookContext) -> dict[str, float]:
    x, y = _data()
    with torch.no_grad():
        ctx.model.eval()
        acc = (ctx.model(x).argmax(1) == y).float().mean().item()
        ctx.model.train()
    return {"accuracy": acc}


def _fit(run: RunDir | None, num_steps: int = 60, hooks: tuple[Hook, ...] = ()) -> Trainer:
    model, opt, sampler = _setup()
    trainer = Trainer(
        model,
        opt,
        nn.functional.cross_entropy,
        sampler,
        num_steps,
        run=run,
        hooks=hooks or (Hook("validation", _val_hook, every(20)),),
        checkpoint_every=20,
        log_every=10,
    )
    trainer.fit()
    return trainer


def test_every_reproduces_the_seed_schedule() -> None:
    val, train = every(100), every(25, unless_every=100)
    assert [b for b in range(801) if val(b)] == list(range(0, 801, 100))
    assert [b for b in range(201) if train(b)] == [25, 50, 75, 125, 150, 175]
    with pytest.raises(ValueError, match="n >= 1"):
        every(0)


def test_training_learns_and_logs_every_step(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    trainer = _fit(run)
    records = read_metrics(run.metrics_path)
    steps = [r["step"] for r in records if r["tag"] == "train"]
    assert steps == list(range(1, 61))
    # Hooks run after batch indices 0, 20, 40: steps 1, 21, 41.
    assert [r["step"] for r in records if r["tag"] == "validation"] == [1, 21, 41]
    losses = [r["loss"] for r in records if r["tag"] == "train"]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert records == trainer.metrics.records
    assert run.checkpoint_path("train").is_file()


def test_same_seed_gives_identical_runs() -> None:
    a, b = _fit(None), _fit(None)
    assert a.metrics.records == b.metrics.records
    for pa, pb in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


class Boom(RuntimeError):
    pass


def test_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    reference = _fit(RunDir(tmp_path / "ref"))

    run = RunDir(tmp_path / "run")

    def explode(ctx: HookContext) -> dict[str, float]:
        raise Boom("simulated crash")

    # Crash after step 50: the checkpoint at step 40 survives, steps 41..50 were logged.
    hooks = (Hook("validation", _val_hook, every(20)), Hook("crash", explode, lambda b: b == 49))
    with pytest.raises(Boom):
        _fit(run, hooks=hooks)
    assert max(r["step"] for r in read_metrics(run.metrics_path)) == 50

    resumed = _fit(run)
    for pa, pb in zip(
        reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(pa, pb)
    # The log is identical to the uninterrupted one: no duplicates, nothing lost.
    assert read_metrics(run.metrics_path) == read_metrics(tmp_path / "ref" / "metrics.jsonl")
    assert not list(run.path.rglob("*.tmp"))

    # A finished phase is restored, not retrained.
    model, opt, sampler = _setup(seed=5)
    again = Trainer(model, opt, nn.functional.cross_entropy, sampler, 60, run=run, log_every=10)
    result = again.fit()
    assert result.trained_steps == 0 and result.resumed_from == 60
    assert torch.equal(model[0].weight, reference.model[0].weight)


def test_checkpoint_of_a_different_length_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    _fit(run, num_steps=20)
    with pytest.raises(ValueError, match="20 steps"):
        _fit(run, num_steps=40)


def test_nan_loss_names_the_step_and_what_to_try(tmp_path: Path) -> None:
    model, opt, sampler = _setup()

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        loss = nn.functional.cross_entropy(out, y)
        loss_fn.calls += 1  # type: ignore[attr-defined]
        return loss * float("nan") if loss_fn.calls == 13 else loss  # type: ignore[attr-defined]

    loss_fn.calls = 0  # type: ignore[attr-defined]
    run = RunDir(tmp_path / "run")
    trainer = Trainer(model, opt, loss_fn, sampler, 40, run=run, checkpoint_every=10, log_every=5)
    with pytest.raises(NonFiniteLossError, match="step 13") as exc:
        trainer.fit()
    assert exc.value.step == 13
    assert "lower learning rate" in str(exc.value)
    assert "checkpoint is at step 10" in str(exc.value)
    # The checkpoint holds the state of step 10, never a NaN state.
    from bnlab.train import Checkpoint

    assert Checkpoint.load(run.checkpoint_path("train")).step == 10


def test_bad_arguments_are_rejected() -> None:
    model, opt, sampler = _setup()
    with pytest.raises(ValueError, match="log_every"):
        Trainer(model, opt, nn.functional.cross_entropy, sampler, 10, log_every=0)
    with pytest.raises(ValueError, match="num_steps"):
        Trainer(model, opt, nn.functional.cross_entropy, sampler, -1)
