"""Experiment ``image-fcn`` (seed 003): low-level batch norm on channels-last image tensors in
a 2-layer fully convolutional net on 512x512x3 photographs, trained to denoise (input: photo
plus Gaussian noise; target: the photo). The output image is written to disk; the population
mean and variance are printed and recorded after every epoch.
"""

from __future__ import annotations

import dataclasses
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
from bnlab.experiments.base import ExperimentSpec, RunContext, Variant
from bnlab.models.fcn import ImageFCN
from bnlab.report.claims import describe
from bnlab.report.plots import PALETTE, png_bytes
from bnlab.report.results import ExperimentResults, RunRecord
from bnlab.report.spec import Block, Claim, Curve, Figure, Metric, Paragraph, Table, Verdict
from bnlab.train import Hook, Trainer
from bnlab.train.evaluate import eval_mode

__all__ = [
    "SPEC",
    "ImageFCNConfig",
    "ImageSet",
    "NoisyImages",
    "build_model",
    "load_images",
    "parameter_report",
    "psnr",
    "run",
]

EPOCH_TAG = "epoch"
POPULATION_TAG = "population"
#: Artefacts of a run (``artefacts/<name>``).
OUTPUT_PNG, INPUT_PNG, TARGET_PNG = "output.png", "input.png", "target.png"
COMPARISON_PNG, POPULATION_TXT, PARAMETERS_JSON = (
    "comparison.png",
    "population_stats.txt",
    "parameters.json",
)


