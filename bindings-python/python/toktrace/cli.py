"""The ``toktrace`` console command: runs the CLI binary shipped in the wheel
(``toktrace doctor``, which imports the engine, runs here in Python).

The analyzer and viewer are a separate Rust executable, so none of them is
ever loaded into an engine process; this module only finds and executes it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def binary() -> str | None:
    """Path of the toktrace CLI binary: the bundled one, else TOKTRACE_CLI, else PATH."""
    bundled = Path(__file__).resolve().parent / "bin" / "toktrace"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    override = os.environ.get("TOKTRACE_CLI")
    if override:
        return override
    found = shutil.which("toktrace-cli")
    return found


def main() -> None:
    # `doctor` imports the engine, so it runs here in Python; everything
    # else is the Rust CLI.
    if sys.argv[1:2] == ["doctor"]:
        from toktrace.doctor import main as doctor

        raise SystemExit(doctor(sys.argv[2:]))
    path = binary()
    if path is None:
        print(
            "toktrace: the CLI binary is not in this installation (built with TOKTRACE_SKIP_CLI=1?).\n"
            "Build it with `cargo build --release -p toktrace-viewer` and set TOKTRACE_CLI to its path.",
            file=sys.stderr,
        )
        raise SystemExit(2)
    os.execv(path, [path, *sys.argv[1:]])
