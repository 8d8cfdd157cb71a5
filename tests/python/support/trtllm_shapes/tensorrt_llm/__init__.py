"""TEST SCAFFOLDING — not TensorRT-LLM.

A stand-in ``tensorrt_llm`` package for the shape tests in
``tests/python/test_tensorrt_llm_shapes.py``. TensorRT-LLM cannot be
installed on this project's machines (no GPU; its wheels live on
pypi.nvidia.com), so the adapter is driven through a small engine that
reproduces ``PyExecutor``'s documented call sequence and the shapes of the
objects it passes around, as read in the published source:

- layout "2026" (default): NVIDIA/TensorRT-LLM ``py_executor.py`` at
  0004396720054fd8e205cbf616f21f0b57c6b412 (2026 main), ``llm_request.py``
  and ``scheduler/scheduler.py`` at 002f3cc3d0554c4ebd530d1354f96e89666d93b8,
  ``sampler/logprobs.py`` at 3b58bec80f4d3b84af293630a6b96aace57786ba;
- layout "2025": ``py_executor.py`` at
  9521caf4696c1fb79b0f946f0d980f8f0ebd3e64 (mid-2025 main), ``sampler.py``
  at 00026bd121addd9ee5650a7da9fee6b57db79a6f and the late-2025 TorchSampler
  logprob layout (top-K first, the sampled token added after it).

Re-checked on 2026-12-07 against ``py_executor.py`` at 0004396 (and
9521caf4 for 2025), which added to the stand-in: ``enqueue_requests``
queueing the batch itself; requests waiting for room among the active ones
(``max_num_active_requests``), cancelled while waiting (2026) or failing
validation at activation (2026); drafter tokens padded for CUDA graphs; the
pipeline-parallel loop as rank 0 runs it.

Only the method names, their order within an iteration, their signatures and
the fields the adapter reads are mirrored; the bodies are written here from
scratch and do no model work (tokens and logprobs come from a deterministic
stand-in "model"). Choose the layout with ``FAKE_TLLM_LAYOUT`` and the
reported version with ``FAKE_TLLM_VERSION``.
"""

import os

LAYOUT = os.environ.get("FAKE_TLLM_LAYOUT", "2026")
if LAYOUT not in ("2025", "2026"):
    raise ValueError(f"FAKE_TLLM_LAYOUT={LAYOUT!r}: expected 2025 or 2026")

# The 2025 revision's version.py is not stored at its commit; the label is
# scaffolding (within the adapter's supported 1.x range).
__version__ = os.environ.get("FAKE_TLLM_VERSION", "1.3.0rc20" if LAYOUT == "2026" else "1.0.0")
