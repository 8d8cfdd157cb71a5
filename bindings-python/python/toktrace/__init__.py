"""toktrace: a token-level tracer for LLM inference engines.

This package is what loads into an inference server. Installing it adds a
start-up hook (``toktrace.pth``) that does nothing unless ``TOKTRACE_DIR`` is
set; when it is, importing vLLM, SGLang or TensorRT-LLM applies the matching
adapter from ``toktrace.adapters``, which records every engine iteration and
every sampled token through the native probe (``toktrace._native``) into
``$TOKTRACE_DIR``. Analysis happens offline with the ``toktrace`` command, or
from Python with ``toktrace.load(DIR)`` (polars DataFrames).

Modules: ``config`` (settings from the environment), ``activate`` (hooks,
idempotent adapter application), ``probe`` (the per-process recorder adapters
call), ``hooks`` (post-import hooks), ``cli`` (runs the bundled CLI binary),
``analysis`` (``load``: the analyzer's frames; never imported by the probe).
Nothing heavy is imported here.
"""

from __future__ import annotations

__all__ = ["recorder", "monotonic_ns", "load"]


def recorder(role: str | None = None):
    """The process's recorder, started from the environment; None when tracing is off."""
    from toktrace.probe import get_recorder

    return get_recorder(role)


def monotonic_ns() -> int:
    """The probe's clock (CLOCK_MONOTONIC ns), the same as ``time.monotonic_ns()`` on Linux."""
    from toktrace._native import monotonic_ns as _now

    return _now()


def load(path, tbt_deadline_ms: float | None = None):
    """The analyzer's frames of a trace (steps, slices, tokens, requests) as polars DataFrames."""
    from toktrace.analysis import load as _load

    return _load(path, tbt_deadline_ms)
