"""Checkpoints: everything a training phase needs to continue exactly where it stopped.

A checkpoint holds the model and optimizer state, the batch sampler state, the random
number generator states, the step, the elapsed training time and the size of the metrics
log at that moment. It is written atomically and loaded with ``weights_only=True`` (no
arbitrary code runs when a run directory is read).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnlab.train.errors import CheckpointError
from bnlab.train.io import torch_save_atomic
from bnlab.train.runfiles import file_kind

#: Bumped when the checkpoint layout changes; older files are refused with a clear message.
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """Return the state of torch's CPU generator and Python's ``random`` module.

    Experiments draw randomness from these (and from explicit ``torch.Generator`` objects
    they own and checkpoint themselves); numpy's global generator is not used in training.
    """
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # Python's state is a tuple of ints; stored as a tensor so weights_only loading works.
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))


@dataclass
class Checkpoint:
    """The saved state of one training phase.

    Attributes:
        phase: the phase name (one file per phase: ``checkpoints/<phase>.pt``).
        step: optimizer updates completed.
        num_steps: the phase's planned length; ``step == num_steps`` means the phase finished.
        model, optimizer, sampler: ``state_dict()`` of each.
        rng: :func:`capture_rng_state` at ``step``.
        metrics_offset: size in bytes of ``metrics.jsonl`` when the checkpoint was taken.
        elapsed_s: training wall time spent in this phase up to ``step`` (over all sessions).
        extra: experiment-specific state (plain tensors, numbers, strings, lists, dicts).
    """

    phase: str
    step: int
    num_steps: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    sampler: dict[str, Any]
    rng: dict[str, Any]
    metrics_offset: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """Whether the phase ran all its steps."""
        return self.step >= self.num_steps

    def save(self, path: str | Path) -> None:
        """Write the checkpoint to ``path`` atomically."""
        torch_save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "phase": self.phase,
                "step": self.step,
                "num_steps": self.num_steps,
                "model": self.model,
                "optimizer": self.optimizer,
                "sampler": self.sampler,
                "rng": self.rng,
                "metrics_offset": self.metrics_offset,
                "elapsed_s": self.elapsed_s,
                "extra": self.extra,
            },
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint written by :meth:`save`.

        Raises:
            CheckpointError: (a ``ValueError``) the file is not a bnlab checkpoint or has
                another format version; the message says how to start the run over.
        """
        kind = file_kind(path)
        if kind is not None:  # torch.load would block on a FIFO, read a device forever
            raise CheckpointError(
                f"{path}: expected a bnlab checkpoint (a regular file), found {kind}; pass "
                "--restart to train this run again from the beginning"
            )
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200]
            raise CheckpointError(
                f"{path}: expected a bnlab checkpoint, but it could not be read ({reason}); "
                "pass --restart to train this run again from the beginning"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(
                f"{path}: expected checkpoint format {CHECKPOINT_FORMAT}, found {found!r}; "
                "it was written by another bnlab version: pass --restart to train this run again"
            )
        problem = _shape_problem(data)
        if problem is not None:
            raise CheckpointError(
                f"{path}: expected a bnlab checkpoint, but {problem}; pass --restart to train "
                "this run again from the beginning"
            )
        return cls(
            phase=str(data["phase"]),
            step=int(data["step"]),
            num_steps=int(data["num_steps"]),
            model=data["model"],
            optimizer=data["optimizer"],
            sampler=data["sampler"],
            rng=data["rng"],
            metrics_offset=int(data["metrics_offset"]),
            elapsed_s=float(data["elapsed_s"]),
            extra=dict(data["extra"]),
        )


#: The fields of a checkpoint file and what each must be (checked before any is used).
_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "phase": (str, "a phase name"),
    "step": (int, "an integer"),
    "num_steps": (int, "an integer"),
    "model": (dict, "a state dict"),
    "optimizer": (dict, "a state dict"),
    "sampler": (dict, "a state dict"),
    "rng": (dict, "the generators' states"),
    "metrics_offset": (int, "an integer"),
    "elapsed_s": ((int, float), "a number"),
    "extra": (dict, "a dict"),
}


def _shape_problem(data: dict[str, Any]) -> str | None:
    """Why ``data`` (a format-1 checkpoint's content) is not one (``None`` when it is):
    a field missing, or of another type; a negative step or offset."""
    missing = [name for name in _FIELDS if name not in data]
    if missing:
        return f"it lacks {', '.join(missing)}"
    for name, (kind, words) in _FIELDS.items():
        value = data[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"its {name} is {type(value).__name__}, not {words}"
    if data["step"] < 0 or data["num_steps"] < 0 or data["metrics_offset"] < 0:
        return "its step, num_steps or metrics_offset is negative"
    return None
