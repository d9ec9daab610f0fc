"""sigmoid-mlp's config: the frozen :class:`SigmoidMLPConfig`, ``quick``, the variants, the
test-record tag that training writes and the report reads, and a rough run time
(:func:`cost_s`) for the scheduler.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bnlab.experiments.base import Variant, require
from bnlab.models.mlp import SIGMOID_MLP_NORMS

__all__ = ["TEST_TAG", "VARIANTS", "SigmoidMLPConfig", "cost_s", "group_cost_s", "quick"]

#: Test-set record tag: accuracy and sigmoid-input statistics every ``eval_every`` steps.
TEST_TAG = "test"


@dataclass(frozen=True)
class SigmoidMLPConfig:
    """One run of seed 001. Defaults: the seed's first BN-free network, 40,000 steps."""

    seed: int = 0  # fixes the predetermined weights and the batch order (same for all variants)
    # -- network --
    norm: str = "none"  # "none", "batch" (seed part 1 BN), "population" (batch_norm_wrapper)
    hidden: tuple[int, ...] = (100, 100)  # two hidden sigmoid layers of 100
    output_bias: bool = True  # b3; the seed's rebuilt (part 2) net declares b3 but never adds it
    weight_std: float = 1.0  # predetermined weights ~ N(0, 1) (np.random.normal)
    bn_eps: float = 1e-3  # the seed's epsilon
    pop_decay: float = 0.999  # batch_norm_wrapper's EMA decay ("closer to 1 if more data")
    # -- training --
    learning_rate: float = 0.01  # tf.train.GradientDescentOptimizer(0.01)
    batch_size: int = 60  # mnist.train.next_batch(60)
    num_steps: int = 40_000  # range(40000); part 2 trains 10,000
    # -- measurements --
    eval_every: int = 50  # if i % 50 is 0: the full 10,000-image test set
    probe_neurons: int = 5  # the first 5 neurons of layer 2 (the seed's 5x2 grid)
    percentiles: tuple[float, ...] = (15.0, 50.0, 85.0)  # BN2015 Fig. 1(b, c)
    single_image_count: int = 100  # the first 100 test images, one at a time
    eval_updates_population: bool = False  # the seed's part-2 evaluation also moved the EMA
    # -- engine --
    num_threads: int = 1  # intra-op threads; one is faster for these tiny steps
    checkpoint_every: int = 2000  # steps between checkpoints (resume point)
    log_every: int = 50  # steps between metric writes (one host sync per chunk)

    def __post_init__(self) -> None:
        require(
            self,
            at_least_one=(
                "batch_size",
                "num_steps",
                "eval_every",
                "probe_neurons",
                "single_image_count",
                "num_threads",
                "checkpoint_every",
                "log_every",
            ),
            positive=("weight_std", "bn_eps", "learning_rate"),
            fraction=("pop_decay",),
            choices={"norm": SIGMOID_MLP_NORMS},
        )
        if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in self.hidden):
            raise ValueError(f"SigmoidMLPConfig.hidden widths must be >= 1; got {self.hidden}")
        if len(self.hidden) < 2:
            raise ValueError(
                f"SigmoidMLPConfig.hidden needs at least 2 layers (layer 2 is probed); "
                f"got {self.hidden}"
            )
        if self.probe_neurons > self.hidden[1]:
            raise ValueError(
                f"SigmoidMLPConfig.probe_neurons must be <= the layer-2 width {self.hidden[1]}; "
                f"got {self.probe_neurons}"
            )
        if not all(0.0 <= p <= 100.0 for p in self.percentiles):
            raise ValueError(f"percentiles must lie in [0, 100]; got {self.percentiles}")


def quick(config: SigmoidMLPConfig) -> SigmoidMLPConfig:
    """Tiny sizes for ``--quick``: 120 steps, measured every 20, 10 single images."""
    return dataclasses.replace(
        config,
        num_steps=120,
        eval_every=20,
        single_image_count=10,
        checkpoint_every=60,
        log_every=20,
    )


# -- variants ---------------------------------------------------------------------------
_BASE = SigmoidMLPConfig()
VARIANTS: dict[str, Variant[SigmoidMLPConfig]] = {
    "no-bn": Variant(_BASE, "no batch norm: z = hW + b into each sigmoid; 40,000 steps"),
    "bn": Variant(
        dataclasses.replace(_BASE, norm="batch"),
        "batch norm with batch statistics only (the seed's first BN net): BN(hW) into each "
        "sigmoid; 40,000 steps; then the first 100 test images one at a time",
    ),
    "bn-population": Variant(
        dataclasses.replace(_BASE, norm="population", output_bias=False, num_steps=10_000),
        "the seed's batch_norm_wrapper: population statistics by EMA (decay 0.999); 10,000 "
        "steps; saved, rebuilt in inference mode, restored; first 100 test images one at a time",
    ),
}


def cost_s(config: SigmoidMLPConfig) -> float:
    """Rough seconds of one run on one thread of a quiet 2-core machine (measured: 0.0006 s
    per step without BN, 0.0007 s with it; 0.021 s per test-set measurement). An estimate
    only used for the scheduler's order."""
    step_s = 0.0006 if config.norm == "none" else 0.0007
    measurements = -(-config.num_steps // config.eval_every) + 1  # every(n), and the end
    return step_s * config.num_steps + 0.021 * measurements


def group_cost_s(config: SigmoidMLPConfig, count: int) -> float:
    """Rough seconds of ``count`` seeds trained as one group (``run_group``). Measured on
    one core, 3 seeds of ``no-bn`` at full size: the stacked steps take 0.78 of the separate
    runs' (the per-model sigmoid and batch-norm calls that keep it exact cost part of the
    gain), the test-set measurements as long as separately (compute-bound); 0.88 of the
    separate runs in all."""
    one = cost_s(config)
    return one if count <= 1 else 0.88 * count * one
