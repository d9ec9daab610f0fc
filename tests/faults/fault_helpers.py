"""Helpers of the fault-injection suite: directory snapshots and the CLI outcome."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256 or "<dir>"}`` of everything under ``root``."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass(frozen=True)
class Outcome:
    """What one CLI call did: exit status, stdout, stderr."""

    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The stderr, which for a user error must be exactly one line, no traceback."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got:\n{self.err}"
        assert "Traceback" not in self.err
        return lines[0]
