"""Test-only vLLM platform for toktrace's scheduler-level harness.

Registered under the ``vllm.platform_plugins`` entry point. vLLM calls
``detect()`` when it first resolves ``vllm.platforms.current_platform``; an
out-of-tree plugin that answers wins over the built-in platforms. It answers
only when TOKTRACE_VLLM_HARNESS=1, so a venv it is installed in behaves as
before for everything but the harness.
"""

from __future__ import annotations

import os

ENV = "TOKTRACE_VLLM_HARNESS"


def detect() -> str | None:
    if os.environ.get(ENV) != "1":
        return None
    return "toktrace_harness_platform.platform.HarnessPlatform"
