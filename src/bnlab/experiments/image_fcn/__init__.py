"""Experiment ``image-fcn`` (seed 003): low-level batch norm on channels-last image tensors in
a 2-layer fully convolutional net on 512x512x3 photographs, trained to denoise (input: photo
plus Gaussian noise; target: the photo). The output image is written to disk; the population
mean and variance are printed and recorded after every epoch.

Parts, importing only downward: ``config`` (config, ``quick``, variant, tags, cost
estimate), ``run`` (images, network, ``run``), ``report`` (claims, curves, blocks); ``SPEC`` here.
"""

from __future__ import annotations

from typing import Any

from bnlab.experiments.base import ExperimentSpec
from bnlab.experiments.image_fcn.config import VARIANTS, ImageFCNConfig, cost_s, quick
from bnlab.experiments.image_fcn.report import CLAIMS, CURVES, METRICS, NOTES, extra_blocks
from bnlab.experiments.image_fcn.run import (
    ImageSet,
    NoisyImages,
    build_model,
    load_data,
    load_images,
    parameter_report,
    psnr,
    run,
)
from bnlab.experiments.image_fcn.run import square as square

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
    metrics=METRICS,
    curves=CURVES,
    claims=CLAIMS,
    extra_blocks=extra_blocks,
    notes=NOTES,
    flush_denormal=True,
    cost_s=cost_s,
)
