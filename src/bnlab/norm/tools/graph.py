"""Where a model's layers feed each other, read from its ``torch.fx`` graph.

:func:`find_pairs` lists the (producer, consumer) module pairs that model transforms
rewrite (conv/linear -> BN for folding) wherever they occur: inside ``nn.Sequential``,
in a custom ``forward``, across residual blocks. A model FX cannot trace (data-dependent
control flow) falls back to adjacent children of ``nn.Sequential``, and the reason is
reported.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from bnlab.norm.layers.act import RewriteWarning

__all__ = ["FoldWarning", "Pair", "RewriteReport", "find_pairs"]


class FoldWarning(RewriteWarning):
    """``fold_bn`` left some layers as they were; the text says why."""


@dataclass(frozen=True)
class Pair:
    """``second`` consumes ``first``'s output, and nothing else does.

    Attributes:
        first: qualified name of the producing module.
        second: qualified name of the consuming module.
    """

    first: str
    second: str


@dataclass
class RewriteReport:
    """What a model transform did: each change, and each candidate left alone with why.

    Attributes:
        transform: the rewrite's name (``"fold_bn"``).
        done: one line per change (e.g. ``"conv1 <- bn1"``).
        left: layer name -> why it was left as it was.
        traced: False when FX could not trace the model (then ``fallback`` says why, and
            only adjacent children of ``nn.Sequential`` were considered).
    """

    transform: str
    done: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)
    traced: bool = True
    fallback: str = ""

    def __str__(self) -> str:
        lines = [f"{self.transform}: {len(self.done)} done, {len(self.left)} left"]
        if not self.traced:
            lines.append(f"  (torch.fx could not trace the model: {self.fallback})")
        lines += [f"  done  {line}" for line in self.done]
        lines += [f"  left  {name}: {why}" for name, why in self.left.items()]
        return "\n".join(lines)


class _Tracer(torch.fx.Tracer):
    """Keeps ``leaf`` modules whole (one ``call_module`` node each)."""

    def __init__(self, leaf: Callable[[nn.Module], bool]) -> None:
        super().__init__()
        self._leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._leaf(m) or super().is_leaf_module(m, module_qualified_name)


def find_pairs(
    model: nn.Module,
    first: Callable[[nn.Module], bool],
    second: Callable[[nn.Module], bool],
    report: RewriteReport,
) -> list[Pair]:
    """The pairs ``first -> second`` in ``model`` where ``second`` is ``first``'s only consumer.

    Args:
        model: the model to read (not changed).
        first: which modules produce (e.g. conv/linear, or batch norm).
        second: which modules consume (e.g. batch norm).
        report: gets ``traced``/``fallback`` set when FX cannot trace the model.

    Each module of a pair is called exactly once in the model (a shared layer would change
    at its other uses too). Producers with no qualifying consumer are not listed here;
    the transforms record their reasons.
    """

    def leaf(m: nn.Module) -> bool:
        return first(m) or second(m)

    try:
        graph = _Tracer(leaf).trace(model)
    except Exception as err:  # FX raises many types for untraceable code
        report.traced = False
        report.fallback = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return _sequential_pairs(model, first, second)
    modules = dict(model.named_modules())
    calls = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not first(modules[str(node.target)]):
            continue
        if calls[str(node.target)] != 1 or len(node.users) != 1:
            continue
        (user,) = node.users
        if (
            user.op == "call_module"
            and second(modules[str(user.target)])
            and user.args
            and user.args[0] is node
            and calls[str(user.target)] == 1
        ):
            pairs.append(Pair(str(node.target), str(user.target)))
    return pairs


def _sequential_pairs(
    model: nn.Module,
    first: Callable[[nn.Module], bool],
    second: Callable[[nn.Module], bool],
) -> list[Pair]:
    """Adjacent ``(first, second)`` children of every ``nn.Sequential`` (the fallback)."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    pairs = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        for a, b in itertools.pairwise(module._modules.items()):
            (name_a, mod_a), (name_b, mod_b) = a, b
            if mod_a is None or mod_b is None or not first(mod_a):
                continue
            if second(mod_b) and uses[id(mod_a)] == 1 and uses[id(mod_b)] == 1:
                dot = f"{prefix}." if prefix else ""
                pairs.append(Pair(dot + name_a, dot + name_b))
    return pairs
