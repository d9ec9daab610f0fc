"""image-fcn's training: the photographs and their noisy batches, the network, PSNR, what is
trained and what is not, and ``run`` (train the denoiser, write the output image).
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn
from tqdm import tqdm

from bnlab.data import TrainBatches, load_image
from bnlab.data.datasets import Split
from bnlab.experiments.base import RunContext
from bnlab.experiments.image_fcn.config import (
    COMPARISON_PNG,
    EPOCH_TAG,
    INPUT_PNG,
    OUTPUT_PNG,
    PARAMETERS_JSON,
    POPULATION_TAG,
    POPULATION_TXT,
    TARGET_PNG,
    ImageFCNConfig,
)
from bnlab.models.fcn import ImageFCN
from bnlab.report.plots import png_bytes
from bnlab.train import Hook, Trainer
from bnlab.train.evaluate import eval_mode

__all__ = [
    "ImageSet",
    "NoisyImages",
    "build_model",
    "load_data",
    "load_images",
    "parameter_report",
    "psnr",
    "run",
    "square",
]


@dataclass(frozen=True)
class ImageSet:
    """Channels-last photographs: ``train`` ``(K, S, S, 3)``, ``test`` ``(1, S, S, 3)``."""

    train: Tensor
    test: Tensor
    train_names: tuple[str, ...]
    test_name: str


def square(image: Tensor, size: int) -> Tensor:
    """Center-crop a ``(3, H, W)`` image to a square and resize it to ``(size, size, 3)``.

    >>> square(torch.rand(3, 40, 60), 16).shape
    torch.Size([16, 16, 3])
    """
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[:, top : top + side, left : left + side]
    if side != size:
        crop = F.interpolate(
            crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0].clamp_(0.0, 1.0)
    return crop.permute(1, 2, 0).contiguous()


def load_images(config: ImageFCNConfig) -> ImageSet:
    """The training photographs and the held-out test photograph, ``(N, S, S, 3)`` in [0, 1].

    Names are :data:`bnlab.data.images.SKIMAGE_NAMES` or image files (``load_image``).
    """
    train = torch.stack([square(load_image(n), config.image_size) for n in config.train_images])
    test = square(load_image(config.test_image), config.image_size)[None]
    return ImageSet(train, test, tuple(config.train_images), config.test_image)


class NoisyImages:
    """Training batches ``(photo + noise, photo)`` in TF ``next_batch`` order, fresh noise each.

    The noise comes from torch's global generator, whose state the trainer checkpoints, so
    a resumed run draws the same noise as an uninterrupted one.

    Shape:
        each batch is ``(noisy (B, S, S, 3), clean (B, S, S, 3))``.
    """

    def __init__(self, images: Tensor, batch_size: int, noise_std: float, seed: int) -> None:
        self.images = images
        self.noise_std = noise_std
        labels = torch.arange(images.shape[0])
        # Split wants (N, C, H, W) float32; only the index order is used from it.
        self.batches = TrainBatches(
            Split(images.new_zeros(images.shape[0], 1, 1, 1), labels), batch_size, seed=seed
        )

    def next_batch(self) -> tuple[Tensor, Tensor]:
        _, index = self.batches.next_batch()
        clean = self.images.index_select(0, index)
        return clean + self.noise_std * torch.randn_like(clean), clean

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


def psnr(output: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: ``10 log10(1 / MSE)``.

    The output is clipped to [0, 1] first, as it is when written as an image.

    >>> round(psnr(torch.full((4,), 0.1), torch.zeros(4)), 6)
    20.0
    """
    mse = float(F.mse_loss(output.clamp(0.0, 1.0).double(), target.double()))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def build_model(config: ImageFCNConfig) -> ImageFCN:
    """The network of ``config`` (initialized from the current torch RNG)."""
    return ImageFCN(
        3,
        config.hidden_channels,
        config.kernel_size,
        batch_norm=config.batch_norm,
        output_norm=config.output_norm,
        residual=config.residual,
        zero_init_output=config.zero_init_output,
        bn_eps=config.bn_eps,
        bn_decay=config.bn_decay,
    )


