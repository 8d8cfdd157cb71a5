"""TensorRT-LLM adapter (PyTorch backend): which versions are supported and by which layout.

Each supported line of TensorRT-LLM has one module holding everything that
depends on its internals (hook points on ``PyExecutor``, ``LlmRequest``
fields, logprob shapes); this file only picks it. An unknown version raises
AdapterError, so activation prints one warning and TensorRT-LLM runs untraced.

How the adapter reaches the engine: TensorRT-LLM runs ``PyExecutor`` in MPI
worker processes (``MpiPoolSession`` spawns them and forwards only ``TLLM_`` /
``TRTLLM_`` environment variables), so tracing is switched on with
``TLLM_TOKTRACE_DIR`` (every ``TOKTRACE_*`` setting is also read as
``TLLM_TOKTRACE_*``). Each worker runs ``toktrace.pth`` from its
site-packages, imports ``tensorrt_llm``, and this adapter patches
``PyExecutor`` once ``tensorrt_llm._torch.pyexecutor.py_executor`` is
imported. Only the rank that owns the batch (``dist.rank == 0``) records.

Not run: TensorRT-LLM needs an NVIDIA GPU and its wheels come from
pypi.nvidia.com, neither of which this project's machines have. The hook
points were checked against the published source at the revisions listed in
``v1_x.py`` and in docs/engines.md, and
``tests/python/test_tensorrt_llm_shapes.py`` drives the adapter through
PyExecutor's call sequence and data shapes with a stand-in engine. That is a
shape test, not a run.
"""

from __future__ import annotations

from types import ModuleType

from toktrace.adapters import _common as C
from toktrace.adapters._common import AdapterError, Version, parse_version

__all__ = ["LAYOUTS", "apply", "layout_for", "parse_version", "supported"]

# (first, last) version, both included -> layout module. The 1.x line: the
# hook points read in the 2025 and 2026 sources (v1_x.py) are the same names
# with compatible signatures across it.
LAYOUTS: list[tuple[Version, Version, str]] = [
    ((1, 0, 0), (1, 3, C.ANY_PATCH), "toktrace.adapters.tensorrt_llm.v1_x"),
]


def layout_for(version: str) -> str | None:
    return C.layout_for(version, LAYOUTS)


def supported() -> str:
    """The supported range, as the warning names it."""
    return C.ranges_text(LAYOUTS)


def apply(tensorrt_llm: ModuleType) -> None:
    import importlib

    from toktrace.activate import engine_version

    version = engine_version(tensorrt_llm)
    module = layout_for(version)
    if module is None:
        raise AdapterError(
            f"TensorRT-LLM {version} is not a version this toktrace knows (supported: {supported()})"
        )
    importlib.import_module(module).install(version)
    C.note_verdict("tensorrt_llm", version, module, True)
