"""The committed summary: README's results block and docs/results.md are rendered from
docs/results.json, never typed by hand, and a test catches them drifting apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnlab.report import Claim, Metric, every_run
from bnlab.report.summary import (
    README_BEGIN,
    README_END,
    RESULTS_MD,
    SUMMARY_JSON,
    build_summary,
    check_summary,
    replace_readme_block,
    write_summary,
)
from bnlab.train import RunDir

REPO = Path(__file__).resolve().parents[2]


def test_committed_readme_and_results_page_equal_the_committed_summary() -> None:
    """Fails when README.md's results block or docs/results.md disagree with
    docs/results.json: rerun `bnlab report RUNS --summary` instead of editing them."""
    assert (REPO / SUMMARY_JSON).is_file(), f"{SUMMARY_JSON} is missing"
    assert check_summary(REPO) == []


def _write_run(root: Path, variant: str, seed: int, acc: float, *, quick: bool = False) -> None:
    run = RunDir(root / "deep-cnn" / variant / f"seed-{seed}")
    run.write_json(
        "config.json",
        {"experiment": "deep-cnn", "variant": variant, "seed": seed, "quick": quick, "config": {}},
    )
    run.write_json(
        "env.json",
        {"bnlab": "0.1.0", "torch": "2.x", "torch_threads": 1, "git": {"revision": "c0ffee12345"}},
    )
    run.write_result({"test_accuracy": acc}, wall_time_s=1.0)


class _Spec:
    """A minimal Reportable standing in for deep-cnn (one claim, one metric)."""

    name = "deep-cnn"
    title = "toy deep-cnn"
    seed_file = "000.txt"
    summary = "toy"
    notes = ()
    metrics = (Metric("test_accuracy", "test acc.", "pct"),)
    curves = ()
    claims = (
        Claim(
            "no BN stays near chance",
            every_run(["no-bn"], "test_accuracy", below=0.15),
            short="no BN: < 15%",
        ),
    )
    extra_blocks = None

    def variant_descriptions(self) -> dict[str, str]:
        return {"no-bn": "without BN"}


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text(
        f"# x\n\n## Results\n\n{README_BEGIN}\nold\n{README_END}\n\nEnd\n"
    )
    return repo


def test_summary_is_written_from_runs_and_checked(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed, acc in enumerate([0.10, 0.11, 0.12]):
        _write_run(runs, "no-bn", seed, acc)
    repo = _repo(tmp_path)
    written = write_summary(runs, repo, {"deep-cnn": _Spec()})
    assert [p.relative_to(repo).as_posix() for p in written] == [
        SUMMARY_JSON,
        RESULTS_MD,
        "README.md",
    ]
    readme = (repo / "README.md").read_text()
    assert readme.startswith("# x\n\n## Results\n\n") and readme.endswith(f"{README_END}\n\nEnd\n")
    assert "| deep-cnn | no BN: < 15% |" in readme and "11.00 ± 1.00%" in readme
    assert "3 finished runs in `runs/` at revision c0ffee1234 (3 runs)" in readme
    summary = json.loads((repo / SUMMARY_JSON).read_text())
    assert summary["provenance"]["revisions"] == {"c0ffee1234": 3}
    page = (repo / RESULTS_MD).read_text()
    assert "permutation test" in page and "Final metrics" in page
    assert check_summary(repo) == []
    # A hand edit of a number in either file is caught.
    (repo / "README.md").write_text(readme.replace("11.00 ± 1.00%", "11.50 ± 1.00%"))
    assert [p.split(":")[0] for p in check_summary(repo)] == ["README.md"]
    (repo / RESULTS_MD).write_text(page.replace("11.00", "12.00"))
    assert len(check_summary(repo)) == 2
    # Rewriting from the same runs restores both, byte for byte.
    write_summary(runs, repo, {"deep-cnn": _Spec()})
    assert (repo / "README.md").read_text() == readme and check_summary(repo) == []


def test_summary_refuses_quick_runs_and_a_readme_without_markers(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _write_run(runs, "no-bn", 0, 0.1, quick=True)
    with pytest.raises(ValueError, match="--quick"):
        build_summary(runs, {"deep-cnn": _Spec()})
    with pytest.raises(ValueError, match="exactly one"):
        replace_readme_block("# no markers\n", "block")
    with pytest.raises(ValueError, match="out of order"):
        replace_readme_block(f"{README_END}\n{README_BEGIN}\n", "block")


def test_report_command_writes_the_summary(tmp_path: Path) -> None:
    from bnlab.cli.main import main

    runs = tmp_path / "runs"
    _write_run(runs, "no-bn", 0, 0.1)
    repo = _repo(tmp_path)
    assert main(["report", str(runs), "--out", str(tmp_path / "out"), "--summary", str(repo)]) == 0
    assert check_summary(repo) == []
    assert (
        "| deep-cnn | no BN: about 10% test accuracy (< 15%) |" in (repo / "README.md").read_text()
    )


def test_thread_counts_are_what_the_runs_trained_on(tmp_path: Path) -> None:
    """env.json holds the process's thread count when a run started; result.json the
    count it trained on (its config's num_threads). The summary reports the latter."""
    runs = tmp_path / "runs"
    _write_run(runs, "no-bn", 0, 0.1)  # env 1 thread, result without torch_threads (older)
    for seed in (1, 2):
        _write_run(runs, "no-bn", seed, 0.1)
        run = RunDir(runs / "deep-cnn" / "no-bn" / f"seed-{seed}")
        env = json.loads(run.env_path.read_text())
        run.write_json("env.json", {**env, "torch_threads": 2})
        run.write_result({"test_accuracy": 0.1}, wall_time_s=1.0, torch_threads=3)
    summary = build_summary(runs, {"deep-cnn": _Spec()})
    assert summary["provenance"]["environments"] == {
        "bnlab 0.1.0, torch 2.x, 1 torch thread(s)": 1,
        "bnlab 0.1.0, torch 2.x, 3 torch thread(s)": 2,
    }
