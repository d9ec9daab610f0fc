"""mlp-solver's training: the seed's ``Model`` (network, loss, optimizer) and ``Solver``
(train step, batched evaluation, fit), and ``run`` (one of the two networks, one seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnlab.data import TrainBatches
from bnlab.experiments.base import RunContext
from bnlab.experiments.mlp_solver.config import EPOCH_TAG, MLPSolverConfig
from bnlab.models.mlp import build_mlp
from bnlab.train import BatchSource, FitResult, Hook, Trainer, evaluate
from bnlab.train.rundir import RunDir

__all__ = ["Model", "Solver", "run"]


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
        fused_adam: bool = False,
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
            self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=adam_eps, fused=fused_adam
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
        fused_adam=config.fused_adam,
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
