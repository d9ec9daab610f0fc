"""Experiment ``mlp-solver`` (seed 002): the Model/Solver split, a 784-32-32-10 ReLU MLP with
and without batch norm trained side by side on the same batches (Adam 0.01, batch 32, 10
epochs), per-epoch train/validation loss and accuracy, and the final test comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import ExperimentSpec, RunContext, Variant, load_mnist_data
from bnlab.models.mlp import build_mlp
from bnlab.report.claims import Threshold, against_reference, final, paired, paired_runs
from bnlab.report.reference import REFERENCE_FILES, Reference, SeriesReference
from bnlab.report.results import ExperimentResults
from bnlab.report.spec import Claim, Curve, Metric, Verdict
from bnlab.train import BatchSource, FitResult, Hook, Trainer, evaluate
from bnlab.train.rundir import RunDir

__all__ = ["SPEC", "MLPSolverConfig", "Model", "Solver", "run"]

#: Per-epoch record tag: train and validation loss and accuracy.
EPOCH_TAG = "epoch"


class Model:
    """The seed's ``Model``: the network, its loss, its optimizer and its accuracy in one place.

    The seed's class builds a TF graph under ``tf.variable_scope(name)``; here the network is
    :func:`bnlab.models.mlp.build_mlp` and the training op is an Adam optimizer over its
    parameters. Swapping the network means swapping this class; the :class:`Solver` stays.

    Args:
        name: the network's name (the seed's variable scope).
        input_dim, output_dim: 784 and 10.
        hidden_dims: the hidden widths (``[32, 32]``).
        use_batchnorm: a batch-norm layer after each hidden dense layer.
        activation: ``"relu"`` (the seed's ``tf.nn.relu``), ``"sigmoid"`` or ``"tanh"``.
        lr: Adam's learning rate (0.01); adam_eps: TF1's epsilon 1e-8.
        bn_eps, bn_decay: ``tf.layers.batch_normalization``'s epsilon 1e-3 and decay 0.99.

    >>> model = Model("batchnorm", 784, 10, use_batchnorm=True)
    >>> model.net(torch.rand(2, 784)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        name: str,
        input_dim: int,
        output_dim: int,
        hidden_dims: Sequence[int] = (32, 32),
        *,
        use_batchnorm: bool = True,
        activation: str = "relu",
        lr: float = 0.01,
        adam_eps: float = 1e-8,
        bn_eps: float = 1e-3,
        bn_decay: float = 0.99,
    ) -> None:
        self.name = name
        self.net = build_mlp(
            input_dim,
            output_dim,
            hidden_dims,
            use_batchnorm=use_batchnorm,
            activation=activation,
            bn_eps=bn_eps,
            bn_decay=bn_decay,
        )
        # The seed's loss: reduce_mean(softmax_cross_entropy_with_logits(logits, one_hot)).
        self.loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
        self.optimizer = torch.optim.Adam(
            self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=adam_eps
        )


class Solver:
    """The seed's ``Solver``: trains a :class:`Model` and evaluates it, in batches if asked.

    ``train`` runs one optimizer step in training mode (batch statistics, population
    statistics updated: the seed's ``UPDATE_OPS`` dependency) and returns the loss;
    ``evaluate`` runs in inference mode (population statistics) and returns
    ``(loss, accuracy)``, computed in chunks of ``batch_size`` and weighted by chunk size
    exactly as the seed does; ``fit`` runs many steps with bnlab's :class:`Trainer`
    (checkpoints, resume, metrics log), the same step as ``train``.

    >>> solver = Solver(Model("bn", 784, 10))
    >>> x, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
    >>> loss = solver.train(x, y)
    >>> loss_, acc = solver.evaluate(x, y, batch_size=10)
    >>> 0.0 <= acc <= 1.0
    True
    """

    def __init__(self, model: Model) -> None:
        self.model = model

    def train(self, x: Tensor, y: Tensor) -> float:
        """One optimizer step on ``(x, y)``; return the batch loss."""
        net = self.model.net
        net.train()
        loss = self.model.loss_fn(net(x), y)
        self.model.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.model.optimizer.step()
        return float(loss.detach())

    def evaluate(self, x: Tensor, y: Tensor, batch_size: int | None = None) -> tuple[float, float]:
        """``(loss, accuracy)`` of the model on ``(x, y)`` in inference mode.

        With ``batch_size`` the set is evaluated in chunks and the chunk values are averaged
        weighted by chunk size (the seed's loop); without it, in one batch. In inference
        mode both give the same numbers.
        """
        result = evaluate(
            self.model.net,
            x,
            y,
            self.model.loss_fn,
            batch_size=batch_size if batch_size is not None else max(1, len(y)),
        )
        return result["loss"], result["accuracy"]

    def fit(
        self,
        batches: BatchSource,
        num_steps: int,
        *,
        run: RunDir | None = None,
        hooks: Sequence[Hook] = (),
        **trainer_options: Any,
    ) -> FitResult:
        """Run ``num_steps`` steps of :meth:`train` with bnlab's :class:`Trainer`."""
        trainer = Trainer(
            self.model.net,
            self.model.optimizer,
            self.model.loss_fn,
            batches,
            num_steps,
            run=run,
            hooks=hooks,
            **trainer_options,
        )
        return trainer.fit()


@dataclass(frozen=True)
class MLPSolverConfig:
    """One run of seed 002 (one of its two networks). Defaults: the seed's BN network."""

    seed: int = 0  # fixes the initial weights and the batch order (both nets see the same)
    # -- network (the seed's Model) --
    use_batchnorm: bool = True  # Model(..., use_batchnorm=True) / False
    hidden_dims: tuple[int, ...] = (32, 32)  # hidden_dims=[32, 32]
    activation: str = "relu"  # activation_fn=tf.nn.relu
    bn_eps: float = 1e-3  # tf.layers.batch_normalization default
    bn_decay: float = 0.99  # its momentum (TF decay), PyTorch momentum 0.01
    # -- training --
    learning_rate: float = 0.01  # tf.train.AdamOptimizer(0.01)
    adam_eps: float = 1e-8  # TF1 AdamOptimizer default
    batch_size: int = 32  # batch_size = 32
    epochs: int = 10  # epoch_n = 10, each of N // batch_size steps (N = 55,000: 1,718)
    train_eval_batch_size: int = 32  # the seed evaluates the training set in batches of 32
    # -- engine --
    num_threads: int = 1  # intra-op threads; one is faster for these tiny steps
    log_every: int = 859  # steps between metric writes (half an epoch of the real data)

    def __post_init__(self) -> None:
        for name in ("batch_size", "epochs", "train_eval_batch_size", "num_threads", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"MLPSolverConfig.{name} must be >= 1; got {getattr(self, name)}")


def run(config: MLPSolverConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train one of the seed's two networks; return its final metrics.

    Logs an ``epoch`` record after every epoch (the seed's ``N // batch_size`` steps):
    training-set loss and accuracy (inference mode, in batches of ``train_eval_batch_size``)
    and validation loss and accuracy (one batch). Final metrics: the last epoch's values and
    the test loss and accuracy.
    """
    return _run(config, data, ctx)


def _run(config: MLPSolverConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    train, val, test = data.train, data.validation, data.test
    steps_per_epoch = len(train) // config.batch_size  # for _ in range(N // batch_size)
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training set ({len(train)} images) is smaller than one batch "
            f"({config.batch_size})"
        )
    torch.manual_seed(config.seed)
    name = "batchnorm" if config.use_batchnorm else "no_norm"
    model = Model(
        name,
        int(train.flat().shape[1]),
        data.num_classes,
        config.hidden_dims,
        use_batchnorm=config.use_batchnorm,
        activation=config.activation,
        lr=config.learning_rate,
        adam_eps=config.adam_eps,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
    )
    solver = Solver(model)
    batches = TrainBatches(train, config.batch_size, seed=config.seed)

    def end_of_epoch() -> dict[str, float]:
        t_loss, t_acc = solver.evaluate(
            train.images, train.labels, batch_size=config.train_eval_batch_size
        )
        values = {"train_loss": t_loss, "train_accuracy": t_acc}
        if len(val):
            v_loss, v_acc = solver.evaluate(val.images, val.labels)
            values.update(validation_loss=v_loss, validation_accuracy=v_acc)
        return values

    num_steps = config.epochs * steps_per_epoch
    fit = solver.fit(
        batches,
        num_steps,
        run=ctx.run,
        hooks=(
            Hook(EPOCH_TAG, lambda _h: end_of_epoch(), lambda b: (b + 1) % steps_per_epoch == 0),
        ),
        checkpoint_every=steps_per_epoch,
        log_every=min(config.log_every, steps_per_epoch),
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    last = end_of_epoch()
    test_loss, test_acc = solver.evaluate(test.images, test.labels)
    return {
        **{f"final_{k}": v for k, v in last.items()},
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "steps_per_epoch": float(steps_per_epoch),
        "train_time_s": fit.elapsed_s,
    }


def quick(config: MLPSolverConfig) -> MLPSolverConfig:
    """Tiny sizes for ``--quick``: 2 epochs."""
    return dataclasses.replace(config, epochs=2, log_every=50)


# -- variants ---------------------------------------------------------------------------
VARIANTS: dict[str, Variant[MLPSolverConfig]] = {
    "bn": Variant(
        MLPSolverConfig(), "Model('batchnorm'): dense, tf.layers batch norm, ReLU (x2), dense 10"
    ),
    "no-bn": Variant(
        MLPSolverConfig(use_batchnorm=False), "Model('no_norm'): dense, ReLU (x2), dense 10"
    ),
}


def _paired_check(key: str, better: str) -> Callable[[ExperimentResults], Verdict]:
    """Per seed (same initial batches), bn's ``key`` is higher (``better="higher"``) or lower."""

    def check(results: ExperimentResults) -> Verdict:
        pairs = [
            (bn.seed, bn.metric(key), plain.metric(key))
            for bn, plain in paired_runs(results, "bn", "no-bn")
        ]
        pairs_ok = [(s, a, b) for s, a, b in pairs if a is not None and b is not None]
        if not pairs_ok:
            return Verdict("no seed with both bn and no-bn finished", None)
        pct = key.endswith("accuracy")
        shown = ", ".join(
            f"seed {s}: {100 * a:.2f}% vs {100 * b:.2f}%"
            if pct
            else f"seed {s}: {a:.4f} vs {b:.4f}"
            for s, a, b in pairs_ok
        )
        holds = all((a > b) if better == "higher" else (a < b) for _, a, b in pairs_ok)
        return Verdict(f"bn vs no-bn, {shown}", holds)

    return check


#: The seed's own TF1 code over several random seeds (shipped in
#: ``bnlab/report/reference_runs``, measured by ``scripts/reference/measure.sh 002``).
REFERENCE_FILE = REFERENCE_FILES["002"]
_STEPS_PER_EPOCH = 55_000 // 32  # the seed's N // batch_size (1,718)


def _reference_epochs(key: str, column: int) -> Callable[[dict[str, Any]], dict[int, float]]:
    """A reference run's per-epoch ``key`` (``valid_accs`` ...; column 0: BN, 1: no BN) by
    bnlab step: after epoch e is step (e + 1) * 1,718."""

    def series(record: dict[str, Any]) -> dict[int, float]:
        return {
            (e + 1) * _STEPS_PER_EPOCH: float(pair[column])
            for e, pair in enumerate(record.get(key, []))
        }

    return series


def _epoch_references(key: str) -> tuple[SeriesReference, ...]:
    return (
        SeriesReference(
            REFERENCE_FILE,
            _reference_epochs(key, 0),
            label="seed's own TF1 code, with BN",
            variant="bn",
        ),
        SeriesReference(
            REFERENCE_FILE,
            _reference_epochs(key, 1),
            label="seed's own TF1 code, without BN",
            variant="no-bn",
        ),
    )


def _difference(a: str, b: str) -> Callable[[dict[str, Any]], float | None]:
    """A reference run's ``a - b`` (e.g. BN's test accuracy minus no-BN's, same run)."""

    def value(record: dict[str, Any]) -> float | None:
        x, y = record.get(a), record.get(b)
        return float(x) - float(y) if isinstance(x, float) and isinstance(y, float) else None

    return value


CLAIMS = (
    Claim(
        "With batch normalization the test accuracy is higher (seed: 0.9713 with BN vs 0.9449 "
        "without).",
        against_reference(
            paired("bn", "no-bn", "test_accuracy", "bn − no-bn: test accuracy (same seed)"),
            Reference(
                REFERENCE_FILE,
                _difference("bn_test_accuracy", "nn_test_accuracy"),
                label="BN − no BN, same run",
            ),
            literal=_paired_check("test_accuracy", "higher"),
        ),
        "bn's test-accuracy lead over no-bn (same seed, same batches) vs the original's "
        "(permutation test, level 0.05); literal: every seed, bn > no-bn",
        short="BN: higher test accuracy than no BN",
    ),
    Claim(
        "With batch normalization the test loss is lower (seed: 0.106 vs 0.237).",
        against_reference(
            paired("bn", "no-bn", "test_loss", "bn − no-bn: test loss (same seed)"),
            Reference(
                REFERENCE_FILE,
                _difference("bn_test_loss", "nn_test_loss"),
                label="BN − no BN, same run",
            ),
            literal=_paired_check("test_loss", "lower"),
            better="lower",
            fmt="float",
        ),
        "bn's test loss minus no-bn's (same seed) vs the original's (permutation test, "
        "level 0.05); literal: every seed, bn < no-bn",
        short="BN: lower test loss than no BN",
    ),
    Claim(
        "The BN network reaches about 97% test accuracy after 10 epochs.",
        against_reference(
            final("bn", "test_accuracy", "bn: test accuracy after 10 epochs"),
            Reference(REFERENCE_FILE, ("bn_test_accuracy",), label="with BN"),
            literal=Threshold(above=0.96),
        ),
        "bn's test accuracy vs the original's (permutation test, level 0.05); literal: > 96%",
        short="BN: about 97% test accuracy after 10 epochs",
    ),
)

SPEC: ExperimentSpec[MLPSolverConfig, Any] = ExperimentSpec(
    name="mlp-solver",
    title="a Model/Solver MLP with and without batch norm (seed 002)",
    seed_file="002_c1fa4b20844069e9.txt",
    summary=(
        "MNIST 784-32-32-10 ReLU, built by a Model class (tf.layers.dense, optional "
        "tf.layers.batch_normalization) and trained by a Solver (train step, batched "
        "evaluation); softmax cross-entropy; Adam 0.01; batch 32; 10 epochs of 55,000 // 32 "
        "steps, both networks on the same batches; training and validation loss and accuracy "
        "after every epoch; final test loss and accuracy."
    ),
    variants=VARIANTS,
    load_data=load_mnist_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("test_accuracy", "test acc.", "pct"),
        Metric("test_loss", "test loss", "float"),
        Metric("final_train_accuracy", "train acc. (epoch 10)", "pct"),
        Metric("final_validation_accuracy", "validation acc. (epoch 10)", "pct"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            EPOCH_TAG,
            "train_loss",
            "Training Loss at Epoch",
            "loss",
            references=_epoch_references("train_losses"),
        ),
        Curve(
            EPOCH_TAG,
            "train_accuracy",
            "Training Acc at Epoch",
            "accuracy",
            fmt="pct",
            references=_epoch_references("train_accs"),
        ),
        Curve(
            EPOCH_TAG,
            "validation_loss",
            "Validation Loss at Epoch",
            "loss",
            references=_epoch_references("valid_losses"),
        ),
        Curve(
            EPOCH_TAG,
            "validation_accuracy",
            "Validation Acc at Epoch",
            "accuracy",
            fmt="pct",
            references=_epoch_references("valid_accs"),
        ),
    ),
    claims=CLAIMS,
    notes=(
        "TF-faithful presets: glorot-uniform kernels and zero biases (tf.layers.dense keeps "
        "its bias before BN, as the seed's code does), BN epsilon 1e-3 and decay 0.99, Adam "
        "epsilon 1e-8 (TF1); the two networks of a seed see the same batches (TF next_batch "
        "order fixed by the seed). Epoch curves are plotted against optimizer steps "
        "(1,718 per epoch).",
        "bnlab's BatchNorm1d tracks the unbiased batch variance in its running variance; TF's "
        "non-fused tf.layers path on 2-D input tracks the biased one. With batches of 32 the "
        "two differ by a factor 32/31 in the variance used at inference.",
        "As in the seed, the training set is evaluated in inference mode in batches of 32 "
        "and the validation and test sets in one batch; in inference mode the result does "
        "not depend on the chunking.",
    ),
)
