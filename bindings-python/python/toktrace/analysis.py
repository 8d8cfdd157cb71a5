"""Offline analysis from Python: a trace's frames as polars DataFrames.

Never imported by the probe or the adapters: it runs the bundled ``toktrace``
CLI (the Rust analyzer) to write the frames as Arrow IPC files into a
temporary directory and reads them with polars, so an engine process never
loads the analyzer and the analysis is the very one the CLI prints.
Needs polars (``pip install 'toktrace[analysis]'``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toktrace.cli import binary

if TYPE_CHECKING:  # pragma: no cover
    import polars as pl

FRAMES = ("steps", "slices", "tokens", "requests")


class TraceError(RuntimeError):
    """The trace could not be analysed; the message is the CLI's."""


@dataclass(frozen=True)
class Frames:
    """The analyzer's frames of one trace (column names carry their units)."""

    steps: "pl.DataFrame"
    """One row per engine iteration."""
    slices: "pl.DataFrame"
    """Step × request: what each scheduled request did in a step."""
    tokens: "pl.DataFrame"
    """One row per generated token: timing breakdown, id, logprob, rank, top-K."""
    requests: "pl.DataFrame"
    """One row per request: the ``toktrace requests --json`` metrics."""


def load(path: str | os.PathLike[str], tbt_deadline_ms: float | None = None) -> Frames:
    """Analyse the trace at ``path`` (trace dir, process dir or segment file)."""
    try:
        import polars as pl
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("toktrace.load needs polars: pip install 'toktrace[analysis]'") from exc
    exe = binary()
    if exe is None:
        raise TraceError("the toktrace CLI binary is not in this installation; set TOKTRACE_CLI")
    with tempfile.TemporaryDirectory(prefix="toktrace-frames-") as out:
        cmd = [exe, "export", os.fspath(path), "--format", "ipc", "--out", out]
        if tbt_deadline_ms is not None:
            cmd += ["--tbt-deadline-ms", str(tbt_deadline_ms)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise TraceError(done.stderr.strip() or f"toktrace export failed ({done.returncode})")
        frames = {name: pl.read_ipc(Path(out) / f"{name}.arrow", memory_map=False) for name in FRAMES}
    return Frames(**frames)
