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
