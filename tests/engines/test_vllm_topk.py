"""Top-K for the trace alone (``TOKTRACE_TOPK_SAMPLE``) on real vLLM: the
sampled requests' candidates are in the trace, and every client gets
exactly what it asked for — offline, and through ``vllm serve`` streaming
and not.

Runs with the vLLM virtualenv in which the toktrace wheel is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "vllm_scenarios.py"
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from served import Server, sse_events  # noqa: E402
from test_vllm import Trace, close  # noqa: E402


def run(tmp: Path, scenario: str, **env: str) -> tuple[dict, Trace]:
    name = f"{scenario}-{'-'.join(f'{k}{v}' for k, v in env.items()) or 'off'}"
    trace_dir, out = tmp / name, tmp / f"{name}.json"
    full = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    full.update(TOKTRACE_DIR=str(trace_dir), **env)
    proc = subprocess.run([sys.executable, str(SCENARIOS), scenario, str(out)],
                          env=full, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "toktrace:" not in proc.stderr, [l for l in proc.stderr.splitlines() if "toktrace:" in l]
    return json.loads(out.read_text()), Trace(trace_dir)


def engine_arrivals(trace: Trace) -> dict[str, dict]:
    return {r["Arrival"]["internal_id"]: r["Arrival"]
            for r in trace.processes[trace.engine[0]] if "Arrival" in r}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    return run(tmp_path_factory.mktemp("topk"), "topk", TOKTRACE_TOPK_SAMPLE="1")


def test_every_request_has_top5_in_the_trace_and_its_client_what_it_asked(sampled):
    out, trace = sampled
    arrivals = engine_arrivals(trace)
    asked_counts = {}
    for req in out["requests"]:
        [iid] = trace.internal_ids_for(req["request_id"])
        [co] = req["outputs"]
        toks = trace.tokens[iid]
        assert [t["token_id"] for t in toks] == co["token_ids"]
        assert all(len(t["top"]) == 5 for t in toks), iid
        asked = arrivals[iid]["params"]["logprobs"]
        asked_counts[asked] = asked_counts.get(asked, 0) + 1
        # The arrival says what the client asked and what the trace added.
        assert arrivals[iid]["trace_top_k"] == (None if asked == 5 else 5), arrivals[iid]
        if asked is None:
            assert co["logprobs"] is None and co["cumulative_logprob"] is None, req["request_id"]
            continue
        for tok, lps in zip(toks, co["logprobs"]):
            # Exactly the asked number of ranked candidates (the sampled token
            # comes on top when it is not among them), equal to the trace's.
            top = {int(t): v[0] for t, v in lps.items() if v[1] <= asked}
            assert len(top) == asked, lps
            assert {t for t, _ in tok["top"][:asked]} == set(top)
            assert close(tok["logprob"], lps[str(tok["token_id"])][0])
    assert asked_counts == {None: 6, 2: 3, 5: 3}


def test_same_prompts_share_a_hash_and_different_ones_do_not(sampled):
    out, trace = sampled
    arrivals = engine_arrivals(trace)
    by_prompt: dict[tuple, set] = {}
    for req in out["requests"]:
        [iid] = trace.internal_ids_for(req["request_id"])
        by_prompt.setdefault(tuple(req["prompt_token_ids"]), set()).add(arrivals[iid]["prompt_hash"])
    assert all(len(h) == 1 and None not in h for h in by_prompt.values()), by_prompt
    assert len({h for hs in by_prompt.values() for h in hs}) == len(by_prompt) == 6


def test_a_fraction_takes_the_prompts_its_hash_picks(tmp_path):
    from toktrace._native import topk_sampled

    out, trace = run(tmp_path, "topk", TOKTRACE_TOPK_SAMPLE="0.5", TOKTRACE_TOPK="3")
    arrivals = engine_arrivals(trace)
    picked = 0
    for req in out["requests"]:
        [iid] = trace.internal_ids_for(req["request_id"])
        a = arrivals[iid]
        chosen = topk_sampled(a["prompt_hash"], 0.5)
        asked = a["params"]["logprobs"]
        assert a["trace_top_k"] == (3 if chosen and (asked is None or asked < 3) else None), a
        picked += chosen
        if asked is None:
            assert req["outputs"][0]["logprobs"] is None
            widths = {len(t.get("top") or []) for t in trace.tokens[iid]}
            assert widths == ({3} if chosen else {0}), (iid, widths)
    assert 0 < picked < len(out["requests"])


def test_one_at_a_time_the_outputs_are_byte_for_byte_those_without_it(tmp_path):
    on, _ = run(tmp_path, "topk-serial", TOKTRACE_TOPK_SAMPLE="1")
    off, _ = run(tmp_path, "topk-serial")

    def client_view(out: dict) -> str:
        return json.dumps([{k: v for k, v in r.items() if k != "metrics"} for r in out["requests"]],
                          sort_keys=True)

    assert client_view(on) == client_view(off)


def test_batch_variance_is_flagged_exactly_when_same_prompt_answers_differ(tmp_path):
    """One greedy prompt alone, in a batch of 32 and beside a long prefill
    (no prefix cache, 64-token budget): the flag must say what the tokens
    say. On these CPUs the three answers have been identical to the bit, so
    this guards against false alarms on real data; the planted test in
    analyzer/tests proves the finding itself."""
    out, trace = run(tmp_path, "variance", TOKTRACE_TOPK_SAMPLE="1")
    by_prompt: dict[tuple, list[str]] = {}
    for req in out["requests"]:
        [iid] = trace.internal_ids_for(req["request_id"])
        by_prompt.setdefault(tuple(req["prompt_token_ids"]), []).append(iid)
    [copies] = [ids for ids in by_prompt.values() if len(ids) == 3]

    def parted(a: str, b: str) -> bool:
        ta, tb = trace.tokens[a], trace.tokens[b]
        return any(x["token_id"] != y["token_id"] or abs(x["logprob"] - y["logprob"]) > 1e-4
                   for x, y in zip(ta, tb))

    proc = subprocess.run([str(Path(sys.executable).parent / "toktrace"), "requests", str(trace.path),
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    flagged = {r["internal_id"] for r in json.loads(proc.stdout) if "batch_variance" in r["flags"]}
    expected = {c for c in copies[1:] if parted(c, copies[0])}
    assert flagged == expected, (flagged, expected)


# ===== through `vllm serve` =====


def _complete(port: int, prompt: str, logprobs: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0}
    if logprobs is not None:
        body.update(logprobs=logprobs, return_tokens_as_token_ids=True)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        got = json.load(resp)
    choice = got["choices"][0]
    return {"id": got["id"], "logprobs": choice.get("logprobs"), "tokens": got["usage"]["completion_tokens"]}


def _stream(port: int, prompt: str, logprobs: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0,
                            "stream": True, "stream_options": {"include_usage": True}}
    if logprobs is not None:
        body.update(logprobs=logprobs, return_tokens_as_token_ids=True)
    rid, chunks, tokens, lps = None, [], None, []
    for event in sse_events(port, body):
        rid = event["id"]
        if event.get("usage") and not event.get("choices"):
            tokens = event["usage"]["completion_tokens"]
            continue
        for choice in event.get("choices") or []:
            chunks.append(choice)
            if choice.get("logprobs"):
                lps.append(choice["logprobs"])
    return {"id": rid, "tokens": tokens, "logprobs": lps or None,
            "chunk_logprobs": [c.get("logprobs") for c in chunks]}


def test_served_clients_get_what_they_asked_streaming_and_not(tmp_path):
    server = Server(tmp_path, tmp_path / "trace", env={"TOKTRACE_TOPK_SAMPLE": "1"})
    got = []
    try:
        server.start()
        for i, (fn, asked) in enumerate([(_complete, None), (_complete, 2), (_stream, None), (_stream, 2)]):
            got.append((fn(server.port, f"the little girl saw {i} red balls and", asked), asked))
    finally:
        server.stop()
    trace = Trace(server.trace_dir)
    for g, asked in got:
        [iid] = trace.internal_ids_for(g["id"] + "-0")
        toks = trace.tokens[iid]
        assert len(toks) == g["tokens"] and all(len(t["top"]) == 5 for t in toks), iid
        if asked is None:
            assert g["logprobs"] is None, g
            assert all(lp is None for lp in g.get("chunk_logprobs", [])), g
            continue
        parts = g["logprobs"] if isinstance(g["logprobs"], list) else [g["logprobs"]]
        ids = [int(t.split(":", 1)[1]) for p in parts for t in p["tokens"]]
        values = [v for p in parts for v in p["token_logprobs"]]
        tops = [t for p in parts for t in p["top_logprobs"]]
        assert ids == [t["token_id"] for t in toks]
        assert all(close(a, t["logprob"]) for a, t in zip(values, toks))
        assert all(len(t) == asked for t in tops), tops
