"""toktrace engine adapters: where each engine is hooked and how its objects
map to probe calls.

``BUILTIN`` maps an engine's top-level module to the adapter module applied
when that engine is imported. An adapter module has one entry point,
``apply(engine_module)``: it patches the engine (or registers further
post-import hooks with ``toktrace.hooks.when_imported``) and raises on any
surprise — an unknown version, a missing attribute — so that activation logs
one warning and leaves the engine untraced. Each engine keeps its
version-specific layout in one place inside its adapter package.

This directory is copied into the wheel as ``toktrace.adapters``.
"""

BUILTIN: dict[str, str] = {
    "vllm": "toktrace.adapters.vllm",
    "sglang": "toktrace.adapters.sglang",
    "tensorrt_llm": "toktrace.adapters.tensorrt_llm",
}
