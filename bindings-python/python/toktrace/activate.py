"""Zero-code activation: from environment to adapters, once per process.

``install_from_env`` runs from the ``.pth`` hook in every Python process that
has TOKTRACE_DIR set (the server, its spawn children, anything else). It reads
the configuration (a bad value: one warning, tracing off) and registers a
post-import hook per known engine. When the engine is imported, its adapter
is applied — at most once per process, however many times activation fires
(the ``.pth`` hook and an engine's own plugin entry point may both run).

An adapter that fails logs one warning naming the engine, its version and
what is missing, and leaves the engine untraced.
"""

from __future__ import annotations

import importlib
import sys
import threading
from types import ModuleType

from toktrace import config as _config
from toktrace import hooks

_lock = threading.Lock()
_installed = False
_applied: dict[str, str] = {}  # engine -> "ok" | "failed"
_warned: set[str] = set()


def warn(message: str, key: str | None = None) -> None:
    """One line on stderr; with a key, at most once per process for that key."""
    if key is not None:
        if key in _warned:
            return
        _warned.add(key)
    print(f"toktrace: {message}", file=sys.stderr, flush=True)


def engine_adapters(cfg: _config.Config) -> dict[str, str]:
    """Engine top-level module -> adapter module, built-ins plus TOKTRACE_ADAPTERS."""
    from toktrace.adapters import BUILTIN

    table = dict(BUILTIN)
    for item in filter(None, (p.strip() for p in cfg.adapters.split(","))):
        engine, sep, module = item.partition("=")
        if not sep or not engine or not module:
            warn(f"TOKTRACE_ADAPTERS entry {item!r} ignored: expected engine_module=adapter_module", key=item)
            continue
        table[engine.strip()] = module.strip()
    return table


def install_from_env() -> bool:
    """Register the engine hooks if TOKTRACE_DIR is set. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return True
        try:
            cfg = _config.from_env()
        except _config.ConfigError as exc:
            warn(f"{exc}; tracing is off", key="config")
            return False
        if cfg is None:
            return False
        _installed = True
    for engine, adapter in engine_adapters(cfg).items():
        hooks.when_imported(engine, lambda module, a=adapter: apply(module, a))
    return True


def engine_version(module: ModuleType) -> str:
    """The engine's version string, or 'unknown'."""
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        from importlib.metadata import version as dist_version

        return dist_version(module.__name__.split(".")[0].replace("_", "-"))
    except Exception:  # noqa: BLE001
        return "unknown"


def apply(engine_module: ModuleType, adapter_name: str) -> bool:
    """Apply an adapter to an imported engine, once per process. Never raises."""
    engine = engine_module.__name__
    with _lock:
        if engine in _applied:
            return _applied[engine] == "ok"
        _applied[engine] = "failed"
    version = engine_version(engine_module)
    try:
        adapter = importlib.import_module(adapter_name)
    except ImportError as exc:
        warn(f"no adapter for {engine} {version} in this toktrace ({exc}); {engine} runs untraced", key=engine)
        return False
    try:
        adapter.apply(engine_module)
    except Exception as exc:  # noqa: BLE001 - the engine must keep running
        warn(
            f"adapter for {engine} {version} failed: {type(exc).__name__}: {exc}; {engine} runs untraced",
            key=engine,
        )
        return False
    with _lock:
        _applied[engine] = "ok"
    return True


def applied() -> dict[str, str]:
    """What happened per engine in this process (for tests and diagnostics)."""
    with _lock:
        return dict(_applied)


def _from_plugin(module: str, label: str) -> None:
    """Activation called from an engine's own plugin entry point (for when
    the ``.pth`` hook did not run); never raises into the engine."""
    try:
        if install_from_env() and module in sys.modules:
            cfg = _config.from_env()
            if cfg is not None:
                apply(sys.modules[module], engine_adapters(cfg)[module])
    except Exception as exc:  # noqa: BLE001
        warn(f"{label} plugin activation failed: {exc!r}", key=f"{module}-plugin")


def vllm_plugin() -> None:
    """vLLM ``general_plugins`` entry point: the same activation, from inside vLLM."""
    _from_plugin("vllm", "vLLM")


def sglang_plugin() -> None:
    """SGLang ``sglang.srt.plugins`` entry point (SGLang >= 0.5.11 calls it first
    thing in each scheduler, detokenizer and engine process)."""
    _from_plugin("sglang", "SGLang")
