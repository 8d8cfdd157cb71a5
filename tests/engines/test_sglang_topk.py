"""Top-K for the trace alone (``TOKTRACE_TOPK_SAMPLE``) on real SGLang: the
sampled requests' candidates are in the trace, and every client gets
exactly what it asked for (SGLang: requests whose client asked for no
logprobs are the ones sampled; a client that asked for some is left as it
asked). The scenario's clients ask for none or for 5: the SGLang adapter
records one K per step, the smallest any of its requests asked for.

Runs with the SGLang virtualenv in which the toktrace wheel is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from test_sglang import SCENARIOS, STUB, Trace, close  # noqa: E402


def run(tmp: Path, **env: str) -> tuple[dict, Trace]:
    name = "topk-" + ("-".join(f"{k}{v}" for k, v in env.items()) or "off")
    trace_dir, out = tmp / name, tmp / f"{name}.json"
    full = {k: v for k, v in os.environ.items() if "TOKTRACE" not in k}
    full.update(TOKTRACE_DIR=str(trace_dir), SGLANG_USE_CPU_ENGINE="1", **env)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STUB), full.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(SCENARIOS), "topk", str(out)], env=full,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "toktrace:" not in proc.stderr, [l for l in proc.stderr.splitlines() if "toktrace:" in l]
    return json.loads(out.read_text()), Trace(trace_dir)


def test_sampled_requests_have_top5_in_the_trace_and_clients_what_they_asked(tmp_path):
    on, trace = run(tmp_path, TOKTRACE_TOPK_SAMPLE="1")
    off, _ = run(tmp_path)
    counts: dict = {}
    for req in on["requests"]:
        rid, asked = req["rid"], req["asked"]
        counts[asked] = counts.get(asked, 0) + 1
        a = trace.arrivals[rid]
        toks = trace.tokens[rid]
        assert [t["token_id"] for t in toks] == req["output_ids"]
        assert a["params"]["logprobs"] == asked, a
        assert a["prompt_hash"] is not None
        if asked is None:
            # Sampled: top-5 in the trace, nothing logprob-shaped for the client.
            assert a["trace_top_k"] == 5, a
            assert all(len(t["top"]) == 5 for t in toks), rid
            assert not req["token_logprobs"] and not req["top_logprobs"], req
        else:
            assert a["trace_top_k"] is None, a
            assert all(len(t["top"]) == asked for t in toks), rid
            assert all(len(pos) == asked for pos in req["top_logprobs"]), req["top_logprobs"]
            assert all(close(t["logprob"], lp[0]) for t, lp in zip(toks, req["token_logprobs"]))
    assert counts == {None: 6, 5: 6}

    # What the clients got is the same with the setting off (greedy, one batch).
    def client_view(out: dict) -> str:
        return json.dumps([{k: r[k] for k in ("rid", "output_ids", "text", "token_logprobs", "top_logprobs",
                                              "meta_logprob_keys")} for r in out["requests"]], sort_keys=True)

    assert client_view(on) == client_view(off)


def _complete(port: int, prompt: str, logprobs: int | None, streaming: bool) -> dict:
    import urllib.request

    from served import sse_events

    body: dict = {"model": "tiny", "prompt": prompt, "max_tokens": 12, "temperature": 0.0}
    if logprobs is not None:
        body["logprobs"] = logprobs
    if streaming:
        body.update(stream=True, stream_options={"include_usage": True})
        rid, tokens, parts = None, None, []
        for event in sse_events(port, body):
            rid = event["id"]
            if event.get("usage") and not event.get("choices"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices") or []:
                parts.append(choice.get("logprobs"))
        return {"id": rid, "tokens": tokens, "logprobs": [p for p in parts if p]}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        got = json.load(resp)
    lp = got["choices"][0].get("logprobs")
    return {"id": got["id"], "tokens": got["usage"]["completion_tokens"], "logprobs": [lp] if lp else []}


def test_served_clients_get_what_they_asked_streaming_and_not(tmp_path):
    from served import Server

    server = Server(tmp_path, tmp_path / "trace", env={"TOKTRACE_TOPK_SAMPLE": "1"}, engine="sglang")
    got = []
    try:
        server.start()
        for i, (asked, streaming) in enumerate([(None, False), (5, False), (None, True), (5, True)]):
            got.append((_complete(server.port, f"the little girl saw {i} red balls and", asked, streaming), asked))
    finally:
        server.stop()
    trace = Trace(server.trace_dir)
    for g, asked in got:
        # SGLang's completion id is the request's rid.
        a = trace.arrivals[g["id"]]
        toks = trace.tokens[g["id"]]
        assert len(toks) == g["tokens"], g
        assert all(len(t["top"]) == 5 for t in toks), g["id"]
        if asked is None:
            assert a["trace_top_k"] == 5 and a["params"]["logprobs"] is None, a
            assert g["logprobs"] == [], g
        else:
            assert a["trace_top_k"] is None and a["params"]["logprobs"] == 5, a
            tops = [t for p in g["logprobs"] for t in p["top_logprobs"]]
            assert len(tops) == len(toks) and all(len(t) == 5 for t in tops), tops
