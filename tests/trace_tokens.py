"""Test helper shared by tests/python and tests/engines: the tokens of one
step as `toktrace dump` prints it (columns laid over runs of requests),
unpacked into one dict per token."""

from __future__ import annotations

from typing import Any, Iterator


def step_tokens(step: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(request key, token) for every token of a dumped ``Step``. A token has
    ``index`` and ``token_id``; when its run carries logprobs, also
    ``logprob``, ``rank`` and ``top`` ([(id, logprob)], best first)."""
    t = step["tokens"]
    lp_i = cand_i = tok_i = 0
    for run in t["runs"]:
        k = run["top_k"]
        for j in range(run["count"]):
            tok: dict[str, Any] = {"index": run["first_index"] + j, "token_id": t["ids"][tok_i]}
            if k is not None:
                tok["logprob"] = t["logprobs"][lp_i]
                tok["rank"] = t["ranks"][lp_i]
                tok["top"] = list(zip(t["top_ids"][cand_i:cand_i + k], t["top_logprobs"][cand_i:cand_i + k]))
                lp_i += 1
                cand_i += k
            tok_i += 1
            yield run["req"], tok
