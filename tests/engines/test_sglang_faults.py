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
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from served import (CLIENTS, SOAK_SECONDS, STRESSED, Server, check_accounting, engine_side,  # noqa: E402
                    load, report, run_cli)


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("soak")
    server = Server(tmp, tmp / "trace", env=STRESSED, engine="sglang")
    server.start()
    try:
        t0, clients_from_ns = time.monotonic(), time.monotonic_ns()
        done = load(server.port, SOAK_SECONDS, CLIENTS, engine="sglang")
        elapsed = time.monotonic() - t0
    finally:
        server.stop()
    return server, done, elapsed, clients_from_ns


def test_under_load_every_received_token_is_traced_or_counted(soak):
    server, done, elapsed, clients_from_ns = soak
    errors = [c.error for c in done if c.error]
    assert not errors, errors[:3]
    side = engine_side(server.trace_dir)
    assert not side.warnings, side.warnings
    assert side.processes == 1, side.processes
    figures = check_accounting(side, done, clients_from_ns)
    assert side.dropped_tokens > 0, "the ring never overflowed: the load did not stress it"
    assert side.total > side.dropped_tokens, "almost nothing was traced"
    assert side.segments >= 4, f"segments did not rotate ({side.segments})"
    assert figures["checked"] > 100
    summary = run_cli("summary", str(server.trace_dir), "--json")
    assert summary.returncode == 0, summary.stderr
    report("soak", engine="sglang", clients=CLIENTS, seconds=round(elapsed, 1), requests=len(done),
           ring_slots=int(STRESSED["TOKTRACE_RING_SLOTS"]), flush_ms=int(STRESSED["TOKTRACE_FLUSH_MS"]),
           tokens_per_s=round(figures["received"] / elapsed, 1), segments=side.segments,
           dropped_records=side.dropped_records, unnamed_tokens=side.unnamed, **figures)
