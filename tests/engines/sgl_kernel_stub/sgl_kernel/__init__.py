"""Test scaffolding only: a stand-in for SGLang's ``sgl_kernel`` package.

Not part of toktrace and never installed: ``tests/engines/test_sglang.py`` and
``scripts/setup-sglang.sh`` put its parent directory on ``PYTHONPATH`` so that
real SGLang (PyPI ``sglang``) can be imported and run on a CPU.

Why it exists: a few SGLang modules import ``*_cpu`` kernel names from
``sgl_kernel`` at import time (CPU kernels), and no CPU build of that package
is on the registries. On a CPU without AMX, SGLang's model layers take their
pure-torch paths and never call those kernels.

What it does:
- a name ending in ``_cpu`` exists, and raises ``NotImplementedError`` if it is
  ever called, so a test that reaches a real kernel fails loudly instead of
  computing something else;
- any other name does not exist: ``from sgl_kernel import silu_and_mul``
  fails with ImportError exactly as if the package were absent, so SGLang's
  own fallbacks stay in charge.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn

IS_STUB = True


def _missing_kernel(name: str) -> Callable[..., NoReturn]:
    def kernel(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"sgl_kernel.{name} called: this is toktrace's test stand-in for sgl_kernel "
            "(tests/engines/sgl_kernel_stub), which has no kernels"
        )

    kernel.__name__ = name
    kernel.__qualname__ = name
    return kernel


def __getattr__(name: str) -> Callable[..., NoReturn]:
    if name.endswith("_cpu") and not name.startswith("__"):
        return _missing_kernel(name)
    raise AttributeError(f"module 'sgl_kernel' (toktrace test stand-in) has no attribute {name!r}")
