"""image-fcn's report: the claims (population statistics not trainable, updated and printed
every epoch; the output image; denoising), the metrics and curves, the images and tables.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure as MplFigure

from bnlab.experiments.image_fcn.config import (
    COMPARISON_PNG,
    EPOCH_TAG,
    OUTPUT_PNG,
    PARAMETERS_JSON,
    POPULATION_TAG,
    POPULATION_TXT,
)
from bnlab.report.claims import describe
from bnlab.report.plots import PALETTE, png_bytes
from bnlab.report.results import ExperimentResults, RunRecord
from bnlab.report.spec import Block, Claim, Curve, Figure, Metric, Paragraph, Table, Verdict

__all__ = ["CLAIMS", "CURVES", "METRICS", "NOTES", "extra_blocks"]


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


#: Final metrics in the report's table.
METRICS: tuple[Metric, ...] = (
    Metric("output_psnr", "output PSNR (dB)", "float"),
    Metric("noisy_psnr", "noisy input PSNR (dB)", "float"),
    Metric("output_psnr_batch_stats", "output PSNR, batch stats (dB)", "float"),
    Metric("trainable_params", "trainable values", "int"),
    Metric("non_trainable_params", "population values", "int"),
    Metric("train_time_s", "training time", "seconds"),
)


#: Plots drawn from metrics.jsonl.
CURVES: tuple[Curve, ...] = (
    Curve(EPOCH_TAG, "train_loss", "Training loss (MSE, mean over each epoch)", "MSE", logy=True),
    Curve(EPOCH_TAG, "test_psnr", "Held-out photograph: PSNR after each epoch", "dB"),
)


#: Faithfulness notes: where bnlab departs from the seed, and why.
NOTES: tuple[str, ...] = (
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
)
