"""Adapter entry for TOKTRACE_ADAPTERS that applies the vLLM 0.26-0.32 layout
to whatever vLLM release is imported, so the harness can run the adapter on
releases its version table does not list yet (0.33, 0.34) without editing
the adapter. TOKTRACE_ADAPTERS=vllm=toktrace.adapters.vllm.v0_32 alone does
not do it: activation calls the named module's ``apply(vllm)``, and a
layout module has only ``install(version)``.
"""

from __future__ import annotations

from types import ModuleType


def apply(vllm: ModuleType) -> None:
    from toktrace.activate import engine_version
    from toktrace.adapters.vllm import v0_32

    v0_32.install(engine_version(vllm))
