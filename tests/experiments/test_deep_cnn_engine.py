"""The experiment engine on a toy spec: skip, resume, conflicts, failures, missing data."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bnlab.errors import BnlabError, UnknownNameError
from bnlab.experiments import (
    ExperimentNotRunError,
    ExperimentSpec,
    RunContext,
    Variant,
    run_experiment,
    seed_list,
)
from bnlab.experiments.base import apply_overrides
from bnlab.train import Checkpoint, Hook, RunConflictError, Trainer
from bnlab.train.memory import MALLOC_SETTINGS


@dataclass(frozen=True)
class ToyConfig:
    seed: int = 0  # model init and batch order
    steps: int = 6  # optimizer steps
    lr: float = 0.1  # SGD learning rate
    name: str = "x"  # a string field for the override parser
    flag: bool = False  # a bool field for the override parser


class Batches:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(8, 3, generator=self.gen)
        return x, (x.sum(1) > 0).long()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


class Crash(RuntimeError):
    pass


#: Step after which the toy run raises (0: never); not a config field, so a rerun with
#: the same config can succeed where the first attempt crashed.
CRASH_AT = {"step": 0}


def _run(config: ToyConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    torch.manual_seed(config.seed)
    model = nn.Linear(3, 2)

    def explode(_: Any) -> dict[str, float]:
        raise Crash("simulated crash")

    hooks = [Hook("crash", explode, lambda b: b + 1 == CRASH_AT["step"])]
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=config.lr),
        nn.functional.cross_entropy,
        Batches(config.seed),
        config.steps,
        run=ctx.run,
        hooks=hooks,
        checkpoint_every=2,
        log_every=2,
    )
    fit = trainer.fit()
    return {
        "weight_sum": float(model.weight.detach().sum()),
        "resumed_from": float(fit.resumed_from or 0),
        "data": data,
    }


def _spec(load: Any = None) -> ExperimentSpec[ToyConfig, Any]:
    base = ToyConfig()
    return ExperimentSpec(
        name="toy",
        title="toy",
        seed_file="none",
        summary="a toy",
        variants={
            "a": Variant(base, "lr 0.1"),
            "b": Variant(dataclasses.replace(base, lr=0.2), "lr 0.2"),
        },
        load_data=load or (lambda data_dir, progress: 7.0),
        run=_run,
        quick=lambda c: dataclasses.replace(c, steps=2),
    )


def _quiet(_: str) -> None:
    pass


def test_runs_every_variant_and_seed_then_skips(tmp_path: Path) -> None:
    spec = _spec()
    outcomes = run_experiment(spec, out_dir=tmp_path, seeds=2, log=_quiet)
    assert [(o.variant, o.seed, o.status) for o in outcomes] == [
        ("a", 0, "done"),
        ("a", 1, "done"),
        ("b", 0, "done"),
        ("b", 1, "done"),
    ]
    assert outcomes[0].metrics["data"] == 7.0
    result = json.loads((tmp_path / "toy" / "a" / "seed-1" / "result.json").read_text())
    assert result["status"] == "complete" and result["sessions"] == 1
    config = json.loads((tmp_path / "toy" / "b" / "seed-0" / "config.json").read_text())
    assert config["config"] == {"seed": 0, "steps": 6, "lr": 0.2, "name": "x", "flag": False}
    if sys.platform.startswith("linux"):  # runs train with glibc keeping freed memory
        env = json.loads((tmp_path / "toy" / "a" / "seed-0" / "env.json").read_text())
        assert env["malloc_settings"] == MALLOC_SETTINGS
    again = run_experiment(spec, out_dir=tmp_path, seeds=2, variants=["b"], log=_quiet)
    assert [o.status for o in again] == ["skipped", "skipped"]
    assert again[0].metrics == outcomes[2].metrics


def test_crash_leaves_failed_json_and_the_rerun_resumes(tmp_path: Path) -> None:
    spec = _spec()
    reference = run_experiment(spec, out_dir=tmp_path / "ref", variants=["a"], log=_quiet)[0]
    CRASH_AT["step"] = 5
    try:
        with pytest.raises(Crash):
            run_experiment(spec, out_dir=tmp_path / "run", variants=["a"], log=_quiet)
    finally:
        CRASH_AT["step"] = 0
    run_dir = tmp_path / "run" / "toy" / "a" / "seed-0"
    failure = json.loads((run_dir / "failed.json").read_text())
    assert failure["error"] == "Crash" and "simulated crash" in failure["traceback"]
    assert not (run_dir / "result.json").exists()
    # The rerun resumes from the step-4 checkpoint and ends where the clean run ended.
    resumed = run_experiment(spec, out_dir=tmp_path / "run", variants=["a"], log=_quiet)[0]
    assert resumed.metrics["resumed_from"] == 4.0
    assert resumed.metrics["weight_sum"] == reference.metrics["weight_sum"]
    assert not (run_dir / "failed.json").exists()
    assert len(json.loads((run_dir / "env.json").read_text())["resumes"]) == 1


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    spec = _spec()
    reference = run_experiment(spec, out_dir=tmp_path / "ref", variants=["a"], log=_quiet)[0]
    # Simulate a kill after the step-4 checkpoint: drop the result, keep the checkpoint.
    run_experiment(spec, out_dir=tmp_path / "run", variants=["a"], log=_quiet)
    run_dir = tmp_path / "run" / "toy" / "a" / "seed-0"
    (run_dir / "result.json").unlink()
    ckpt = Checkpoint.load(run_dir / "checkpoints" / "train.pt")
    assert ckpt.finished
    outcome = run_experiment(spec, out_dir=tmp_path / "run", variants=["a"], log=_quiet)[0]
    assert outcome.status == "done" and outcome.metrics["resumed_from"] == 6.0
    assert outcome.metrics["weight_sum"] == reference.metrics["weight_sum"]
    assert json.loads((run_dir / "result.json").read_text())["sessions"] == 2


def test_conflicting_config_and_restart(tmp_path: Path) -> None:
    spec = _spec()
    run_experiment(spec, out_dir=tmp_path, variants=["a"], log=_quiet)
    with pytest.raises(RunConflictError, match=r"lr: 0\.1 -> 0\.5.*--restart"):
        run_experiment(spec, out_dir=tmp_path, variants=["a"], overrides={"lr": "0.5"}, log=_quiet)
    with pytest.raises(RunConflictError, match="quick: False -> True"):
        run_experiment(spec, out_dir=tmp_path, variants=["a"], quick=True, log=_quiet)
    out = run_experiment(
        spec, out_dir=tmp_path, variants=["a"], overrides={"lr": "0.5"}, restart=True, log=_quiet
    )
    assert out[0].status == "done"
    stored = json.loads((tmp_path / "toy" / "a" / "seed-0" / "config.json").read_text())
    assert stored["config"]["lr"] == 0.5


def test_missing_data_is_recorded_not_run(tmp_path: Path) -> None:
    def no_data(data_dir: Path | None, progress: bool) -> Any:
        raise BnlabError(f"no data in {data_dir}; pass --data-dir")

    with pytest.raises(ExperimentNotRunError, match="toy did not run: no data in /nowhere"):
        run_experiment(_spec(no_data), out_dir=tmp_path, data_dir="/nowhere", log=_quiet)
    record = json.loads((tmp_path / "toy" / "not-run.json").read_text())
    assert record["error"] == "BnlabError" and "--data-dir" in record["reason"]
    run_experiment(_spec(), out_dir=tmp_path, variants=["a"], log=_quiet)
    assert not (tmp_path / "toy" / "not-run.json").exists()


def test_names_seeds_and_overrides_are_validated(tmp_path: Path) -> None:
    spec = _spec()
    with pytest.raises(UnknownNameError, match="expected one of: a, b"):
        run_experiment(spec, out_dir=tmp_path, variants=["c"], log=_quiet)
    with pytest.raises(UnknownNameError, match="steps, lr"):
        apply_overrides(ToyConfig(), {"nope": "1"})
    changed = apply_overrides(ToyConfig(), {"steps": "3", "lr": "1e-3", "flag": "yes", "name": "z"})
    assert (changed.steps, changed.lr, changed.flag, changed.name) == (3, 1e-3, True, "z")
    with pytest.raises(ValueError, match="'steps' is int"):
        apply_overrides(ToyConfig(), {"steps": "3.5"})
    with pytest.raises(ValueError, match="true or false"):
        apply_overrides(ToyConfig(), {"flag": "maybe"})
    assert seed_list(3) == [0, 1, 2] and seed_list([4, 2]) == [4, 2]
    with pytest.raises(ValueError, match=">= 1"):
        seed_list(0)
    with pytest.raises(ValueError, match="distinct"):
        seed_list([1, 1])
    assert not list(tmp_path.iterdir())  # nothing ran


def test_spec_rejects_bad_configs() -> None:
    @dataclass
    class Mutable:
        seed: int = 0

    with pytest.raises(TypeError, match="frozen dataclass"):
        dataclasses.replace(_spec(), variants={"a": Variant(Mutable(), "mutable")})

    @dataclass(frozen=True)
    class NoSeed:
        steps: int = 1

    with pytest.raises(TypeError, match="'seed'"):
        dataclasses.replace(_spec(), variants={"a": Variant(NoSeed(), "no seed")})
    with pytest.raises(ValueError, match="at least one variant"):
        dataclasses.replace(_spec(), variants={})
