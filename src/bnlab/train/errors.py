"""Errors the training engine raises for users: divergence and run-directory conflicts."""

from __future__ import annotations

from bnlab.errors import BnlabError


class NonFiniteLossError(BnlabError, FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes:
        step: the optimizer step (1-based) whose loss was first non-finite.
        value: that loss value.
    """

    def __init__(self, where: str, step: int, value: float, hint: str) -> None:
        self.step = step
        self.value = value
        super().__init__(f"{where}: the training loss became {value} at step {step}. {hint}")


class RunConflictError(BnlabError):
    """A run directory that already holds a run with a different configuration."""


class CheckpointError(BnlabError, ValueError):
    """A checkpoint that cannot be read (corrupt, truncated, another format version)."""


class RunFilesError(BnlabError, ValueError):
    """A run directory whose files are unreadable or inconsistent (invalid JSON, a metrics
    log shorter than its checkpoint says); the message names the file and the fix."""
