"""Test helpers shared by tests/python and tests/engines: one process's
records as `toktrace dump` prints them, joined per request — the tokens of a
step (columns laid over runs of requests) unpacked into one dict per token."""

from __future__ import annotations

from collections import defaultdict
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


def requests_of(records: list[dict[str, Any]]) -> tuple[dict[int, str], dict[str, dict], dict[str, dict]]:
    """(key -> internal id, arrival by id, finish by id) of one process's records."""
    ids: dict[int, str] = {}
    arrivals: dict[str, dict] = {}
    for r in records:
        if "Arrival" in r:
            ids[r["Arrival"]["req"]] = r["Arrival"]["internal_id"]
            arrivals[r["Arrival"]["internal_id"]] = r["Arrival"]
    finishes = {ids[r["Finish"]["req"]]: r["Finish"] for r in records if "Finish" in r}
    return ids, arrivals, finishes


def tokens_by_request(steps: list[dict[str, Any]], ids: dict[int, str]) -> dict[str, list[dict]]:
    """Each request's tokens (see ``step_tokens``) in output order; a token
    also carries its step (``step``) and the step's position (``step_no``)."""
    tokens: dict[str, list[dict]] = defaultdict(list)
    for n, s in enumerate(steps):
        for req, tok in step_tokens(s):
            tok["step"], tok["step_no"] = s, n
            tokens[ids[req]].append(tok)
    for toks in tokens.values():
        toks.sort(key=lambda x: x["index"])
    return tokens
