"""SGLang's HTTP server (`launch_server`) under streaming load, traced with a
small ring drained seldom and small rotating segments: every token a client
received is in the trace with the same logprob, or is counted by the trace's
drop records.

The same accounting as the vLLM soak (tests/engines/test_vllm_faults.py);
SGLang's OpenAI server sends token texts, not ids, so tokens are matched by
position and logprob. Runs in the SGLang environment (scripts/setup-sglang.sh)
for TOKTRACE_SOAK_SECONDS (default 60); Tier 2 (scripts/extended.sh
faults-sglang) runs it for many minutes and keeps its figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from served import check_soak, run_soak  # noqa: E402


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    return run_soak(tmp_path_factory.mktemp("soak"), "sglang")


def test_under_load_every_received_token_is_traced_or_counted(soak):
    check_soak(soak)
