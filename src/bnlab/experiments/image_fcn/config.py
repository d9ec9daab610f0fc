"""image-fcn's config: the frozen :class:`ImageFCNConfig`, ``quick``, the variant, the
record tags and artefact names that training writes and the report reads, and a rough run
time (:func:`cost_s`) for the scheduler.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bnlab.experiments.base import Variant, require

#: The largest side the photographs are resized to (the scikit-image ones are 512 pixels).
MAX_IMAGE_SIZE = 4096

__all__ = [
    "COMPARISON_PNG",
    "EPOCH_TAG",
    "INPUT_PNG",
    "OUTPUT_PNG",
    "PARAMETERS_JSON",
    "POPULATION_TAG",
    "POPULATION_TXT",
    "TARGET_PNG",
    "VARIANTS",
    "ImageFCNConfig",
    "cost_s",
    "quick",
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
        require(
            self,
            at_least_one=(
                "image_size",
                "hidden_channels",
                "kernel_size",
                "batch_size",
                "epochs",
                "num_threads",
            ),
            positive=("bn_eps", "learning_rate", "adam_eps"),
            fraction=("bn_decay",),
        )
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"ImageFCNConfig.kernel_size must be odd (same-size output); got {self.kernel_size}"
            )
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"ImageFCNConfig.image_size must be <= {MAX_IMAGE_SIZE}; got {self.image_size}"
            )
        if not self.train_images:
            raise ValueError("ImageFCNConfig.train_images must name at least one image")
        if self.batch_size > len(self.train_images):
            raise ValueError(
                f"ImageFCNConfig.batch_size ({self.batch_size}) cannot exceed the number of "
                f"training images ({len(self.train_images)})"
            )
        if self.noise_std < 0:
            raise ValueError(f"ImageFCNConfig.noise_std must be >= 0; got {self.noise_std}")


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


def cost_s(config: ImageFCNConfig) -> float:
    """Rough seconds of one run on its 2 threads of a quiet 2-core machine (measured on a
    full run: 0.045 s per training step and 0.04 s per epoch-end inference at 512x512,
    batch 1; 1.5 s for the photographs and the images written). An estimate only used for
    the scheduler's order."""
    scale = (config.image_size / 512) ** 2
    steps = config.epochs * math.ceil(len(config.train_images) / config.batch_size)
    return 1.5 + scale * (0.045 * config.batch_size * steps + 0.04 * config.epochs)
