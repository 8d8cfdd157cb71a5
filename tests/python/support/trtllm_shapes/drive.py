"""Test scaffolding: run one workload through the stand-in TensorRT-LLM
(``tensorrt_llm`` in this directory) the way an MPI worker does, and write
what the engine itself did as JSON.

Usage: python drive.py SPEC.json OUT.json

As in a worker: ``tensorrt_llm`` is imported first (which is what toktrace's
activation waits for), ``py_executor`` later; then, as older releases'
KV-cache estimation does, a first executor runs a few dummy requests with
``is_warmup`` set and is shut down; then the real executor takes the
workload (enqueue_request from this thread, the loop in its worker thread).

stdout carries the engine's outputs per client (tokens and finish reasons),
so a traced and an untraced run can be compared byte for byte. OUT.json also
holds, when tracing is on, what the adapter still keeps for the executor at
the end (request ids it holds arrival times or traced state for), so tests
can check that state stays bounded.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import tensorrt_llm  # noqa: F401 - the import toktrace's activation hooks


def requests_of(spec: dict, ExecutorRequest: Any) -> list[Any]:
    out = []
    for r in spec["requests"]:
        k = r.get("logprobs")
        req = ExecutorRequest(
            input_token_ids=[(r["client"] * 131 + i * 17) % 30000 + 3 for i in range(r["prompt"])],
            max_tokens=r["max_tokens"], end_id=2, client_id=r["client"],
            temperature=r.get("temperature"), top_k=r.get("top_k"), top_p=r.get("top_p"), seed=r.get("seed"),
            return_log_probs=k is not None, num_logprobs=k or 0,
            logprobs_simple_format=bool(r.get("simple")), n=r.get("n", 1), streaming=bool(r.get("streaming")))
        req.fake_arrive_iter = r.get("arrive_iter", 0)
        req.fake_stop_at = r.get("stop_at")
        req.fake_cached_prefix = r.get("cached_prefix", 0)
        req.fake_invalid = bool(r.get("invalid"))
        out.append(req)
    return out


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    from tensorrt_llm._torch.pyexecutor.llm_request import ExecutorRequest
    from tensorrt_llm._torch.pyexecutor.py_executor import Distributed, PyExecutor

    common = dict(dist=Distributed(rank=spec.get("rank", 0), tp_size=spec.get("tp_size", 1),
                                   pp_size=spec.get("pp_size", 1)),
                  disable_overlap_scheduler=not spec.get("overlap", False),
                  max_batch_size=spec.get("max_batch_size", 8), max_num_tokens=spec.get("max_num_tokens", 64),
                  chunk_size=spec.get("chunk_size", 16), stream_interval=spec.get("stream_interval", 1),
                  kv_blocks=spec.get("kv_blocks", 256), tokens_per_block=spec.get("tokens_per_block", 8))

    if spec.get("warmup"):
        warm = PyExecutor(**common, is_warmup=True)
        dummies = requests_of({"requests": [dict(client=900 + i, prompt=8, max_tokens=2, logprobs=1)
                                            for i in range(spec["warmup"])]}, ExecutorRequest)
        warm.enqueue_requests(dummies)
        warm.start_worker()
        warm.shutdown()
        warm.is_warmup = False

    ex = PyExecutor(**common, pause_plan={int(k): v for k, v in spec.get("pause", {}).items()},
                    cancel_plan={int(k): v for k, v in spec.get("cancel", {}).items()},
                    fail_plan=spec.get("fail_iters", []), max_num_active_requests=spec.get("max_active"),
                    max_draft_len=spec.get("draft_k", 0))
    clients: dict[int, list[int]] = {}
    workload = requests_of(spec, ExecutorRequest)
    if spec.get("batch_enqueue"):
        rids = ex.enqueue_requests(workload)  # the LLM API's batch path
    else:
        rids = [ex.enqueue_request(req) for req in workload]
    for req, rid in zip(workload, rids):
        # n > 1 exists in the 2026 layout only (children get the ids after the parent's)
        n = req.num_return_sequences if tensorrt_llm.LAYOUT == "2026" else 1
        clients[req.client_id] = list(range(rid, rid + n))
    ex.start_worker()
    ex.shutdown()

    rid_client = {rid: c for c, rids in clients.items() for rid in rids}
    tokens: dict[int, list[int]] = {}
    for t in ex.sampler.log:
        tokens.setdefault(t["rid"], []).append(t["token"])
    outputs = {str(c): {str(rid): [tokens.get(rid, []), ex.fake_finishes.get(rid)] for rid in rids}
               for c, rids in sorted(clients.items())}
    print(json.dumps(outputs, sort_keys=True))
    with open(sys.argv[2], "w") as f:
        json.dump(dict(clients=clients, rid_client=rid_client, launches=ex.fake_launches,
                       tokens=ex.sampler.log, finishes=ex.fake_finishes, enqueued_ns=ex.fake_enqueued_ns,
                       delivered_ns=ex.fake_delivered_ns, dropped=ex.fake_dropped,
                       responses={str(k): len(v) for k, v in ex.responses.items()},
                       adapter=adapter_state(ex)), f)


def adapter_state(ex: Any) -> dict | None:
    """What toktrace's TensorRT-LLM adapter still holds for this executor once
    the workload is over (None when it does not trace it)."""
    st = ex.__dict__.get("_toktrace")
    if st is None:
        return None
    return dict(enqueued=sorted(st.enqueued), reqs=sorted(st.reqs), pending=len(st.pending),
                deferred=[f[0] for f in st.deferred])


if __name__ == "__main__":
    main()
