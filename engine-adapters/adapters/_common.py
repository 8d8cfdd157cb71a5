"""What every engine adapter needs: patching helpers, clock conversion,
special tokens from a tokenizer, version ranges to layouts, and the guard
that keeps a tracing bug from ever reaching the engine."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

MARK = "__toktrace_wrapped__"


class AdapterError(RuntimeError):
    """The engine does not look the way this adapter expects (missing attribute,
    unknown version). Raised at apply time, reported once, engine untraced."""


def require(obj: Any, *names: str, where: str) -> None:
    """Raise AdapterError naming every attribute of `obj` that is missing."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise AdapterError(f"{where} has no {', '.join(missing)}")


def patch(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``make(original)``, once: a second call finds
    the mark and leaves it alone (the .pth hook and a plugin may both apply)."""
    original = getattr(owner, name)
    if getattr(original, MARK, False):
        return
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, MARK, True)
    setattr(owner, name, wrapper)


class Guard:
    """Catches what an adapter's hook raised, so that the wrapped engine call
    always proceeds as if toktrace were absent: the error is handed to the
    process's recorder, which counts it by hook in the trace, warns once and
    switches tracing off after too many (``toktrace.probe.Recorder.failed``)."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.errors = 0

    def failed(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        try:
            from toktrace.probe import get_recorder

            rec = get_recorder()
        except Exception:  # noqa: BLE001
            rec = None
        if rec is not None:
            rec.failed(f"{self.engine} {where}", exc)
        elif self.errors == 1:
            print(
                f"toktrace: {self.engine} {where} failed: {type(exc).__name__}: {exc} "
                "(the engine goes on; further errors counted)",
                file=sys.stderr,
                flush=True,
            )


def unix_to_mono_ns(unix_s: float | None) -> int | None:
    """A wall-clock time (seconds) as CLOCK_MONOTONIC ns, via the current offset."""
    if unix_s is None:
        return None
    offset = time.time_ns() - time.monotonic_ns()
    return int(unix_s * 1e9) - offset


def traceparent(headers: Any) -> str | None:
    """The W3C traceparent value from a header mapping, if any."""
    if not headers:
        return None
    try:
        for key, value in headers.items():
            if str(key).lower() == "traceparent":
                return str(value)
    except Exception:  # noqa: BLE001
        return None
    return None


def special_tokens_from_dir(path: str | None) -> list[tuple[int, str]]:
    """Every special token declared in a local model's tokenizer.json."""
    if not path:
        return []
    f = Path(path) / "tokenizer.json"
    if not f.is_file():
        return []
    try:
        added = json.loads(f.read_text(encoding="utf-8")).get("added_tokens", [])
        return sorted((int(t["id"]), str(t["content"])) for t in added if t.get("special"))
    except (OSError, ValueError, KeyError, TypeError):
        return []


def special_token_ids(obj: Any) -> dict[str, Any]:
    """bos/eos/pad (and, for a tokenizer, all special) ids of a Hugging Face
    style tokenizer or model config, as ``Recorder.process`` keywords."""
    out: dict[str, Any] = {}
    if obj is None:
        return out
    for name in ("bos", "pad"):
        v = getattr(obj, f"{name}_token_id", None)
        if isinstance(v, int):
            out[name] = v
    eos = getattr(obj, "eos_token_id", None)
    if isinstance(eos, int):
        out["eos"] = [eos]
    elif isinstance(eos, (list, tuple)):
        out["eos"] = [int(e) for e in eos]
    try:
        ids = list(getattr(obj, "all_special_ids", []) or [])
        toks = list(getattr(obj, "all_special_tokens", []) or [])
        if ids and len(ids) == len(toks):
            out["special"] = sorted((int(i), str(t)) for i, t in zip(ids, toks))
    except Exception:  # noqa: BLE001
        pass
    return out


def special_tokens(model_dir: str | None, *sources: Any) -> dict[str, Any]:
    """``Recorder.process`` keywords for the special tokens: bos/eos/pad and
    special ids of each tokenizer or config in `sources` (later ones win),
    then every special token `model_dir`'s tokenizer.json declares."""
    out: dict[str, Any] = {}
    for source in sources:
        out.update(special_token_ids(source))
    declared = special_tokens_from_dir(model_dir)
    if declared:
        out["special"] = declared
    return out


def local_dir(path: str | None) -> str | None:
    """`path` if it is a local directory (a model path rather than a hub name)."""
    return path if path and os.path.isdir(path) else None


Version = tuple[int, int, int]


def parse_version(text: str) -> Version | None:
    """(major, minor, patch) of '0.5.23', '1.3.0rc20', '1.2.0.post1', … ."""
    m = re.match(r"^\s*(\d+)\.(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def layout_for(version: str, layouts: list[tuple[Version, Version, str]]) -> str | None:
    """The layout module of the (first, last) range, both included, that holds `version`."""
    key = parse_version(version)
    if key is None:
        return None
    for first, last, module in layouts:
        if first <= key <= last:
            return module
    return None


# The last patch of a minor line: a range ending here holds every patch release.
ANY_PATCH = 9999


def ranges_text(layouts: list[tuple[Version, Version, str]]) -> str:
    """The supported ranges as a user reads them: '0.26.0–0.32.x, 0.34.x'."""

    def text(v: Version) -> str:
        return f"{v[0]}.{v[1]}.{'x' if v[2] >= ANY_PATCH else v[2]}"

    return ", ".join(text(a) if a == b else f"{text(a)}–{text(b)}" for a, b, _ in layouts)


def cost_report(cost: list[int]) -> dict[str, float]:
    """An adapter's [self ns, steps, step ns] counters as per-step figures."""
    self_ns, steps, step_ns = cost
    return {"steps": steps, "self_us_per_step": self_ns / max(steps, 1) / 1e3,
            "step_us": step_ns / max(steps, 1) / 1e3, "fraction": self_ns / max(step_ns, 1)}
