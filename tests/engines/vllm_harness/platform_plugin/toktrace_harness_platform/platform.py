"""The harness platform: vLLM's own CPU platform, minus the three settings it
forces that a GPU server does not have.

On a CPU-only host the GPU wheel's version string selects no built-in
platform (``UnspecifiedPlatform``), and ``VLLM_TARGET_DEVICE=cpu`` would give
the CPU platform, which forces (``CpuPlatform.check_and_update_config``):

- ``scheduler_config.async_scheduling = False``: restored to what
  ``VllmConfig.__post_init__`` had resolved just before (on, by default, for
  an executor whose ``supports_async_scheduling()`` is true);
- ``distributed_executor_backend = "mp"`` when it was ``"uni"`` with
  multiprocessing on: restored (the harness passes its own executor class,
  which the CPU platform leaves alone anyway);
- a block size of 128 when none was given (0.32: in
  ``check_and_update_config``; 0.33+: in ``update_block_size_for_backend``):
  16, ``CacheConfig.DEFAULT_BLOCK_SIZE``, what a GPU server gets for a plain
  Llama.

From 0.33 the CPU platform also refuses to configure an x86 host without
triton-cpu (``RuntimeError: vLLM on x86 CPUs requires Triton``; PyPI's triton
has no CPU backend, so vLLM's ``HAS_TRITON`` is false). Its kernels would
only be needed by a model, so the check runs with ``HAS_TRITON`` reading
true and is put back right after.

Device type, dtypes and everything else stay the CPU platform's: device
"cpu", and nothing ever runs a kernel (the model runner is stood in).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from vllm.platforms.cpu import CpuPlatform

GPU_DEFAULT_BLOCK_SIZE = 16


def _default_block_size(vllm_config: Any) -> None:
    cache = vllm_config.cache_config
    if not getattr(cache, "user_specified_block_size", False):
        cache.block_size = GPU_DEFAULT_BLOCK_SIZE


@contextlib.contextmanager
def _triton_reads_present() -> Iterator[None]:
    import vllm.triton_utils as tu

    before = tu.HAS_TRITON
    tu.HAS_TRITON = True
    try:
        yield
    finally:
        tu.HAS_TRITON = before


class HarnessPlatform(CpuPlatform):
    @classmethod
    def check_and_update_config(cls, vllm_config: Any) -> None:
        sched = vllm_config.scheduler_config
        par = vllm_config.parallel_config
        async_before = sched.async_scheduling
        backend_before = par.distributed_executor_backend
        with _triton_reads_present():
            super().check_and_update_config(vllm_config)
        sched.async_scheduling = async_before
        par.distributed_executor_backend = backend_before
        _default_block_size(vllm_config)

    @classmethod
    def update_block_size_for_backend(cls, vllm_config: Any) -> None:
        # No attention backend is ever built: the GPU default instead of the
        # CPU backends' preferred size.
        _default_block_size(vllm_config)