def parameter_report(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What is trained and what is not: parameter names, buffer names, the optimizer's tensors.

    Returns ``{"trainable": {name: numel}, "non_trainable": {name: numel},
    "optimizer_tensors": n, "population_in_optimizer": bool}``; the last is whether any
    population-statistics buffer is among the tensors the optimizer updates.
    """
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return {
        "trainable": trainable,
        "non_trainable": {n: b.numel() for n, b in buffers.items()},
        "optimizer_tensors": len(optimized),
        "population_in_optimizer": any(id(b) in optimized for b in buffers.values()),
    }


def _population(model: nn.Module) -> dict[str, list[float]]:
    return {name: buffer.tolist() for name, buffer in model.named_buffers() if "pop_" in name}


def _format_population(epoch: int, stats: Mapping[str, list[float]]) -> list[str]:
    return [
        f"epoch {epoch:3d} {name}: " + " ".join(f"{v:+.4f}" for v in values)
        for name, values in stats.items()
    ]


def _image_png(image: Tensor) -> bytes:
    """A ``(S, S, 3)`` image in [0, 1] (clipped) as 8-bit RGB PNG bytes, full resolution."""
    from PIL import Image  # Pillow: a matplotlib dependency

    buffer = io.BytesIO()
    array = (image.clamp(0.0, 1.0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _comparison_png(panels: list[tuple[str, Tensor]]) -> bytes:
    fig = MplFigure(figsize=(4.0 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image.clamp(0.0, 1.0).numpy())
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def load_data(data_dir: Path | None, progress: bool) -> Any:
    """Nothing to load up front: the photographs depend on the config (see :func:`load_images`)."""
    del data_dir, progress
    return None


def run(config: ImageFCNConfig, data: Any, ctx: RunContext) -> dict[str, float]:
    """Train the denoiser; write the output image; return PSNRs and parameter counts.

    Logs after every epoch an ``epoch`` record (mean training loss of the epoch, test PSNR
    in inference mode) and a ``population`` record (``bn1.pop_mean_0``, ... every channel),
    prints the population statistics (``print_population``) and keeps them in
    ``artefacts/population_stats.txt``. Writes ``artefacts/output.png`` (the denoised test
    photograph, 512x512x3), ``input.png``, ``target.png``, ``comparison.png`` and
    ``parameters.json`` (trainable parameters vs population buffers).
    """
    del data
    return _run(config, ctx)


def _run(config: ImageFCNConfig, ctx: RunContext) -> dict[str, float]:
    images = load_images(config)
    torch.manual_seed(config.seed)
    model = build_model(config)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=config.adam_eps
    )
    params = parameter_report(model, optimizer)
    log: Callable[[str], None] = (
        (lambda line: tqdm.write(line, file=sys.stderr)) if config.print_population else _quiet
    )
    log(f"{ctx.desc}: trainable variables: {', '.join(params['trainable'])}")
    log(f"{ctx.desc}: not trainable (population statistics): {', '.join(params['non_trainable'])}")

    batches = NoisyImages(images.train, config.batch_size, config.noise_std, config.seed)
    steps_per_epoch = math.ceil(images.train.shape[0] / config.batch_size)
    # The test input: one fixed noise draw (its own generator), the same for every run.
    gen = torch.Generator().manual_seed(10_000 + config.seed)
    clean = images.test
    noisy = clean + config.noise_std * torch.randn(clean.shape, generator=gen)
    printed: list[str] = []
    losses: list[Tensor] = []

    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        loss = F.mse_loss(output, target)
        losses.append(loss.detach())  # the epoch's mean training loss, read at its end
        return loss

    def end_of_epoch(step: int) -> dict[str, float]:
        epoch = step // steps_per_epoch
        stats = _population(model)
        for line in _format_population(epoch, stats):
            log(line)
            printed.append(line)
        with eval_mode(model), torch.inference_mode():
            out = model(noisy)
        values = {
            "epoch": float(epoch),
            "train_loss": float(torch.stack(losses).mean()) if losses else math.nan,
            "test_psnr": psnr(out, clean),
        }
        losses.clear()
        population = {f"{n}_{i}": v for n, vs in stats.items() for i, v in enumerate(vs)}
        trainer.metrics.append(
            {"phase": "train", "tag": POPULATION_TAG, "step": step, **population}
        )
        return values

    trainer = Trainer(
        model,
        optimizer,
        loss_fn,
        batches,
        config.epochs * steps_per_epoch,
        run=ctx.run,
        hooks=(
            Hook(
                EPOCH_TAG,
                lambda h: end_of_epoch(h.step),
                lambda b: (b + 1) % steps_per_epoch == 0,
            ),
        ),
        checkpoint_every=steps_per_epoch,
        log_every=steps_per_epoch,
        progress=ctx.progress,
        desc=ctx.desc,
        is_main=ctx.is_main,
    )
    fit = trainer.fit()

    with eval_mode(model), torch.inference_mode():
        output = model(noisy)  # population statistics
    # For comparison, batch statistics of the test photograph itself; a training-mode call
    # moves the population statistics, so they are put back afterwards.
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.train()
        batch_output = model(noisy)
    model.load_state_dict(saved)
    metrics = {
        "noisy_psnr": psnr(noisy, clean),
        "output_psnr": psnr(output, clean),
        "output_psnr_batch_stats": psnr(batch_output, clean),
        "trainable_params": float(sum(params["trainable"].values())),
        "non_trainable_params": float(sum(params["non_trainable"].values())),
        "population_in_optimizer": float(params["population_in_optimizer"]),
        "train_time_s": fit.elapsed_s,
    }
    metrics["psnr_gain_db"] = metrics["output_psnr"] - metrics["noisy_psnr"]
    if ctx.is_main:
        run_dir = ctx.run
        run_dir.write_artefact(OUTPUT_PNG, _image_png(output[0]))
        run_dir.write_artefact(INPUT_PNG, _image_png(noisy[0]))
        run_dir.write_artefact(TARGET_PNG, _image_png(clean[0]))
        run_dir.write_artefact(
            COMPARISON_PNG,
            _comparison_png(
                [
                    (
                        f"input: {images.test_name} + noise ({metrics['noisy_psnr']:.2f} dB)",
                        noisy[0],
                    ),
                    ("target: the photograph", clean[0]),
                    (f"output, population stats ({metrics['output_psnr']:.2f} dB)", output[0]),
                ]
            ),
        )
        run_dir.write_artefact(POPULATION_TXT, ("\n".join(printed) + "\n").encode())
        run_dir.write_artefact(PARAMETERS_JSON, json.dumps(params, indent=2).encode())
    return metrics


def _quiet(line: str) -> None:
    del line
