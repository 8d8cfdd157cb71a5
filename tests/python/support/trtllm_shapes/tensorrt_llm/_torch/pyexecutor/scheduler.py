"""Test scaffolding (see tensorrt_llm/__init__.py): ``ScheduledRequests`` in
both shapes, and a small FCFS scheduler standing in for the capacity and
micro-batch schedulers.

- 2026 (``scheduler/scheduler.py`` at 002f3cc3): ``context_requests_chunking``
  and ``context_requests_last_chunk`` lists, ``context_requests`` a property
  joining them, ``generation_requests``, ``paused_requests``,
  ``all_requests()``; ``recompute_paused_requests`` is set on it by
  ``PyExecutor._schedule`` (py_executor.py at 0004396).
- 2025 (``PyExecutor._schedule`` at 9521caf4): ``context_requests``,
  ``generation_requests`` and ``paused_requests`` plain attributes.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from tensorrt_llm import LAYOUT

from .llm_request import LlmRequest, LlmRequestState

SchedulerOutput = namedtuple("SchedulerOutput", ["context_requests", "generation_requests", "paused_requests",
                                                 "fitting_disagg_gen_init_requests", "num_fitting_requests"])


class _ScheduledRequests2026:
    def __init__(self) -> None:
        self.context_requests_chunking: list[LlmRequest] = []
        self.context_requests_last_chunk: list[LlmRequest] = []
        self.generation_requests: list[LlmRequest] = []
        self.paused_requests: list[LlmRequest] = []

    @property
    def context_requests(self) -> list[LlmRequest]:
        return self.context_requests_chunking + self.context_requests_last_chunk

    def reset_context_requests(self, context_requests: list[LlmRequest]) -> None:
        self.context_requests_chunking = [r for r in context_requests if not r.is_last_context_chunk]
        self.context_requests_last_chunk = [r for r in context_requests if r.is_last_context_chunk]

    @property
    def batch_size(self) -> int:
        return len(self.context_requests) + len(self.generation_requests)

    @property
    def num_context_requests(self) -> int:
        return len(self.context_requests)

    def all_requests(self) -> list[LlmRequest]:
        return self.context_requests + self.generation_requests


class _ScheduledRequests2025:
    def __init__(self) -> None:
        self.context_requests: list[LlmRequest] = []
        self.generation_requests: list[LlmRequest] = []
        self.paused_requests: list[LlmRequest] = []

    @property
    def batch_size(self) -> int:
        return len(self.context_requests) + len(self.generation_requests)

    def all_requests(self) -> list[LlmRequest]:
        return self.context_requests + self.generation_requests


ScheduledRequests: Any = _ScheduledRequests2026 if LAYOUT == "2026" else _ScheduledRequests2025


class FakeScheduler:
    """FCFS over the active requests within a token budget; context requests
    are chunked. Which generation requests the capacity scheduler pauses is
    scaffolding (``pause_plan``: iteration -> client ids), so tests choose it.
    Requests in ``inflight_req_ids`` (pipeline micro-batches in flight) are
    skipped, as the C++ schedulers do."""

    def __init__(self, max_batch_size: int, max_num_tokens: int, chunk_size: int,
                 pause_plan: dict[int, list[int]]) -> None:
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.chunk_size = chunk_size
        self.pause_plan = pause_plan
        self.iteration = 0

    def schedule_request(self, active_requests: list[LlmRequest], inflight_req_ids: Any) -> SchedulerOutput:
        pause = set(self.pause_plan.get(self.iteration, ()))
        budget = self.max_num_tokens
        ctx: list[LlmRequest] = []
        gen: list[LlmRequest] = []
        paused: list[LlmRequest] = []
        for req in active_requests:
            if len(ctx) + len(gen) >= self.max_batch_size:
                break
            if req.request_id in inflight_req_ids:
                # Still in a pipeline micro-batch whose tokens have not come
                # back: the capacity scheduler skips in-flight ids.
                continue
            if req.state == LlmRequestState.GENERATION_IN_PROGRESS:
                if req.py_client_id in pause and not req.is_child:
                    paused.append(req)
                    continue
                cost = 1 + len(req.py_draft_tokens or ())  # one token plus the draft tokens it verifies
                if budget >= cost:
                    gen.append(req)
                    budget -= cost
            elif req.state == LlmRequestState.CONTEXT_INIT and budget > 0:
                chunk = min(req.context_remaining_length, self.chunk_size, budget)
                req.context_chunk_size = chunk
                ctx.append(req)
                budget -= chunk
        return SchedulerOutput(ctx, gen, paused, [], len(ctx) + len(gen))
