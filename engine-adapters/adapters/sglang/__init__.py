"""SGLang adapter: which SGLang versions are supported and by which layout.

Each supported range of SGLang has one module holding everything that depends
on its internals (hook points, object fields); this file only picks it.
SGLang moves internals between patch releases (logprob fields moved into
``req.logprob`` in 0.5.13; ``runtime_context.get_parallel()`` appeared in
0.5.14, but the DP rank moved there from ``Scheduler.ps`` only in 0.5.21; …),
so ranges are keyed by full versions, not by major.minor. An
unknown version raises AdapterError, so activation prints one warning and
SGLang runs untraced.

Verified against real SGLang (PyPI ``sglang``, run on the CPU) — see the
README's compatibility table for exactly what was run.
"""

from __future__ import annotations

from types import ModuleType

from toktrace.adapters import _common as C
from toktrace.adapters._common import AdapterError

# (first, last) version, both included -> layout module.
LAYOUTS: list[tuple[C.Version, C.Version, str]] = [
    ((0, 5, 23), (0, 5, 23), "toktrace.adapters.sglang.v0_5_23"),
]


def layout_for(version: str) -> str | None:
    return C.layout_for(version, LAYOUTS)


def apply(sglang: ModuleType) -> None:
    import importlib

    from toktrace.activate import engine_version

    version = engine_version(sglang)
    module, tested = C.choose_layout("SGLang", version, LAYOUTS)
    importlib.import_module(module).install(version)
    C.note_verdict("sglang", version, module, tested)
