"""PEP 517 backend for the toktrace wheel: maturin, plus two preparation steps.

1. Build the `toktrace` CLI (the `viewer` crate) in release mode and copy the
   binary to `python/toktrace/bin/toktrace`, so the wheel ships the same CLI
   as `cargo run -p toktrace-viewer` without linking the analyzer into the
   probe extension that engines load.
2. Copy the engine adapters from `engine-adapters/` into
   `python/toktrace/adapters/`.

Both copies are build products (git-ignored). The cargo target directory is
taken from CARGO_TARGET_DIR when set, so cargo and maturin share one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import maturin

HERE = Path(__file__).resolve().parent.parent
REPO = HERE.parent
PACKAGE = HERE / "python" / "toktrace"


def _log(msg: str) -> None:
    print(f"toktrace-build: {msg}", file=sys.stderr, flush=True)


def _build_cli() -> None:
    if os.environ.get("TOKTRACE_SKIP_CLI") == "1":
        _log("TOKTRACE_SKIP_CLI=1: the wheel will not contain the toktrace CLI binary")
        return
    dest = PACKAGE / "bin"
    dest.mkdir(exist_ok=True)
    # The test suite has just built the same binary from the same sources
    # (`cargo test --release`); taking it spares a second release build of
    # polars under cargo's other feature resolution.
    prebuilt = os.environ.get("TOKTRACE_PREBUILT_CLI")
    if prebuilt and Path(prebuilt).is_file():
        _log(f"using the CLI already built at {prebuilt}")
        shutil.copy2(prebuilt, dest / "toktrace")
        return
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    cmd = ["cargo", "build", "--release", "--locked", "-p", "toktrace-viewer", "--bin", "toktrace"]
    _log(" ".join(cmd))
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "CARGO_TARGET_DIR": str(target)})
    shutil.copy2(target / "release" / "toktrace", dest / "toktrace")


def _copy_adapters() -> None:
    src = REPO / "engine-adapters" / "adapters"
    dest = PACKAGE / "adapters"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _prepare() -> None:
    _copy_adapters()
    _build_cli()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare()
    return maturin.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _prepare()
    return maturin.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    raise RuntimeError("toktrace is built from the repository checkout; sdists are not supported")


get_requires_for_build_wheel = maturin.get_requires_for_build_wheel
get_requires_for_build_editable = getattr(maturin, "get_requires_for_build_editable", maturin.get_requires_for_build_wheel)
prepare_metadata_for_build_wheel = maturin.prepare_metadata_for_build_wheel
