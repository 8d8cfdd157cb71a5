"""vLLM adapter: which vLLM versions are supported and by which layout.

Each line of vLLM releases whose internals look alike to the adapter has one
module holding everything that depends on them (hook points, object fields);
a difference inside a line is a small shim in that module, named by the
release that introduced it. This file only picks the module. An unknown
version raises AdapterError, so activation prints one warning and vLLM runs
untraced.

Every range is proven on real vLLM code — see the compatibility table
(docs, generated from `scripts/extended.sh compat-vllm` results) for what
was run on each release.
"""

from __future__ import annotations

from types import ModuleType

from toktrace.adapters import _common as C
from toktrace.adapters._common import AdapterError

# (first, last) release, both included -> layout module. 0.26 through 0.34
# share the V1 scheduler internals the adapter reads, up to shims named in
# the layout (releases before 0.26 differ more: finish_requests returned
# tuples, 0.24 listed only the current call's preemptions).
LAYOUTS: list[tuple[C.Version, C.Version, str]] = [
    ((0, 26, 0), (0, 34, C.ANY_PATCH), "toktrace.adapters.vllm.v0_32"),
]


def layout_for(version: str) -> str | None:
    return C.layout_for(version, LAYOUTS)


def apply(vllm: ModuleType) -> None:
    import importlib

    from toktrace.activate import engine_version

    version = engine_version(vllm)
    module, tested = C.choose_layout("vLLM", version, LAYOUTS)
    importlib.import_module(module).install(version)
    C.note_verdict("vllm", version, module, tested)