@dataclass(frozen=True)
class ImageFCNConfig:
    """One run of seed 003 (denoising). The seed fixes the network; the target is ours."""

    seed: int = 0  # fixes the initial weights, the image order and the training noise
    # -- data --
    train_images: tuple[str, ...] = ("coffee", "chelsea", "rocket")  # skimage.data photos
    test_image: str = "astronaut"  # held out; its denoised version is the output image
    image_size: int = 512  # every image center-cropped to a square and resized to 512x512
    noise_std: float = 0.1  # Gaussian noise added to the [0, 1] pixels (PSNR about 20 dB)
    # -- network (2 conv layers, 3 -> 16 -> 3, BN after each, output = input + correction) --
    hidden_channels: int = 16
    kernel_size: int = 3
    batch_norm: bool = True  # low-level BN after the first convolution
    output_norm: bool = False  # and after the second (its gamma starts at full strength)
    residual: bool = True  # the net predicts a correction of its noisy input
    zero_init_output: bool = True  # conv2 starts at 0: the untrained net is the identity
    bn_eps: float = 1e-5  # the seed's example variance_epsilon
    bn_decay: float = 0.9  # weight of the old population value; ~100 updates in a run
    # -- training --
    learning_rate: float = 0.01  # Adam
    adam_eps: float = 1e-8  # TF1 AdamOptimizer default
    batch_size: int = 1  # photographs per step (each 512x512: 262,144 values per channel)
    epochs: int = 30  # passes over the training photographs
    print_population: bool = True  # print the population statistics after every epoch
    # -- engine --
    num_threads: int = 2  # intra-op threads (the convolutions are large enough for two)

    def __post_init__(self) -> None:
        for name in ("image_size", "hidden_channels", "batch_size", "epochs", "num_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"ImageFCNConfig.{name} must be >= 1; got {getattr(self, name)}")
        if not self.train_images:
            raise ValueError("ImageFCNConfig.train_images must name at least one image")
        if self.batch_size > len(self.train_images):
            raise ValueError(
                f"ImageFCNConfig.batch_size ({self.batch_size}) cannot exceed the number of "
                f"training images ({len(self.train_images)})"
            )
        if self.noise_std < 0:
            raise ValueError(f"ImageFCNConfig.noise_std must be >= 0; got {self.noise_std}")


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


def quick(config: ImageFCNConfig) -> ImageFCNConfig:
    """Tiny sizes for ``--quick``: 64x64 images, 2 training photographs, 3 epochs."""
    return dataclasses.replace(
        config, image_size=64, train_images=config.train_images[:2], epochs=3, batch_size=1
    )


# -- variants ---------------------------------------------------------------------------
VARIANTS: dict[str, Variant[ImageFCNConfig]] = {
    "bn": Variant(
        ImageFCNConfig(),
        "denoiser: conv 3x3 (3->16) + low-level channels-last BN + ReLU, conv 3x3 (16->3), "
        "plus the input; Adam 0.01; 30 epochs over 3 photographs (512x512, batch 1)",
    ),
}


# -- report -----------------------------------------------------------------------------
def _artefact(run: RunRecord, name: str) -> Path:
    return run.path / "artefacts" / name


def _params_check(results: ExperimentResults) -> Verdict:
    runs = results.complete("bn")
    if not runs:
        return Verdict("no finished run", None)
    found = []
    for run in runs:
        path = _artefact(run, PARAMETERS_JSON)
        if not path.is_file():
            return Verdict(f"{path} is missing", None)
        found.append(json.loads(path.read_text(encoding="utf-8")))
    trainable = found[0]["trainable"]
    population = [n for n in found[0]["non_trainable"] if "pop_" in n]
    leaked = [n for p in found for n in p["trainable"] if "pop_" in n]
    in_optimizer = any(p["population_in_optimizer"] for p in found)
    measured = (
        f"trainable ({sum(trainable.values())} values): {', '.join(trainable)}; not trainable: "
        f"{', '.join(population)}; population tensors among the optimizer's: "
        f"{'yes' if in_optimizer else 'none'} (n={len(found)})"
    )
    return Verdict(measured, bool(population) and not leaked and not in_optimizer)


def _population_check(results: ExperimentResults) -> Verdict:
    runs = results.complete("bn")
    if not runs:
        return Verdict("no finished run", None)
    counts = []
    for run in runs:
        records = [r for r in run.log if r.get("tag") == POPULATION_TAG]
        epochs = int(run.config.get("epochs", 0))
        printed = _artefact(run, POPULATION_TXT)
        lines = printed.read_text(encoding="utf-8").count("\n") if printed.is_file() else 0
        counts.append((len(records), epochs, lines))
    measured = "; ".join(
        f"{records} per-epoch records for {epochs} epochs, {lines} printed lines"
        for records, epochs, lines in counts
    )
    return Verdict(measured, all(r == e and e > 0 and n > 0 for r, e, n in counts))


def _output_check(results: ExperimentResults) -> Verdict:
    runs = results.complete("bn")
    if not runs:
        return Verdict("no finished run", None)
    shapes = []
    for run in runs:
        path = _artefact(run, OUTPUT_PNG)
        if not path.is_file():
            return Verdict(f"{path} is missing", False)
        from PIL import Image

        with Image.open(path) as image:
            shapes.append((image.height, image.width, len(image.getbands())))
    size = int(runs[0].config.get("image_size", 512))
    measured = "output.png: " + ", ".join("x".join(str(d) for d in s[:3]) for s in shapes)
    return Verdict(measured, all(s == (size, size, 3) for s in shapes))


def _denoise_check(results: ExperimentResults) -> Verdict:
    gains = results.values("bn", "psnr_gain_db")
    if not gains:
        return Verdict("no finished run", None)
    measured = (
        describe("PSNR gain on the held-out photograph (dB)", gains, "float", worst="min")
        + "; "
        + describe("output PSNR", results.values("bn", "output_psnr"), "float")
        + " vs "
        + describe("noisy input PSNR", results.values("bn", "noisy_psnr"), "float")
    )
    return Verdict(measured, all(g > 1.0 for g in gains))


CLAIMS = (
    Claim(
        "The moving mean and variance are not trainable: printing the trainable variables "
        "does not show them.",
        _params_check,
        "every run: no pop_* tensor among the parameters or the optimizer's tensors, and "
        "the population statistics exist as buffers",
        short="population statistics are not trainable",
    ),
    Claim(
        "The population mean and variance are updated on every training call and can be "
        "printed after each epoch to see how they change.",
        _population_check,
        "every run: one population record per epoch in metrics.jsonl and the printed lines "
        "in artefacts/population_stats.txt",
        short="population statistics updated every training call, printed per epoch",
    ),
    Claim(
        "The output is a 512x512x3 tensor, saved as an image and viewable.",
        _output_check,
        "every run: artefacts/output.png is an RGB image of the configured size (512x512)",
        short="the 512x512x3 output is saved as a viewable image",
    ),
    Claim(
        "(Our target) Trained to denoise, the network improves a held-out noisy photograph "
        "in inference mode (population statistics).",
        _denoise_check,
        "every run: output PSNR > noisy-input PSNR + 1 dB on the held-out photograph",
        short="(our target) denoising improves a held-out photograph",
    ),
)


def _population_figure(run: RunRecord) -> Figure | None:
    records = [r for r in run.log if r.get("tag") == POPULATION_TAG]
    if not records:
        return None
    layers = sorted({k.rsplit("_", 1)[0].rsplit(".", 1)[0] for k in records[0] if "pop_" in k})
    fig = MplFigure(figsize=(10.0, 3.2 * len(layers)))
    axes = fig.subplots(len(layers), 2, squeeze=False)
    epochs = list(range(1, len(records) + 1))
    for row, layer in enumerate(layers):
        for col, stat in enumerate(("pop_mean", "pop_variance")):
            ax = axes[row][col]
            keys = sorted(
                (k for k in records[0] if k.startswith(f"{layer}.{stat}_")),
                key=lambda k: int(k.rsplit("_", 1)[1]),
            )
            for i, key in enumerate(keys):
                ax.plot(
                    epochs,
                    [r[key] for r in records],
                    color=PALETTE[i % len(PALETTE)],
                    linewidth=1.0,
                )
            ax.set_title(f"{layer}.{stat} (one line per channel)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return Figure(
        png_bytes(fig),
        f"Population mean and variance after every epoch (seed {run.seed}); they start at 0 "
        "and 1 and move toward the batch statistics on every training call.",
        "population-stats",
    )


def extra_blocks(results: ExperimentResults) -> list[Block]:
    """Input / target / output side by side, the population statistics, the parameters."""
    runs = results.complete("bn")
    if not runs:
        return [Paragraph("No finished run yet.")]
    run = runs[0]
    blocks: list[Block] = [
        Paragraph(
            "Training target (the seed leaves it open): denoising. Input = photograph + "
            f"Gaussian noise (std {run.config.get('noise_std')} on [0, 1] pixels), target = "
            f"the photograph; trained on {', '.join(run.config.get('train_images', []))}, "
            f"shown on the held-out {run.config.get('test_image')}. The output image is "
            f"{_artefact(run, OUTPUT_PNG)}."
        )
    ]
    comparison = _artefact(run, COMPARISON_PNG)
    if comparison.is_file():
        blocks.append(
            Figure(
                comparison.read_bytes(),
                f"Input, target and output (inference mode, population statistics), seed "
                f"{run.seed}; PSNR against the target in the titles.",
                "denoising",
            )
        )
    figure = _population_figure(run)
    if figure is not None:
        blocks.append(figure)
    printed = _artefact(run, POPULATION_TXT)
    if printed.is_file():
        lines = printed.read_text(encoding="utf-8").splitlines()
        last = [line for line in lines if line.startswith(lines[-1].split(" bn")[0])]
        blocks.append(
            Table(
                ("printed after the last epoch",),
                tuple((line,) for line in last),
                f"Population statistics as printed (all epochs: {printed})",
            )
        )
    params = _artefact(run, PARAMETERS_JSON)
    if params.is_file():
        data = json.loads(params.read_text(encoding="utf-8"))
        rows = [(n, str(k), "yes") for n, k in data["trainable"].items()]
        rows += [(n, str(k), "no (buffer)") for n, k in data["non_trainable"].items()]
        blocks.append(Table(("tensor", "values", "trainable"), tuple(rows), "Parameters"))
    return blocks


SPEC: ExperimentSpec[ImageFCNConfig, Any] = ExperimentSpec(
    name="image-fcn",
    title="low-level batch norm on channels-last images in a 2-layer FCN (seed 003)",
    seed_file="003_7ba25a7c5795a2c0.txt",
    summary=(
        "A 2-layer fully convolutional network on 512x512x3 RGB photographs (skimage.data) "
        "whose output is a 512x512x3 image; batch norm written the low-level way on "
        "channels-last (N, H, W, C) tensors: statistics over N, H, W per channel, gamma and "
        "beta trainable, population mean and variance as non-trainable buffers updated on "
        "every training call. Our training target: denoising (photo + Gaussian noise -> "
        "photo)."
    ),
    variants=VARIANTS,
    load_data=load_data,
    run=run,
    quick=quick,
    metrics=(
        Metric("output_psnr", "output PSNR (dB)", "float"),
        Metric("noisy_psnr", "noisy input PSNR (dB)", "float"),
        Metric("output_psnr_batch_stats", "output PSNR, batch stats (dB)", "float"),
        Metric("trainable_params", "trainable values", "int"),
        Metric("non_trainable_params", "population values", "int"),
        Metric("train_time_s", "training time", "seconds"),
    ),
    curves=(
        Curve(
            EPOCH_TAG, "train_loss", "Training loss (MSE, mean over each epoch)", "MSE", logy=True
        ),
        Curve(EPOCH_TAG, "test_psnr", "Held-out photograph: PSNR after each epoch", "dB"),
    ),
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=(
        "The seed describes the network (2 conv layers, 512x512x3 in and out, tf.nn "
        "batch norm with explicit moving statistics) but not its data or target; the "
        "denoising task, the 16 hidden channels, the residual output (input + correction, "
        "the second convolution starting at zero so the untrained net is the identity), BN "
        "after the first convolution only (output_norm=True adds one after the second; "
        "measured: it starts the correction at full strength and trains slower), Adam 0.01, "
        "decay 0.9 and 30 epochs are bnlab's choices, sized to train in about a minute per "
        "seed on 2 CPU cores.",
        "Photographs that are not square are center-cropped and resized to 512x512 "
        "(antialiased bilinear). The test photograph is never trained on.",
        "The population variance is updated with the unbiased batch variance (m/(m-1) with "
        "m = 262,144 values per channel per image; the seed's tf.nn.moments gives the biased "
        "one; the two differ by 4e-6 relative).",
    ),
    flush_denormal=True,
)
