"""The root of bnlab's exception tree.

Every error bnlab raises on purpose for bad input or missing resources derives from
:class:`BnlabError`, so the CLI can print its message cleanly (no traceback) and exit 2.
Library code still raises the specific built-in type where Python convention expects one
(``ValueError`` for a wrong shape, ``TypeError`` for a wrong dtype).
"""

from __future__ import annotations


class BnlabError(Exception):
    """An error with a message written for the user: what was wrong and what to do."""


class UnknownNameError(BnlabError, ValueError):
    """A name (experiment, variant, norm layer, data set, ...) that bnlab does not know.

    The message lists the valid names, e.g. ``unknown norm 'bm'; expected one of: bn, none``.
    """

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.valid = tuple(valid)
        super().__init__(f"unknown {kind} {name!r}; expected one of: {', '.join(self.valid)}")
