"""Rebuild a trained model from a run directory: its config through the experiment registry,
the network through the experiment module's ``build_model(config)``, the weights and
running statistics from its last checkpoint. Used by ``bnlab doctor RUN_DIR``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.errors import BnlabError
from bnlab.experiments.registry import get_experiment
from bnlab.train.checkpoint import Checkpoint
from bnlab.train.rundir import RunDir

__all__ = ["RunModel", "RunModelError", "load_run_model", "sample_inputs"]


class RunModelError(BnlabError, ValueError):
    """A run directory whose model cannot be rebuilt (no config, no checkpoint, ...)."""


@dataclass
class RunModel:
    """A model restored from a run directory.

    Attributes:
        path: the run directory.
        experiment, variant, seed: the run's identity (from ``config.json``).
        config: the resolved config dataclass.
        model: the network with the checkpoint's weights and buffers, in eval mode.
        phase, step: which checkpoint was loaded and after how many optimizer steps.
    """

    path: Path
    experiment: str
    variant: str
    seed: int
    config: Any
    model: nn.Module
    phase: str
    step: int


def _config(spec: Any, variant: str, stored: dict[str, Any]) -> Any:
    base = (
        spec.get_variant(variant).config
        if variant in spec.variants
        else next(iter(spec.variants.values())).config
    )
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    values = {
        k: tuple(v) if isinstance(fields[k], tuple) and isinstance(v, list) else v
        for k, v in stored.items()
        if k in fields
    }
    try:
        return dataclasses.replace(base, **values)
    except (ValueError, TypeError) as exc:  # the config's own checks (edited config.json)
        raise RunModelError(f"config.json holds a config this bnlab refuses: {exc}") from None


def _checkpoint_file(run: RunDir, phase: str | None) -> Path:
    if phase is not None:
        path = run.checkpoint_path(phase)
        if not path.is_file():
            raise RunModelError(f"{run.path}: no checkpoint for phase {phase!r} ({path})")
        return path
    found = sorted((run.path / RunDir.CHECKPOINTS).glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise RunModelError(
            f"{run.path}: no checkpoint under {RunDir.CHECKPOINTS}/ (the run has not trained "
            "a full checkpoint interval yet)"
        )
    return found[-1]  # the phase written last is the final model


def load_run_model(run_dir: str | Path, *, phase: str | None = None) -> RunModel:
    """The trained model of ``run_dir`` (``runs/<experiment>/<variant>/seed-<k>``).

    The experiment module must define ``build_model(config) -> nn.Module``.

    Args:
        run_dir: a run directory written by ``bnlab run``.
        phase: which checkpoint (``checkpoints/<phase>.pt``); default: the latest written.

    Raises:
        RunModelError: no ``config.json``, an experiment without ``build_model``, no
            checkpoint, or weights that do not fit the rebuilt network.
        UnknownNameError: the experiment is not registered.
    """
    run = RunDir(run_dir)
    if not run.config_path.is_file():
        raise RunModelError(
            f"{run.path}: expected a run directory with config.json "
            "(runs/<experiment>/<variant>/seed-<k>, written by bnlab run)"
        )
    stored = run.read_config()
    name = str(stored.get("experiment", run.path.parent.parent.name))
    variant = str(stored.get("variant", run.path.parent.name))
    spec = get_experiment(name)
    module = importlib.import_module(spec.run.__module__)  # where the experiment lives
    build = getattr(module, "build_model", None)
    if build is None:
        raise RunModelError(
            f"experiment {name!r} does not expose build_model(config), so its model cannot "
            "be rebuilt from a run directory"
        )
    config = _config(spec, variant, dict(stored.get("config", {})))
    path = _checkpoint_file(run, phase)
    ckpt = Checkpoint.load(path)
    torch.manual_seed(0)  # initial weights are overwritten; keep the global RNG predictable
    model = build(config)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as exc:
        raise RunModelError(
            f"{path}: the checkpoint does not fit the network rebuilt from config.json: {exc}"
        ) from exc
    return RunModel(
        run.path,
        name,
        variant,
        int(stored.get("seed", 0)),
        config,
        model.eval(),
        ckpt.phase,
        ckpt.step,
    )


def sample_inputs(experiment: str, count: int, data_dir: Path | None = None) -> Tensor:
    """The first ``count`` test inputs of an experiment's data (its ``load_data``).

    Raises:
        RunModelError: the data have no ``test.images`` split.
        BnlabError: the data are missing (from the experiment's loader).
    """
    data = get_experiment(experiment).load_data(data_dir, False)
    images = getattr(getattr(data, "test", None), "images", None)
    if not isinstance(images, Tensor):
        raise RunModelError(
            f"experiment {experiment!r}: its data have no test images to sample a batch from"
        )
    return images[:count]
