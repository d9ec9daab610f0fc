"""The scheduler: run lists, side-by-side runs whose numbers do not depend on --jobs, the
thread budget, failures that stay with their run, and errors that stop the job."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bnlab.data import write_fake_mnist
from bnlab.errors import UnknownNameError
from bnlab.experiments import ExperimentSpec, RunContext, Variant, get_experiment, registry
from bnlab.experiments.scheduler import RunRequest, RunSettings, admit, plan, run_all
from bnlab.train.errors import RunConflictError


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("mnist"), n_train=240, n_test=40, seed=3)


def _quiet(_message: str) -> None:
    pass


def test_plan_resolves_each_run_and_refuses_unknown_names_first() -> None:
    deep, practice = get_experiment("deep-cnn"), get_experiment("bn-learning-rate")
    requests = plan([deep, practice], [0, 1], quick=False)
    assert len(requests) == 2 * (len(deep.variants) + len(practice.variants))
    first = requests[0]
    assert (first.experiment, first.variant, first.seed) == ("deep-cnn", "no-bn", 0)
    assert requests[1].seed == 1 and first.threads == 1
    # The cost follows the config: the deep CNN's 800 steps outweigh 600 tiny MLP steps,
    # and the low-level BN variant is the slowest deep-cnn one.
    cost = {(r.experiment, r.variant): r.cost_s for r in requests}
    assert cost[("deep-cnn", "bn")] > 10 * cost[("bn-learning-rate", "bn-lr0.1")]
    bn, lowlevel, no_bn = (cost[("deep-cnn", v)] for v in ("bn", "bn-lowlevel", "no-bn"))
    assert lowlevel > bn > no_bn
    # --set num_threads=2 reaches the request the scheduler budgets with.
    wide = plan([deep], [0], variants=["bn"], overrides={"num_threads": "2"})
    assert [r.threads for r in wide] == [2]
    with pytest.raises(UnknownNameError, match="no-such-variant"):
        plan([deep], [0], variants=["no-such-variant"])


def test_admit_keeps_the_threads_of_running_runs_within_the_budget() -> None:
    assert admit([1, 1, 1], [], jobs=2, budget=2) == [0, 1]
    assert admit([1, 1], [1], jobs=2, budget=2) == [0]
    assert admit([1], [1, 1], jobs=2, budget=2) == []
    assert admit([2, 1, 1], [1], jobs=2, budget=2) == [1]  # the 2-thread run waits
    assert admit([2, 1], [], jobs=2, budget=2) == [0]  # and starts on an idle machine
    assert admit([1, 1, 1, 1], [], jobs=3, budget=4) == [0, 1, 2]  # at most `jobs` runs


def _results(out: Path) -> dict[str, Any]:
    found = {}
    for path in sorted(out.glob("*/*/seed-*/result.json")):
        key = str(path.parent.relative_to(out))
        metrics = json.loads(path.read_text())["metrics"]
        log = (path.parent / "metrics.jsonl").read_text()
        found[key] = ({k: v for k, v in metrics.items() if not k.endswith("_time_s")}, log)
    return found


def test_a_runs_numbers_do_not_depend_on_jobs(mnist_dir: Path, tmp_path: Path) -> None:
    spec = get_experiment("bn-learning-rate")
    requests = plan([spec], [0, 1], variants=["bn-lr0.1", "none-lr0.1"], quick=True)
    lines: list[str] = []
    outcomes = {}
    for jobs in (1, 2):
        settings = RunSettings(out_dir=tmp_path / f"jobs{jobs}", quick=True, data_dir=mnist_dir)
        outcomes[jobs], not_run = run_all(
            requests, settings, jobs=jobs, progress=False, log=lines.append
        )
        assert not_run == {}
        assert [o.status for o in outcomes[jobs]] == ["done"] * 4
    # Outcomes come back in request order, whatever order the workers finished in.
    assert [(o.variant, o.seed) for o in outcomes[2]] == [(r.variant, r.seed) for r in requests]
    one, two = _results(tmp_path / "jobs1"), _results(tmp_path / "jobs2")
    assert len(one) == 4 and one == two  # metrics and every logged record, bit for bit
    assert sum("done in" in line for line in lines) == 8
    assert any(line.startswith("[4/4] ") for line in lines)
    result = json.loads(next((tmp_path / "jobs2").glob("*/*/seed-0/result.json")).read_text())
    assert result["torch_threads"] == 1
    assert result["time_s"]["train_steps"] > 0 and "hook:validation" in result["time_s"]


def test_a_conflicting_run_directory_stops_a_parallel_job(mnist_dir: Path, tmp_path: Path) -> None:
    spec = get_experiment("bn-learning-rate")
    settings = RunSettings(out_dir=tmp_path, quick=True, data_dir=mnist_dir)
    requests = plan([spec], [0, 1], variants=["bn-lr0.1"], quick=True)
    run_all(requests, settings, jobs=1, progress=False, log=_quiet)
    changed = dataclasses.replace(settings, overrides={"hidden_units": "20"})
    requests = plan([spec], [0, 1], variants=["bn-lr0.1"], quick=True, overrides=changed.overrides)
    with pytest.raises(RunConflictError, match="another configuration"):
        run_all(requests, changed, jobs=2, progress=False, log=_quiet)


@dataclass(frozen=True)
class _ToyConfig:
    seed: int = 0
    fail_on: int = -1


def _toy_run(config: _ToyConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    if config.seed == config.fail_on:
        raise RuntimeError(f"seed {config.seed} fails on purpose")
    return {"value": float(config.seed)}


def test_a_failed_run_is_recorded_and_the_others_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = ExperimentSpec(
        name="toy",
        title="toy",
        seed_file="",
        summary="",
        variants={"v": Variant(_ToyConfig(fail_on=1), "fails at seed 1")},
        load_data=lambda data_dir, progress: None,
        run=_toy_run,
        quick=lambda c: c,
    )
    monkeypatch.setitem(registry._REGISTERED, "toy", toy)
    lines: list[str] = []
    outcomes, _ = run_all(
        plan([toy], [0, 1, 2]),
        RunSettings(out_dir=tmp_path),
        jobs=2,  # a spec registered here trains in this process
        progress=False,
        log=lines.append,
    )
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert "fails on purpose" in (outcomes[1].error or "")
    failure = json.loads((tmp_path / "toy" / "v" / "seed-1" / "failed.json").read_text())
    assert failure["error"] == "RuntimeError"
    assert any("train in this process" in line for line in lines)
    assert any("FAILED" in line and "seed-1" in line for line in lines)


def test_missing_data_leave_the_experiment_out_and_say_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnlab.errors import BnlabError

    def no_data(data_dir: Path | None, progress: bool) -> None:
        raise BnlabError("the toy data are not here")

    toy = ExperimentSpec(
        name="toy-missing",
        title="toy",
        seed_file="",
        summary="",
        variants={"v": Variant(_ToyConfig(), "needs data")},
        load_data=no_data,
        run=_toy_run,
        quick=lambda c: c,
    )
    monkeypatch.setitem(registry._REGISTERED, "toy-missing", toy)
    outcomes, not_run = run_all(
        plan([toy], [0]), RunSettings(out_dir=tmp_path), progress=False, log=_quiet
    )
    assert outcomes == [] and "not here" in not_run["toy-missing"]
    assert "not here" in (tmp_path / "toy-missing" / "not-run.json").read_text()


def test_the_pool_stops_its_workers_when_the_job_stops() -> None:
    from bnlab.experiments.scheduler import _pool

    with pytest.raises(KeyboardInterrupt), _pool(1) as pool:
        future = pool.submit(time.sleep, 60)
        processes = list(pool._processes.values())  # type: ignore[attr-defined]
        while not future.running():
            time.sleep(0.05)
        raise KeyboardInterrupt
    # The executor's own thread may reap the killed worker a moment later; a worker left
    # running would sleep for a minute.
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes and not any(p.is_alive() for p in processes)


def test_requests_name_their_run() -> None:
    assert RunRequest("deep-cnn", "bn", 3).label == "deep-cnn/bn/seed-3"
