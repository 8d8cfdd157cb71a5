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
from dataclasses import dataclass
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


def checked(engine: str, version: str, patcher: Callable[[Any], None]) -> Callable[[Any], None]:
    """A post-import patcher that never raises into the engine's import:
    what it raises — AdapterError for a layout that does not match, or any
    other surprise — is one warning, and the engine runs on untraced."""

    def run(module: Any) -> None:
        try:
            patcher(module)
        except Exception as exc:  # noqa: BLE001 - the engine's import must go on
            from toktrace.activate import warn

            detail = str(exc) if isinstance(exc, AdapterError) else f"{type(exc).__name__}: {exc}"
            warn(f"adapter for {engine} {version} failed: {detail}; {engine} runs untraced", key=f"{engine}-layout")

    return run


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


def live_rows(ids: list[Any], live: Any) -> list[int] | None:
    """Which rows of a step's batch belong to requests still live: None when
    all do, else their indices.

    The overlap loops (SGLang's, TensorRT-LLM's) launch step N+1 before step
    N's result finishes a request, so a finished request can ride along one
    more step (its output is discarded). Its trace ended with its finish: the
    row is left out rather than re-opening the request."""
    if all(rid in live for rid in ids):
        return None
    return [i for i, rid in enumerate(ids) if rid in live]


def pick(rows: list[Any] | None, keep: list[int]) -> list[Any] | None:
    """The rows at `keep`, in order (None stays None)."""
    return None if rows is None else [rows[i] for i in keep]


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


# ----- what a layout relies on, checked without starting the engine -----


@dataclass(frozen=True)
class HookPoint:
    """One object a layout relies on: ``owner`` (a dotted path inside
    ``module``) with the attributes it reads or patches (``attrs``), the
    fields it reads of its instances (``fields``: dataclass, msgspec or
    annotated), and for each listed method the parameters it must take."""

    module: str
    owner: str
    attrs: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    params: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class PointCheck:
    """One line of a structural check: where, ``ok`` / ``missing`` /
    ``signature changed``, and what differs."""

    where: str
    status: str
    detail: str = ""


def _fields_of(cls: Any) -> set[str] | None:
    for attr in ("__dataclass_fields__", "__struct_fields__"):
        found = getattr(cls, attr, None)
        if found is not None:
            return set(found)
    names: set[str] = set()
    for klass in getattr(cls, "__mro__", ()):
        names.update(getattr(klass, "__annotations__", {}) or {})
    return names or None


def check_points(points: list[HookPoint]) -> list[PointCheck]:
    """Import each point's module and check what the layout relies on is
    there, in the shape it expects. Imports the engine's modules (never
    starts it); never raises."""
    import importlib
    import inspect

    out: list[PointCheck] = []
    for p in points:
        base = f"{p.module}.{p.owner}"
        try:
            obj: Any = importlib.import_module(p.module)
            for part in p.owner.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # noqa: BLE001 - an import may fail any way
            out.append(PointCheck(base, "missing", f"{type(exc).__name__}: {exc}"))
            continue
        for attr in p.attrs:
            out.append(PointCheck(f"{base}.{attr}", "ok" if hasattr(obj, attr) else "missing"))
        if p.fields:
            have = _fields_of(obj)
            for field in p.fields:
                ok = have is not None and field in have
                out.append(PointCheck(f"{base}.{field}", "ok" if ok else "missing",
                                      "" if ok else "not a field of it"))
        for method, wanted in p.params:
            where = f"{base}.{method}"
            fn = getattr(obj, method, None)
            if fn is None:
                out.append(PointCheck(where, "missing"))
                continue
            try:
                params = inspect.signature(fn).parameters
            except (TypeError, ValueError) as exc:
                out.append(PointCheck(where, "signature changed", f"no signature: {exc}"))
                continue
            takes_any = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
            lacking = [w for w in wanted if w not in params and not takes_any]
            out.append(PointCheck(where, "signature changed" if lacking else "ok",
                                  f"takes no {', '.join(lacking)}" if lacking else ""))
    return out


ALLOW_UNTESTED = "TOKTRACE_ALLOW_UNTESTED"


