"""Kill-and-resume at random points: the finished run equals an uninterrupted one.

A forked child trains a tiny experiment through the real engine (runner, lock, Trainer,
metrics log, atomic checkpoints) and dies with ``os._exit`` (no clean-up, as under
SIGKILL) at a chosen write: before, in the middle of (a torn line) or after a metrics-log
append, and before or after the rename of a checkpoint or JSON file (a temporary file left
behind). Killed once or twice, then resumed to the end, the run must leave a metrics log
identical byte for byte to the uninterrupted run's, the same final metrics and artefacts,
and no temporary file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import Datasets, TrainBatches, load_mnist
from bnlab.experiments.base import ExperimentSpec, RunContext, Variant
from bnlab.experiments.runner import run_experiment
from bnlab.train import Hook, Trainer, evaluate, every
from bnlab.train import io as train_io
from bnlab.train.metrics import MetricsLog

KILLED = 137
MODES = ("log-before", "log-torn", "log-after", "rename-before", "rename-after")


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    seed: int = 0
    num_steps: int = 12  # SGD steps
    batch_size: int = 16  # examples per step
    learning_rate: float = 0.1  # SGD step size
    checkpoint_every: int = 4  # steps between checkpoints
    log_every: int = 2  # steps between log writes


def _run(config: TinyConfig, data: Datasets, ctx: RunContext) -> dict[str, float]:
    torch.manual_seed(config.seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    val = data.validation

    def validation(_: object) -> dict[str, float]:
        return evaluate(model, val.images, val.labels, F.cross_entropy)

    trainer = Trainer(
        model,
        optimizer,
        F.cross_entropy,
        TrainBatches(data.train, config.batch_size, seed=config.seed),
        config.num_steps,
        run=ctx.run,
        hooks=(Hook("validation", validation, every(3)),),
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
    )
    trainer.fit()
    test = evaluate(model, data.test.images, data.test.labels, F.cross_entropy)
    trainer.metrics.append({"phase": "train", "tag": "test", "step": config.num_steps, **test})
    trainer.metrics.flush()
    linear = model[1]
    assert isinstance(linear, nn.Linear)
    ctx.run.write_artefact("bias.json", json.dumps(linear.bias.tolist()).encode())
    return {"test_accuracy": test["accuracy"], "test_loss": test["loss"]}


def _spec(data: Datasets) -> ExperimentSpec[TinyConfig, Datasets]:
    return ExperimentSpec(
        name="tiny",
        title="tiny",
        seed_file="-",
        summary="a linear model on synthetic MNIST",
        variants={"linear": Variant(TinyConfig(), "linear")},
        load_data=lambda _dir, _progress: data,
        run=_run,
        quick=lambda c: c,
    )


@pytest.fixture(scope="module")
def data(mnist_dir: Path) -> Datasets:
    return load_mnist(mnist_dir, progress=False)


class Killer:
    """Counts the engine's writes of each kind (``log`` appends, ``rename``s of atomic
    writes); at write number ``at`` (0-based) of the kind ``mode`` names, dies as it says."""

    def __init__(self, at: int | None, mode: str) -> None:
        self.at, self.mode = at, mode
        self.counts = {"log": 0, "rename": 0}

    def _event(self, kind: str) -> str | None:
        n = self.counts[kind]
        self.counts[kind] += 1
        if n == self.at and self.mode.startswith(kind):
            return self.mode.split("-", 1)[1]
        return None

    @contextmanager
    def installed(self) -> Iterator[None]:
        flush, replace = MetricsLog.flush, train_io.os.replace
        killer = self

        def killing_flush(log: MetricsLog, *, fsync: bool = False) -> int:
            when = killer._event("log") if log._pending else None
            if when == "before":
                os._exit(KILLED)
            if when == "torn" and log.path is not None:
                data = ("\n".join(log._pending) + "\n").encode()
                with open(log.path, "ab") as handle:
                    handle.write(data[: max(1, len(data) // 2)])
                os._exit(KILLED)
            size = flush(log, fsync=fsync)
            if when == "after":
                os._exit(KILLED)
            return size

        def killing_replace(src: Any, dst: Any) -> None:
            when = killer._event("rename")
            if when == "before":
                os._exit(KILLED)  # the complete temporary file stays behind
            replace(src, dst)
            if when == "after":
                os._exit(KILLED)

        MetricsLog.flush = killing_flush  # type: ignore[method-assign,assignment]
        train_io.os.replace = killing_replace  # type: ignore[assignment]
        try:
            yield
        finally:
            MetricsLog.flush = flush  # type: ignore[method-assign]
            train_io.os.replace = replace


def _train(spec: ExperimentSpec[Any, Any], out: Path) -> None:
    run_experiment(spec, out_dir=out, seeds=1, progress=False, log=lambda _m: None)


def _in_child(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child; return its exit status (0 done, 137 killed)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            torch.set_num_threads(1)
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _count_events(spec: ExperimentSpec[Any, Any], out: Path) -> dict[str, int]:
    killer = Killer(None, "")
    with killer.installed():
        _train(spec, out)
    return killer.counts


def _files(out: Path) -> dict[str, bytes]:
    run = out / "tiny" / "linear" / "seed-0"
    return {
        "metrics.jsonl": (run / "metrics.jsonl").read_bytes(),
        "bias.json": (run / "artefacts" / "bias.json").read_bytes(),
        "metrics": json.dumps(json.loads((run / "result.json").read_text())["metrics"]).encode(),
    }


@pytest.fixture(scope="module")
def reference(
    data: Datasets, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, bytes], dict[str, int]]:
    out = tmp_path_factory.mktemp("reference")
    events = _count_events(_spec(data), out)
    return _files(out), events


# Fixed points first (before the first checkpoint, a torn line, inside a checkpoint write),
# then random ones: (event index or fraction of the run, mode) per kill.
# Renames: data.json, env.json, config.json, then the checkpoints (every 4 steps), ...
FIXED: list[list[tuple[int | float, str]]] = [
    [(0, "log-after")],  # records logged, no checkpoint yet
    [(0, "log-torn")],  # a torn first line, no checkpoint
    [(3, "rename-before")],  # the first checkpoint's temporary file left behind
    [(3, "rename-after")],  # right after the first checkpoint
    [(2, "log-torn"), (4, "rename-before")],  # killed twice
]


def _random_plans(n: int) -> list[list[tuple[int | float, str]]]:
    rng = random.Random(14)
    return [
        [(rng.random(), rng.choice(MODES)) for _ in range(rng.choice((1, 2)))] for _ in range(n)
    ]


@pytest.mark.parametrize(
    "plan", FIXED + _random_plans(8), ids=lambda p: "+".join(f"{a:.2g}:{m}" for a, m in p)
)
def test_killed_and_resumed_equals_uninterrupted(
    plan: list[tuple[int | float, str]],
    data: Datasets,
    reference: tuple[dict[str, bytes], dict[str, int]],
    tmp_path: Path,
) -> None:
    want, events = reference
    spec = _spec(data)
    out = tmp_path / "runs"
    kills = 0
    for at, mode in plan:
        # A fraction picks a write among all of its kind in an uninterrupted run.
        index = int(at) if isinstance(at, int) else int(at * events[mode.split("-")[0]])
        killer = Killer(index, mode)

        def session(killer: Killer = killer) -> None:
            with killer.installed():
                _train(spec, out)

        code = _in_child(session)
        assert code in (0, KILLED), f"the child failed (exit {code})"
        kills += code == KILLED
    # The last session runs undisturbed (in a child too: same process state as the others).
    assert _in_child(lambda: _train(spec, out)) == 0
    assert kills >= 1, "the first session was not killed"
    assert _files(out) == want
    assert not list(out.rglob("*.tmp")), "a temporary file survived the resume"
