"""Test scaffolding (see tensorrt_llm/__init__.py): ``SampleState`` and a
sampler with the TorchSampler's update behaviour and logprob shapes, over a
deterministic stand-in model.

- ``sample_async`` picks the next token of every request that samples in
  this batch (last context chunk, generation); in the overlap loop the token
  of the previous step is not on the request yet, so positions count the
  sampled-but-not-added tokens.
- ``update_requests`` adds them (``add_new_token``), skips requests that
  already finished (a request can ride along one more step in the overlap
  loop), appends one logprob entry per token to ``py_result``, and finishes
  requests with ``finish_by(END_ID | LENGTH, 0)``, as the TorchSampler does
  (``sampler.py`` at 00026bd1, ``update_requests``).
- Logprob entries (``py_num_logprobs`` = K): 2026 ``sampler/logprobs.py``
  (3b58bec8, ``store_logprobs_list_to_request``): ``{sampled: Logprob(lp,
  max(K+1, rank)), **top_k}`` — the sampled token first, and when it is in
  the top-K the top-K entry (its real rank) replaces its value; K = 0:
  ``{sampled: Logprob(lp, rank)}``; simple format: the float. 2025 (the
  late-2025 TorchSampler ``_store_logprobs_list_to_request``): the top-K
  first, the sampled token added after it when it is outside.
- ``SampleState`` lists its requests as ``requests`` (2026) or
  ``scheduled_requests`` (2025).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from tensorrt_llm import LAYOUT

from .llm_request import FinishReason, LlmRequest, LlmRequestState, Logprob

VOCAB = 32000
CANDIDATES = 8
# The rank at which the stand-in model's sampled token sits, cycling with the position.
SAMPLED_RANKS = (1, 2, 1, 6, 1, 3, 1, 1, 4)


@dataclasses.dataclass
class SampleState:
    requests: list[LlmRequest] | None = None
    scheduled_requests: Any = None
    host: list[tuple[LlmRequest, int, Any]] = dataclasses.field(default_factory=list)
    sampler_event: Any = None
    runtime_draft_len: int = 0
    # Scaffolding for pipeline parallelism, where rank 0 does not sample: the
    # launch that computed the batch, and (2025, whose SampleState lists the
    # whole batch) the requests the last pipeline rank samples.
    fake_launch: int | None = None
    fake_sampling: list[LlmRequest] | None = None


def candidates(rid: int, pos: int) -> list[tuple[int, float]]:
    """The stand-in model's distribution at a position: (token, logprob), best first."""
    base = (rid * 7919 + pos * 104729) % VOCAB
    return [((base + 37 * j) % VOCAB, round(-0.25 - 0.75 * j - ((rid + pos) % 7) * 0.01, 4))
            for j in range(CANDIDATES)]


def sample(req: LlmRequest, pos: int) -> tuple[int, float, int, list[tuple[int, float]]]:
    """(token, logprob, rank, candidates) the stand-in model samples at output position pos."""
    cands = candidates(req.py_request_id, pos)
    if req.fake_stop_at is not None and pos == req.fake_stop_at:
        # The end token, sampled as the most likely one.
        cands = [(req.py_end_id, -0.05)] + [c for c in cands if c[0] != req.py_end_id][: CANDIDATES - 1]
        return req.py_end_id, -0.05, 1, cands
    rank = SAMPLED_RANKS[(req.py_request_id + pos) % len(SAMPLED_RANKS)]
    token, lp = cands[rank - 1]
    return token, lp, rank, cands


def logprob_entry(req: LlmRequest, token: int, lp: float, rank: int, cands: list[tuple[int, float]]) -> Any:
    k = req.py_num_logprobs
    if k == 0:
        if req.py_logprobs_simple_format:
            return lp
        return {token: Logprob(lp, rank)}
    top = {t: Logprob(v, r + 1) for r, (t, v) in enumerate(cands[:k])}
    if LAYOUT == "2026":
        return {token: Logprob(lp, max(k + 1, rank)), **top}
    entry = dict(top)
    if token not in entry:
        entry[token] = Logprob(lp, max(k + 1, rank))
    return entry


class FakeSampler:
    SampleState = SampleState

    def __init__(self) -> None:
        self.inflight: dict[int, int] = {}  # request id -> sampled tokens not added yet
        self.log: list[dict] = []  # the engine's own account of every token it added

    def sample_async(self, scheduled_requests: Any, outputs: dict,
                     num_context_logits_prefix_sum: Any = None) -> SampleState:
        launch = outputs["fake_launch"]  # scaffolding: which forward produced these logits
        batch = list(scheduled_requests.context_requests) + list(scheduled_requests.generation_requests)
        # Only the last context chunk samples.
        sampling = [req for req in batch
                    if not (req.state == LlmRequestState.CONTEXT_INIT and not req.is_last_context_chunk)]
        host = self.sample_requests(sampling, launch)
        if LAYOUT == "2026":
            return SampleState(requests=[h[0] for h in host], host=host)
        return SampleState(scheduled_requests=scheduled_requests, host=host)

    def sample_requests(self, requests: list[LlmRequest], launch: int | None) -> list[tuple[LlmRequest, int, Any]]:
        """The stand-in model's next token for each request (its host results).
        Also what the last pipeline rank sends back under pipeline parallelism."""
        host = []
        for req in requests:
            rid = req.py_request_id
            pending = self.inflight.get(rid, 0)
            pos = req.get_num_tokens(0) - req.orig_prompt_len + pending
            token, lp, rank, cands = sample(req, pos)
            host.append((req, launch, (token, lp, rank, cands)))
            self.inflight[rid] = pending + 1
        return host

    def update_requests(self, state: SampleState, resource_manager: Any = None) -> None:
        for req, launch, (token, lp, rank, cands) in state.host:
            rid = req.py_request_id
            self.inflight[rid] -= 1
            if req.state == LlmRequestState.GENERATION_COMPLETE:
                continue  # finished by an earlier step's token: this one is discarded
            index = req.get_num_tokens(0) - req.orig_prompt_len
            req.add_new_token(token, 0)
            entry = None
            if req.py_return_log_probs:
                entry = logprob_entry(req, token, lp, rank, cands)
                req.py_result.append_log_probs([[entry]])
            k = req.py_num_logprobs if req.py_return_log_probs else 0
            self.log.append(dict(
                rid=rid, index=index, token=token, launch=launch, t_ns=time.monotonic_ns(),
                logprob=lp if req.py_return_log_probs else None,
                rank=rank if req.py_return_log_probs and not req.py_logprobs_simple_format else None,
                top=[list(c) for c in cands[:k]]))
            req.py_decoding_iter += 1
            # The stand-in model accepts no draft token (one token per step), so
            # speculation changes the work launched but not the tokens added.
            req.py_num_accepted_draft_tokens = 0
            if token == req.py_end_id:
                req.finish_by(FinishReason.END_ID, 0)
            elif req.get_num_tokens(0) - req.orig_prompt_len >= req.py_max_new_tokens:
                req.finish_by(FinishReason.LENGTH, 0)
