"""Progress bars for long work: tqdm on stderr, off when stderr is not a terminal or when asked."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_enabled(requested: bool | None = None) -> bool:
    """Return whether to draw progress bars.

    Args:
        requested: ``False`` disables them; ``True`` or ``None`` enables them when stderr is a
            terminal (a bar written into a log file is noise, so a request cannot force it).
    """
    if requested is False:
        return False
    return sys.stderr.isatty()


def progress_bar(
    total: int, desc: str, *, enabled: bool, initial: int = 0, unit: str = "step"
) -> Any:
    """Return a tqdm bar on stderr (a disabled one when ``enabled`` is false).

    >>> bar = progress_bar(10, "demo", enabled=False)
    >>> bar.update(3)
    >>> bar.close()
    """
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
