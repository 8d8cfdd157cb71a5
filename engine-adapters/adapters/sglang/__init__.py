"""SGLang adapter: which SGLang versions are supported and by which layout.

Each supported range of SGLang has one module holding everything that depends
on its internals (hook points, object fields); this file only picks it.
SGLang moves internals between patch releases (logprob fields moved into
``req.logprob`` in 0.5.13; ``runtime_context.get_parallel()`` appeared in
0.5.14, but the DP rank moved there from ``Scheduler.ps`` only in 0.5.21; …),
so ranges are keyed by full versions, not by major.minor. An
unknown version raises AdapterError, so activation prints one warning and
SGLang runs untraced.

Every release in range is proven on real SGLang (PyPI ``sglang``, run on
the CPU) — see the compatibility table (docs, generated from
``scripts/extended.sh compat-sglang`` results) for what was run on each.
"""

from __future__ import annotations

from types import ModuleType

from toktrace.adapters import _common as C
from toktrace.adapters._common import AdapterError

# (first, last) version, both included -> layout module. 0.5.13 through
# 0.5.23 share the internals the adapter reads, up to shims named in the
# layout. 0.5.12 and older keep logprobs on ``Req`` and have no output
# streamer; 0.5.10 and older hand outputs to the client synchronously.
LAYOUTS: list[tuple[C.Version, C.Version, str]] = [
    ((0, 5, 13), (0, 5, 23), "toktrace.adapters.sglang.v0_5_23"),
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