def choose_layout(engine: str, version: str, layouts: list[tuple[Version, Version, str]]) -> tuple[str, bool]:
    """The layout module for `version` and whether the release was tested.

    A release in the table is tested. A newer release than every range is
    traced with the newest layout only when ``TOKTRACE_ALLOW_UNTESTED=1``
    and every hook point that layout relies on passes the structural check
    (which cannot see a change of meaning, hence the opt-in). Anything else
    raises AdapterError naming what differs."""
    import importlib

    module = layout_for(version, layouts)
    if module is not None:
        return module, True
    known = f"supported: {ranges_text(layouts)}"
    key = parse_version(version)
    newest_first, newest_last, newest = max(layouts, key=lambda r: r[1])
    if key is None or key <= newest_last:
        raise AdapterError(f"{engine} {version} is not a version this toktrace knows ({known})")
    if os.environ.get(ALLOW_UNTESTED, "").strip() != "1":
        raise AdapterError(f"{engine} {version} is newer than every version this toktrace knows ({known}); "
                           f"{ALLOW_UNTESTED}=1 traces it with the newest layout if its hook points check out")
    failed = [c for c in check_points(importlib.import_module(newest).hook_points(version)) if c.status != "ok"]
    if failed:
        shown = "; ".join(f"{c.where}: {c.status}" + (f" ({c.detail})" if c.detail else "") for c in failed[:5])
        raise AdapterError(f"{engine} {version} is not a tested version and differs from the newest layout "
                           f"({ranges_text([(newest_first, newest_last, newest)])}): {shown}")
    return newest, False


# engine -> what activation decided, for the process record and `toktrace doctor`.
verdicts: dict[str, dict[str, str]] = {}


def note_verdict(engine: str, version: str, module: str, tested: bool) -> None:
    """Remember how the engine is traced; a tested=False release also says so
    on stderr, once."""
    verdicts[engine] = {"layout": module.rsplit(".", 1)[-1], "engine_version_tested": "yes" if tested else "no"}
    if not tested:
        print(f"toktrace: {engine} {version}: engine version not tested; traced with the layout "
              f"{module.rsplit('.', 1)[-1]} because {ALLOW_UNTESTED}=1 and its hook points check out",
              file=sys.stderr, flush=True)


# ===== top-K for the trace (TOKTRACE_TOPK_SAMPLE) =====

_untested_sampling_warned: set[str] = set()


def prompt_identity(rec: Any, engine: str, prompt_ids: Any, asked: int | None,
                    engine_max: int | None) -> tuple[int | None, int | None]:
    """The prompt's hash, and the top-K to ask the engine for on the trace's
    behalf (None: leave the request as the client made it).

    A request is sampled when its prompt's hash falls in the configured
    fraction (``TOKTRACE_TOPK_SAMPLE``), the same in every process, so that
    identical prompts are taken together. Its K is ``TOKTRACE_TOPK`` (5 when
    unset) clamped to the engine's own limit; a client that already asked
    for as many (or for all) is left alone. Only on engine releases whose
    layout was tested: elsewhere one warning and no capture.
    """
    from toktrace._native import prompt_hash, topk_sampled

    h = None if prompt_ids is None else prompt_hash(prompt_ids)
    cfg = rec.config
    # At capture=metadata no token data is kept: asking would cost for nothing.
    if h is None or cfg.topk_sample <= 0.0 or cfg.capture == "metadata" or not topk_sampled(h, cfg.topk_sample):
        return h, None
    if verdicts.get(engine, {}).get("engine_version_tested") != "yes":
        if engine not in _untested_sampling_warned:
            _untested_sampling_warned.add(engine)
            print(f"toktrace: {engine}: TOKTRACE_TOPK_SAMPLE is ignored on an engine release not tested; "
                  "requests keep the logprobs their clients asked for", file=sys.stderr, flush=True)
        return h, None
    k = cfg.sample_top_k
    if engine_max is not None and engine_max >= 0:
        k = min(k, engine_max)
    if k <= 0 or (asked is not None and (asked < 0 or asked >= k)):
        return h, None
    return h, k
