"""Test scaffolding (see tensorrt_llm/__init__.py): ``PyExecutor`` with the
call sequence of its event loops.

Per iteration, as in the published source:

2026 (``py_executor.py`` at 0004396):
- ``_executor_loop``: ``_prepare_and_schedule_batch`` (→
  ``_fetch_and_activate_new_requests``, ``_schedule``) →
  ``_terminate_requests(paused)`` + ``_pause_requests(paused)`` →
  ``resource_manager.prepare_resources`` → ``_forward_step(batch)`` →
  ``_sample_async(batch, outputs)`` → ``_update_request_states(batch)`` →
  ``_update_requests(sample_state, self.resource_manager)`` →
  ``_handle_canceled_requests()`` → ``_handle_responses()`` →
  ``update_resources`` → ``iter_counter += 1``.
- ``_executor_loop_overlap``: schedule → ``_terminate_requests(paused)`` →
  ``_forward_step(batch N, previous_tensors_device, None)`` →
  ``_update_requests(previous_batch.sample_state)`` (batch N-1) →
  ``_pause_requests(paused)`` → ``_sample_async(batch N)`` →
  ``_update_request_states(batch N)`` → ``_process_previous_batch()`` (→
  ``_handle_canceled_requests``, ``_handle_responses(emit_first_iter=…)``)
  → ``previous_batch = BatchState(scheduled_requests, sample_state)``.

2025 (``py_executor.py`` at 9521caf4):
- ``_executor_loop``: ``_fetch_new_requests`` → ``_schedule`` →
  ``_pause_requests(paused)`` (pauses and terminates) → ``_forward_step`` →
  ``_sample_async`` → ``_update_request_states`` →
  ``_update_requests(sample_state)`` → ``_handle_cancelled_requests()`` →
  ``_handle_responses()``.
- ``_executor_loop_overlap``: fetch → schedule → pause →
  ``_forward_step(batch N, previous_tensors_device)`` → ``_sample_async`` →
  ``_update_request_states`` → ``_process_previous_batch()`` (→
  ``_update_requests(previous_batch.sample_state)``,
  ``_handle_cancelled_requests``, ``_handle_responses``) → the batch's
  non-final context chunks split off → ``previous_batch =
  BatchState(sample_state)``.

Pipeline parallelism (``_executor_loop_pp``), as seen by rank 0, the first
pipeline rank (it schedules; it is not the last rank, so it does not sample):

- 2026: fetch → ``_schedule`` (``_pp_schedule_and_propagate``) →
  ``_add_inflight_ids`` → ``prepare_resources`` →
  ``_forward_step_inter_pp(batch)`` (which calls ``_forward_step`` and
  ``_update_request_states`` and returns a ``SampleState`` of the batch's
  sampling requests) → the sample state of the micro-batch launched
  ``pp_size - 1`` iterations earlier comes back around the ring
  (``_ring_broadcast_sample_state``, the synchronous relay, the default) →
  ``_handle_executed_batch`` (``_update_requests(sample_state)``,
  ``_handle_canceled_requests``, ``_handle_responses``,
  ``_remove_inflight_ids``).
- 2025: fetch → ``_schedule`` → ``_add_inflight_ids`` (every scheduled
  request) → ``_forward_step_inter_pp(batch)`` → the next micro-batch slot's
  tokens are received (``recv_object``) and that batch finalized
  (``_update_requests``, ``_handle_cancelled_requests``,
  ``_handle_responses``, ``_remove_inflight_ids``).

The other pipeline ranks are not modelled: what the last rank samples is
computed here when its sample state "arrives".

Arrival, as in the published source: ``enqueue_requests`` queues the batch
itself, without ``enqueue_request`` (2026: ``ExecutorRequestQueue.
enqueue_requests``; 2025: straight into ``request_queue``). Requests wait in
the request queue (2025) or the waiting queue (2026) while
``max_num_active_requests`` are active; a 2026 cancellation removes a waiting
request from the waiting queue (``_handle_canceled_requests``), a 2025 one only
reaches active requests (the id is then dropped and the request runs later).
A 2026 request that fails validation at activation is failed with
``_handle_errors(msg, requests=[request], charge_budget=False)`` and never
becomes active.

Speculative decoding with a drafter (non-overlap loops only, as in the
sources for drafter flows): ``_prepare_draft_requests`` puts placeholder
zeros in ``py_draft_tokens`` before scheduling; before the forward the
drafter installs its real draft tokens and pads them with zeros to the static
maximum for CUDA graphs (2026: ``Drafter.pad_draft_tokens_for_cuda_graph``,
which first records ``py_draft_tokens_effective_len``; 2025:
``_pad_to_max_draft_tokens``, which records nothing).

The constructor, the request queue, the KV-cache manager and the stand-in
model are scaffolding. Scaffolding also keeps the engine's own account of
what happened (``fake_launches``: every forward's rows and the KV usage,
queue lengths and time at launch, a row's decode count being the real work,
one token plus the draft tokens really proposed, padding left out;
``sampler.log``: every token added, with
the launch that computed it; ``fake_finishes``), which the tests compare
the trace with.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections import deque
from typing import Any, Iterable

from tensorrt_llm import LAYOUT

from .llm_request import (ExecutorRequest, FinishReason, LlmRequest, LlmRequestState, LlmResponse,
                          executor_request_to_llm_request)
from .sampler import FakeSampler, SampleState
from .scheduler import FakeScheduler, ScheduledRequests

SHUTDOWN_REQUEST_ID = -1

# The cancellation handler's name in each layout. FAKE_TLLM_RENAME_CANCEL=1
# (scaffolding) simulates a release that renamed it, to test the adapter's
# refusal of a layout it does not know.
CANCEL_NAME = "_handle_canceled_requests" if LAYOUT == "2026" else "_handle_cancelled_requests"
RENAMED = os.environ.get("FAKE_TLLM_RENAME_CANCEL") == "1"


@dataclasses.dataclass
class RequestQueueItem:
    id: int
    request: ExecutorRequest | None = None
    child_req_ids: list[int] = dataclasses.field(default_factory=list)
    is_canceled_request: bool = False

    @property
    def is_shutdown_request(self) -> bool:
        return self.id == SHUTDOWN_REQUEST_ID

    def due(self, iteration: int) -> bool:
        """Scaffolding: a request whose fake_arrive_iter is still ahead has not
        been enqueued yet as far as the engine is concerned."""
        return self.request is None or self.request.fake_arrive_iter <= iteration


@dataclasses.dataclass
class BatchState:
    sample_state: SampleState
    scheduled_requests: Any = None


@dataclasses.dataclass
class BatchStatePP(BatchState):
    microbatch_id: int = -1


class Mapping:
    def __init__(self, tp_size: int) -> None:
        self.tp_group = list(range(tp_size))


class Distributed:
    def __init__(self, rank: int = 0, tp_size: int = 1, pp_size: int = 1) -> None:
        self.rank = rank
        self.tp_rank = rank % tp_size
        self.tp_size = tp_size
        self.pp_size = pp_size
        self.pp_rank = rank // tp_size
        self.has_pp = pp_size > 1
        self.is_first_pp_rank = self.pp_rank == 0
        self.is_last_pp_rank = self.pp_rank == pp_size - 1
        self.is_second_last_pp_rank = self.pp_rank == pp_size - 2
        self.world_size = tp_size * pp_size
        self.mapping = Mapping(tp_size)


class KvCacheStats:
    def __init__(self, max_num_blocks: int, free_num_blocks: int, tokens_per_block: int) -> None:
        self.max_num_blocks = max_num_blocks
        self.free_num_blocks = free_num_blocks
        self.used_num_blocks = max_num_blocks - free_num_blocks
        self.tokens_per_block = tokens_per_block


class FakeKVCacheManager:
    """Blocks per request; prefix reuse applied when a request's first chunk is
    prepared (the V1 path: ``prepare_resources`` moves
    ``context_current_position`` past the reused prefix)."""

    def __init__(self, blocks: int, tokens_per_block: int) -> None:
        self.max_blocks = blocks
        self.tokens_per_block = tokens_per_block
        self.alloc: dict[int, int] = {}
        self.reused_now: dict[int, int] = {}
        self.reused_done: set[int] = set()

    def get_kv_cache_stats(self) -> KvCacheStats:
        used = sum(self.alloc.values())
        return KvCacheStats(self.max_blocks, self.max_blocks - used, self.tokens_per_block)

    def _grow(self, req: LlmRequest, tokens: int) -> None:
        need = -(-tokens // self.tokens_per_block)
        self.alloc[req.py_request_id] = max(self.alloc.get(req.py_request_id, 0), need)

    def prepare_resources(self, batch: Any) -> None:
        self.reused_now = {}
        for req in batch.context_requests:
            rid = req.py_request_id
            if (req.fake_cached_prefix and rid not in self.reused_done
                    and req.context_current_position == 0):
                req.context_current_position = req.fake_cached_prefix
                self.reused_now[rid] = req.fake_cached_prefix
            self.reused_done.add(rid)
            self._grow(req, req.context_current_position + req.context_chunk_size)
        for req in batch.generation_requests:
            self._grow(req, req.get_num_tokens(0) + 1 + len(req.py_draft_tokens or ()))

    def free_resources(self, req: LlmRequest) -> None:
        self.alloc.pop(req.py_request_id, None)


class ResourceManager:
    def __init__(self, kv: FakeKVCacheManager) -> None:
        self.resource_managers = {"kv_cache_manager": kv}
        self.kv = kv

    def prepare_resources(self, batch: Any) -> None:
        self.kv.prepare_resources(batch)

    def update_resources(self, batch: Any, *args: Any) -> None:
        pass

    def free_resources(self, req: LlmRequest) -> None:
        self.kv.free_resources(req)


class ExecutorRequestQueue:
    """2026: requests (and cancel / shutdown items) waiting to be fetched, in
    one FIFO ``queue.Queue`` (``get_request_queue()``) as in the source."""

    def __init__(self, first_id: int) -> None:
        self.enqueue_lock = threading.Lock()
        self.request_queue: queue.Queue[RequestQueueItem] = queue.Queue()
        self.next_id = first_id

    def _enqueue_impl(self, requests: list[ExecutorRequest]) -> list[int]:
        rids = []
        with self.enqueue_lock:
            for request in requests:
                rid = self.next_id
                children = list(range(rid + 1, rid + request.num_return_sequences))
                self.next_id += request.num_return_sequences
                self.request_queue.put(RequestQueueItem(rid, request, children))
                rids.append(rid)
        return rids

    def enqueue_requests(self, requests: list[ExecutorRequest]) -> list[int]:
        return self._enqueue_impl(list(requests))

    def enqueue_request(self, request: ExecutorRequest) -> int:
        return self._enqueue_impl([request])[0]

    def enqueue_cancel_request(self, rid: int) -> None:
        # Queued behind the request it cancels, as in the source. Scaffolding:
        # it goes before the shutdown item, which the driver enqueues right
        # after starting the worker but which stands for the client's last act.
        with self.enqueue_lock, self.request_queue.mutex:
            items = self.request_queue.queue
            at = next((i for i, item in enumerate(items) if item.is_shutdown_request), len(items))
            items.insert(at, RequestQueueItem(rid, is_canceled_request=True))

    def enqueue_shutdown_request(self) -> None:
        with self.enqueue_lock:
            self.request_queue.put(RequestQueueItem(SHUTDOWN_REQUEST_ID))

    def get_request_queue(self) -> queue.Queue:
        return self.request_queue

    def get_request_queue_size(self) -> int:
        with self.request_queue.mutex:
            return sum(1 for item in self.request_queue.queue if item.request is not None)

    def pop_due(self, iteration: int) -> list[RequestQueueItem]:
        """Every item the engine would see now, in queue order (scaffolding:
        a request not due yet has not been enqueued, so it blocks nothing but
        the shutdown item behind it)."""
        return pop_due(self.request_queue, iteration)


def pop_due(request_queue: queue.Queue, iteration: int, max_requests: int | None = None) -> list[RequestQueueItem]:
    """Take the due items off a request queue in order; at most
    ``max_requests`` requests (2025: the fetch stops at free capacity), the
    rest stay queued, and so does a shutdown item behind any of them."""
    out: list[RequestQueueItem] = []
    with request_queue.mutex:
        keep: deque[RequestQueueItem] = deque()
        held = False
        taken = 0
        for item in request_queue.queue:
            if item.request is not None and (not item.due(iteration)
                                             or (max_requests is not None and taken >= max_requests)):
                keep.append(item)
                held = True
            elif item.is_shutdown_request and held:
                keep.append(item)
            else:
                out.append(item)
                taken += item.request is not None
        request_queue.queue.clear()
        request_queue.queue.extend(keep)
    return out


class FCFSWaitingQueue(deque):
    """2026 ``scheduler/waiting_queue.py``: fetched requests waiting for room
    among the active ones (the FCFS policy)."""

    def add_requests(self, requests: Iterable[RequestQueueItem]) -> None:
        self.extend(requests)

    def pop_request(self) -> RequestQueueItem:
        return self.popleft()

    def peek_request(self) -> RequestQueueItem:
        return self[0]

    def prepend_requests(self, requests: Iterable[RequestQueueItem]) -> None:
        self.extendleft(reversed(list(requests)))

    def remove_by_ids(self, request_ids: set[int]) -> None:
        kept = [item for item in self if item.id not in request_ids]
        self.clear()
        self.extend(kept)


class FakeDrafter:
    """Stands in for a drafter of the two-model / n-gram kind: it proposes a
    varying number of draft tokens per generation request (scaffolding
    pattern, 0 to max), and pads them with zeros to the static maximum for
    CUDA graphs. 2026 (``Drafter.pad_draft_tokens_for_cuda_graph``, per
    llm_request.py at 002f3cc3) records the real count in
    ``py_draft_tokens_effective_len`` first; the 2025 executor pads in
    ``_pad_to_max_draft_tokens`` and records nothing."""

    PATTERN = (0, 2, 1, 3)

    def __init__(self, max_draft_len: int) -> None:
        self.max_draft_len = max_draft_len
        self._static_max_total_draft_tokens = max_draft_len

    def prepare_draft_tokens(self, scheduled_requests: Any, resource_manager: Any = None) -> None:
        for req in scheduled_requests.generation_requests:
            n = min(self.PATTERN[(req.py_request_id + req.py_decoding_iter) % len(self.PATTERN)], self.max_draft_len)
            req.py_draft_tokens = [(req.py_request_id * 31 + req.py_decoding_iter * 7 + j) % 30000 + 3
                                   for j in range(n)]
            req.fake_real_draft_len = n

    def pad_draft_tokens_for_cuda_graph(self, scheduled_requests: Any, resource_manager: Any = None) -> None:
        for req in scheduled_requests.generation_requests:
            n = len(req.py_draft_tokens)
            req.py_draft_tokens_effective_len = n
            req.py_draft_tokens.extend(0 for _ in range(self._static_max_total_draft_tokens - n))


class _PretrainedConfig:
    _name_or_path = "fake/tiny-trtllm"
    bos_token_id = 1
    eos_token_id = 2
    pad_token_id = 0


class FakeModelEngine:
    """Stands in for PyTorchModelEngine: forward() does no model work; it
    records the launch as the engine saw it."""

    def __init__(self, executor: "PyExecutor") -> None:
        self.executor = executor
        self.iter_counter = 0
        self.model = type("Model", (), {})()
        self.model.model_config = type("ModelConfig", (), {"pretrained_config": _PretrainedConfig()})()
        if LAYOUT == "2026":
            self.llm_args = type("LlmArgs", (), {"model": "fake/tiny-trtllm"})()

    def forward(self, scheduled_requests: Any, resource_manager: Any, new_tensors_device: Any = None,
                **kwargs: Any) -> dict:
        ex = self.executor
        if ex.fake_iteration in ex.fail_plan:
            raise RuntimeError("scaffolding: the forward pass failed")
        launch = len(ex.fake_launches)
        reused = resource_manager.kv.reused_now
        rows = [[r.py_request_id, r.context_chunk_size, 0, reused.get(r.py_request_id, 0)]
                for r in scheduled_requests.context_requests]
        # The real work of a generation row: one token plus the draft tokens
        # really proposed; ``computed`` also counts the CUDA-graph padding.
        rows += [[r.py_request_id, 0, 1 + r.fake_real_draft_len, 0] for r in scheduled_requests.generation_requests]
        computed = [r.context_chunk_size for r in scheduled_requests.context_requests]
        computed += [1 + len(r.py_draft_tokens) for r in scheduled_requests.generation_requests]
        stats = resource_manager.kv.get_kv_cache_stats()
        ex.fake_launches.append(dict(
            launch=launch, iteration=ex.fake_iteration, t_ns=time.monotonic_ns(), rows=rows,
            kv=1 - stats.free_num_blocks / stats.max_num_blocks, waiting=ex.fake_waiting_at_launch,
            running=len(ex.active_requests), computed=computed,
            paused=[r.py_request_id for r in ex.fake_paused_now]))
        self.iter_counter += 1
        return {"logits": None, "fake_launch": launch}


class PyExecutor:
    def __init__(self, *, dist: Distributed, disable_overlap_scheduler: bool = False, max_batch_size: int = 8,
                 max_num_tokens: int = 64, chunk_size: int = 16, stream_interval: int = 1, kv_blocks: int = 256,
                 tokens_per_block: int = 8, pause_plan: dict[int, list[int]] | None = None,
                 cancel_plan: dict[int, list[int]] | None = None, fail_plan: Iterable[int] = (),
                 is_warmup: bool = False, start_worker: bool = False, max_num_active_requests: int | None = None,
                 max_draft_len: int = 0) -> None:
        self.dist = dist
        self.disable_overlap_scheduler = disable_overlap_scheduler
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.max_input_len = 0x7FFFFFFF
        self.stream_interval = stream_interval
        self.enable_attention_dp = False
        self.is_warmup = is_warmup
        # Scaffolding default: room for every request, so requests wait only
        # where a test asks for it.
        self.max_num_active_requests = max_num_active_requests or (1 << 30)
        self.kv_cache_manager = FakeKVCacheManager(kv_blocks, tokens_per_block)
        self.resource_manager = ResourceManager(self.kv_cache_manager)
        self.scheduler = FakeScheduler(max_batch_size, max_num_tokens, chunk_size, pause_plan or {})
        self.sampler = FakeSampler()
        self.model_engine = FakeModelEngine(self)
        self.active_requests: list[LlmRequest] = []
        self.previous_batch: BatchState | None = None
        self.responses: dict[int, list[LlmResponse]] = {}
        self.response_cv = threading.Condition()
        self.is_shutdown = False
        self.inflight_req_ids: set[int] = set()
        self.global_rank = dist.rank
        # Scaffolding: plans, and the engine's own account.
        self.cancel_plan = cancel_plan or {}
        self.fail_plan = set(fail_plan)
        self.fake_iteration = 0
        self.fake_launches: list[dict] = []
        self.fake_finishes: dict[int, str] = {}
        self.fake_dropped: dict[int, str] = {}  # requests the engine let go without ever activating them
        self.fake_paused_now: list[LlmRequest] = []
        self.fake_client_ids: dict[int, int] = {}
        self.fake_enqueued_ns: dict[int, int] = {}
        self.fake_delivered_ns: list[int] = []  # when responses were handed to the waiting clients
        if LAYOUT == "2026":
            self.iter_counter = 0
            self.llm_args = self.model_engine.llm_args
            self.executor_request_queue = ExecutorRequestQueue(first_id=max_batch_size + 1)
            self.waiting_queue = FCFSWaitingQueue()
            self.canceled_req_ids: list[int] = []
            self.drafter = FakeDrafter(max_draft_len) if max_draft_len else None
            self.use_spec_decode = self.drafter is not None
            self.max_total_draft_tokens = max_draft_len
        else:
            self.request_queue: queue.Queue = queue.Queue()
            self.enqueue_lock = threading.Lock()
            self.next_req_id = max_batch_size + 1
            self.canceled_req_ids: set[int] = set()
            # 2025 keeps the drafter's engine on the executor and pads in it.
            self.draft_model_engine = FakeDrafter(max_draft_len) if max_draft_len else None
            self.max_draft_tokens = max_draft_len
        # Pipeline parallelism: one slot per micro-batch in flight.
        self.num_micro_batches = self.dist.pp_size
        self.micro_batches: list[BatchStatePP | None] = [None] * self.num_micro_batches
        self.unhandled_batch_counter = 0
        self.executed_batch_response_queue: queue.Queue[BatchStatePP] = queue.Queue()
        if self.dist.pp_size > 1:
            if self.dist.is_last_pp_rank:
                raise NotImplementedError("scaffolding: only a non-last pipeline rank (rank 0) is modelled")
            if max_draft_len:
                raise NotImplementedError("drafting is not supported with the pipeline-parallel loop")
            self.event_loop = self._executor_loop_pp
        else:
            self.event_loop = self._executor_loop if disable_overlap_scheduler else self._executor_loop_overlap
        if max_draft_len and not disable_overlap_scheduler:
            raise NotImplementedError("scaffolding: drafting is modelled in the non-overlap loop only")
        self.worker_thread: threading.Thread | None = None
        if start_worker:
            self.start_worker()

    # ----- public API (BaseWorker's side) -----

    def start_worker(self) -> None:
        self.worker_thread = threading.Thread(target=self._event_loop_wrapper, daemon=True)
        self.worker_thread.start()

    def _event_loop_wrapper(self) -> None:
        self.event_loop()

    def _fake_enqueued(self, rids: list[int], requests: list[ExecutorRequest]) -> None:
        now = time.monotonic_ns()
        for rid, request in zip(rids, requests):
            self.fake_client_ids[rid] = request.client_id
            self.fake_enqueued_ns[rid] = now

    if LAYOUT == "2026":
        def enqueue_request(self, request: ExecutorRequest, result_wait_queue: Any = None) -> int:
            rid = self.executor_request_queue.enqueue_request(request)
            self._fake_enqueued([rid], [request])
            return rid

        def enqueue_requests(self, requests: list[ExecutorRequest], result_wait_queue: Any = None) -> list[int]:
            # As in the source: the queue takes the whole batch, not through enqueue_request.
            rids = self.executor_request_queue.enqueue_requests(requests)
            self._fake_enqueued(rids, requests)
            return rids

        def cancel_request(self, id: int) -> None:
            self.executor_request_queue.enqueue_cancel_request(id)

        def shutdown(self) -> None:
            self.executor_request_queue.enqueue_shutdown_request()
            if self.worker_thread is not None:
                self.worker_thread.join()

        @property
        def should_stop_processing(self) -> bool:
            return self.is_shutdown and len(self.active_requests) == 0 and len(self.waiting_queue) == 0
    else:
        def enqueue_request(self, request: ExecutorRequest, query: Any = None) -> int:
            with self.enqueue_lock:
                rid = self.next_req_id
                self.request_queue.put(RequestQueueItem(rid, request))
                self.next_req_id += 1
            self._fake_enqueued([rid], [request])
            return rid

        def enqueue_requests(self, requests: list[ExecutorRequest]) -> list[int]:
            # As in the source: straight into request_queue under one lock.
            rids = []
            with self.enqueue_lock:
                for request in requests:
                    self.request_queue.put(RequestQueueItem(self.next_req_id, request))
                    rids.append(self.next_req_id)
                    self.next_req_id += 1
            self._fake_enqueued(rids, requests)
            return rids

        def cancel_request(self, id: int) -> None:
            self.canceled_req_ids.add(id)

        def shutdown(self) -> None:
            self.request_queue.put(RequestQueueItem(SHUTDOWN_REQUEST_ID))
            if self.worker_thread is not None:
                self.worker_thread.join()

    # ----- scaffolding -----

    def _fake_note_waiting(self) -> None:
        """The queue length as the step is launched, read right after the
        adapter reads it: clients enqueue from another thread, so a read at
        the forward pass could count a request that came in meanwhile."""
        self.fake_waiting_at_launch = self.fake_waiting()

    def fake_waiting(self) -> int:
        if LAYOUT == "2026":
            return len(self.waiting_queue) + self.executor_request_queue.get_request_queue_size()
        return self.request_queue.qsize()

    def _fake_iteration_start(self) -> None:
        """Clients cancelling, and the scheduler's notion of the iteration."""
        for client in self.cancel_plan.get(self.fake_iteration, ()):
            for rid, cid in self.fake_client_ids.items():
                if cid == client:
                    self.cancel_request(rid)
        self.scheduler.iteration = self.fake_iteration
        if not self.active_requests and not self.fake_waiting():
            time.sleep(0.001)  # idle: the real fetch would block here

    def _fake_finish(self, req: LlmRequest, reason: str) -> None:
        self.fake_finishes[req.py_request_id] = reason

    @staticmethod
    def _fake_reason(req: LlmRequest) -> str:
        return req._reasons[0].name

    # ----- fetching -----

    def _merge(self, items: list[RequestQueueItem]) -> list[LlmRequest]:
        merged = []
        for item in items:
            req = executor_request_to_llm_request(item.id, item.request, item.child_req_ids)
            merged.append(req)
            merged.extend(req.child_requests)
        return merged

    if LAYOUT == "2026":
        def _fetch_and_activate_new_requests(self) -> list[LlmRequest]:
            # _fetch_new_requests: everything queued moves to the waiting
            # queue (_handle_special_queue_items takes cancellations and the
            # shutdown out), then as many as there is room for are popped.
            accepted = []
            for item in self.executor_request_queue.pop_due(self.fake_iteration):
                if item.is_shutdown_request:
                    self.is_shutdown = True
                    break
                if item.is_canceled_request:
                    self.canceled_req_ids.append(item.id)
                else:
                    accepted.append(item)
            self.waiting_queue.add_requests(accepted)
            room = self.max_num_active_requests - len(self.active_requests)
            popped = []
            while self.waiting_queue and room >= 1 + len(self.waiting_queue.peek_request().child_req_ids):
                item = self.waiting_queue.pop_request()
                room -= 1 + len(item.child_req_ids)
                popped.append(item)
            validated = [r for r in self._merge(popped) if not self._respond_if_invalid(r)]
            self.active_requests.extend(validated)
            return validated

        def _respond_if_invalid(self, request: LlmRequest) -> bool:
            """_validate_request failing: the request is failed on its own and
            never becomes active."""
            if not request.fake_invalid:
                return False
            self._handle_errors("scaffolding: the request failed validation", requests=[request],
                                charge_budget=False)
            return True

        def _prepare_and_schedule_batch(self) -> tuple[Any, Any]:
            self._fetch_and_activate_new_requests()
            if self.should_stop_processing:
                return None, None
            if self.drafter is not None:
                self._prepare_draft_requests()
            scheduled_batch, _, _ = self._schedule()
            return scheduled_batch, None

        def _prepare_draft_requests(self) -> None:
            # Placeholder drafts so the scheduler and KV cache know speculation is coming.
            for req in self.active_requests:
                if req.state != LlmRequestState.GENERATION_IN_PROGRESS:
                    continue
                req.py_last_draft_tokens = req.py_draft_tokens
                req.py_draft_tokens = [0] * self.max_total_draft_tokens
                req.py_draft_pages_allocated = self.max_total_draft_tokens
    else:
        def _fetch_new_requests(self) -> list[LlmRequest]:
            # _get_from_request_queue: at most as many requests as there is room for.
            room = self.max_num_active_requests - len(self.active_requests)
            items = pop_due(self.request_queue, self.fake_iteration, max(room, 0))
            valid = []
            for item in items:
                if item.is_shutdown_request:
                    self.is_shutdown = True
                    break
                valid.append(item)
            new = self._merge(valid)
            self.active_requests.extend(new)
            return new

        def _prepare_draft_requests(self) -> None:
            for req in self.active_requests:
                if req.state != LlmRequestState.GENERATION_IN_PROGRESS:
                    continue
                req.py_last_draft_tokens = req.py_draft_tokens
                req.py_draft_tokens = [0] * self.max_draft_tokens
                req.py_draft_pages_allocated = self.max_draft_tokens

        def _prepare_draft_tokens(self, scheduled_requests: Any) -> None:
            self.draft_model_engine.prepare_draft_tokens(scheduled_requests)
            # _pad_to_max_draft_tokens: zeros up to the maximum, no count kept.
            for req in scheduled_requests.generation_requests:
                req.py_draft_tokens.extend(0 for _ in range(self.max_draft_tokens - len(req.py_draft_tokens)))

    # ----- scheduling -----

    def _schedule(self) -> tuple[Any, list, int]:
        out = self.scheduler.schedule_request(self.active_requests, self.inflight_req_ids)
        scheduled = ScheduledRequests()
        if LAYOUT == "2026":
            scheduled.reset_context_requests(out.context_requests)
            scheduled.recompute_paused_requests = []
        else:
            scheduled.context_requests = out.context_requests
        scheduled.generation_requests = out.generation_requests
        scheduled.paused_requests = out.paused_requests
        self.fake_paused_now = list(out.paused_requests)
        return scheduled, out.fitting_disagg_gen_init_requests, out.num_fitting_requests

    def _terminate_request(self, request: LlmRequest) -> None:
        self.resource_manager.free_resources(request)

    def _terminate_requests(self, requests: Iterable[LlmRequest]) -> None:
        for req in requests:
            self._terminate_request(req)

    def _pause_requests(self, requests_to_pause: Iterable[LlmRequest]) -> None:
        for req in requests_to_pause:
            req.pause(self.max_input_len)
            if LAYOUT == "2025":
                self._terminate_request(req)

    def _add_inflight_ids(self, scheduled_requests: Any) -> None:
        """Pipeline parallelism: requests whose next step needs this batch's
        tokens are skipped by the scheduler until it comes back (2026: the
        last context chunks and the generation requests; 2025: every
        scheduled request)."""
        if LAYOUT == "2026":
            added = [r.request_id for r in scheduled_requests.context_requests_last_chunk]
        else:
            added = [r.request_id for r in scheduled_requests.context_requests]
        added += [r.request_id for r in scheduled_requests.generation_requests]
        self.inflight_req_ids.update(added)
        scheduled_requests.added_inflight_req_ids = added

    def _remove_inflight_ids(self, scheduled_requests: Any) -> None:
        self.inflight_req_ids.difference_update(scheduled_requests.added_inflight_req_ids)
        scheduled_requests.added_inflight_req_ids = []

    # ----- one step -----

    if LAYOUT == "2026":
        def _forward_step(self, scheduled_requests: Any, new_tensors_device: Any = None,
                          num_accepted_tokens_device: Any = None) -> dict | None:
            self._fake_note_waiting()
            try:
                return self.model_engine.forward(scheduled_requests, self.resource_manager, new_tensors_device)
            except Exception as e:  # noqa: BLE001 - as PyExecutor does
                self._handle_errors(str(e))
                return None
    else:
        def _forward_step(self, scheduled_requests: Any, new_tensors_device: Any = None) -> dict | None:
            self._fake_note_waiting()
            try:
                return self.model_engine.forward(scheduled_requests, self.resource_manager, new_tensors_device)
            except Exception as e:  # noqa: BLE001
                self._handle_errors(str(e))
                return None

    def _sample_async(self, scheduled_batch: Any, batch_outputs: dict | None) -> SampleState | None:
        try:
            if batch_outputs is not None:
                return self.sampler.sample_async(scheduled_batch, batch_outputs, None)
        except Exception as e:  # noqa: BLE001
            self._handle_errors(str(e))
        return None

    def _update_request_states(self, scheduled_requests: Any) -> None:
        for request in scheduled_requests.context_requests:
            if request.state != LlmRequestState.GENERATION_COMPLETE:
                if LAYOUT == "2026":
                    request.py_last_context_chunk = (
                        request.context_current_position,
                        request.context_current_position + request.context_chunk_size)
                request.move_to_next_context_chunk()
            if request.context_remaining_length == 0 and request.state == LlmRequestState.CONTEXT_INIT:
                request.state = LlmRequestState.GENERATION_IN_PROGRESS

    if LAYOUT == "2026":
        def _update_requests(self, sample_state: SampleState, resource_manager: Any = None) -> None:
            try:
                self.sampler.update_requests(sample_state, resource_manager)
            except Exception as e:  # noqa: BLE001
                self._handle_errors(str(e))
    else:
        def _update_requests(self, sample_state: SampleState) -> None:
            try:
                self.sampler.update_requests(sample_state)
            except Exception as e:  # noqa: BLE001
                self._handle_errors(str(e))

    # ----- cancellation, responses, errors -----

    if LAYOUT == "2026":
        def _handle_canceled_requests(self) -> None:
            if len(self.canceled_req_ids) == 0:
                return
            canceled = set(self.canceled_req_ids)
            # Requests still waiting leave the waiting queue: never activated,
            # never answered here (the source only removes them).
            for item in self.waiting_queue:
                if item.id in canceled:
                    self.fake_dropped[item.id] = "cancelled while waiting"
            self.waiting_queue.remove_by_ids(canceled)
            for request in self.active_requests:
                rid = request.py_request_id if not request.is_child else request.parent_request_id
                if rid in canceled:
                    request.finish_by_reason(FinishReason.CANCELLED)
                    request.decoding_iter = request.py_decoding_iter
            self.canceled_req_ids.clear()
    else:
        def _handle_cancelled_requests(self) -> None:
            if len(self.canceled_req_ids) == 0:
                return
            cancelled_responses = {}
            left = []
            for request in self.active_requests:
                rid = request.py_request_id
                if rid in self.canceled_req_ids:
                    self._terminate_request(request)
                    request.finish_by_reason(FinishReason.CANCELLED)
                    cancelled_responses[rid] = request.create_response(False, self.dist.rank)
                    self._fake_finish(request, self._fake_reason(request))
                else:
                    left.append(request)
            self.active_requests = left
            self.canceled_req_ids.clear()
            self._enqueue_responses(cancelled_responses)

    def _should_emit(self, request: LlmRequest) -> bool:
        if LAYOUT == "2026":
            return (request.py_decoding_iter == 1 or request.is_finished
                    or request.py_decoding_iter % self.stream_interval == 0)
        return self.model_engine.iter_counter % self.stream_interval == 0 or request.is_finished

    def _respond(self) -> tuple[list[tuple[int, LlmResponse]], list[LlmRequest], list[LlmRequest]]:
        new_responses = []
        to_terminate = []
        new_active = []
        for request in self.active_requests:
            if request.is_attention_dp_dummy:
                to_terminate.append(request)
                continue
            request_done = False
            if self._should_emit(request):
                response = request.create_response(False, self.dist.rank)
                if response:
                    request_done = request.is_finished
                    new_responses.append((request.py_request_id, response))
            if request_done:
                to_terminate.append(request)
            else:
                new_active.append(request)
        return new_responses, to_terminate, new_active

    if LAYOUT == "2026":
        def _handle_responses(self, emit_first_iter: bool = True) -> list[LlmRequest]:
            new_responses, to_terminate, new_active = self._respond()
            self.active_requests.clear()
            self.active_requests.extend(new_active)
            self._enqueue_responses(new_responses)
            for request in to_terminate:
                self._fake_finish(request, self._fake_reason(request))
                self._terminate_request(request)
            return to_terminate

        def _enqueue_responses(self, responses: Iterable[tuple[int, LlmResponse]]) -> None:
            if 0 not in self.dist.mapping.tp_group:
                return
            if self.dist.rank == 0:
                with self.response_cv:
                    if responses:
                        self.fake_delivered_ns.append(time.monotonic_ns())
                    for req_id, resp in responses:
                        self.responses.setdefault(req_id, []).append(resp)
                    self.response_cv.notify_all()

        def _handle_errors(self, error_msg: str | None = None, *, requests: list[LlmRequest] | None = None,
                           charge_budget: bool = True, fatal_is_collective_aligned: bool = False) -> None:
            error_msg = error_msg or "error"
            failed = list(self.active_requests) if requests is None else requests
            error_responses = {}
            for request in failed:
                request.state = LlmRequestState.GENERATION_COMPLETE
                error_responses[request.py_request_id] = LlmResponse(
                    request.py_request_id, error_msg=error_msg, client_id=request.py_client_id)
                self._fake_finish(request, "error")
            if requests is None:
                self.active_requests.clear()
            else:
                self.active_requests = [r for r in self.active_requests if r not in requests]
            self._enqueue_responses(list(error_responses.items()))
            for request in failed:
                self._terminate_request(request)

        def _process_previous_batch(self) -> None:
            getattr(self, CANCEL_NAME)()
            self._handle_responses(emit_first_iter=True)
            self.resource_manager.update_resources(self.previous_batch.scheduled_requests)
    else:
        def _handle_responses(self) -> list[LlmRequest]:
            new_responses, to_terminate, new_active = self._respond()
            self.active_requests = new_active
            if len(new_responses) > 0:
                self._enqueue_responses(dict(new_responses))
            for request in to_terminate:
                self._fake_finish(request, self._fake_reason(request))
                self._terminate_request(request)
            return to_terminate

        def _enqueue_responses(self, responses: dict[int, LlmResponse]) -> None:
            if 0 not in self.dist.mapping.tp_group:
                return
            if self.dist.rank == 0:
                with self.response_cv:
                    if responses:
                        self.fake_delivered_ns.append(time.monotonic_ns())
                    for req_id, resp in responses.items():
                        self.responses.setdefault(req_id, []).append(resp)
                    self.response_cv.notify_all()

        def _handle_errors(self, error_msg: str | None = None) -> None:
            error_responses = {}
            error_msg = error_msg or "error"
            for request in self.active_requests:
                request.state = LlmRequestState.GENERATION_COMPLETE
                self._terminate_request(request)
                error_responses[request.py_request_id] = LlmResponse(
                    request.py_request_id, error_msg=error_msg, client_id=request.py_client_id)
                self._fake_finish(request, "error")
            self.active_requests.clear()
            self._enqueue_responses(error_responses)

        def _process_previous_batch(self) -> None:
            self._update_requests(self.previous_batch.sample_state)
            getattr(self, CANCEL_NAME)()
            self._handle_responses()
            self.resource_manager.update_resources(self.previous_batch.sample_state.scheduled_requests)

    # ----- event loops -----

    if LAYOUT == "2026":
        def _executor_loop(self) -> None:
            while True:
                self._fake_iteration_start()
                scheduled_batch, _ = self._prepare_and_schedule_batch()
                if scheduled_batch is None:
                    break
                self._terminate_requests(scheduled_batch.paused_requests)
                self._pause_requests(scheduled_batch.paused_requests)
                if scheduled_batch.batch_size > 0:
                    self.resource_manager.prepare_resources(scheduled_batch)
                    if self.drafter is not None and self.use_spec_decode:
                        self.drafter.prepare_draft_tokens(scheduled_batch, self.resource_manager)
                        # Pad draft tokens to the max draft length: CUDA graph compatibility.
                        self.drafter.pad_draft_tokens_for_cuda_graph(scheduled_batch, self.resource_manager)
                    batch_outputs = self._forward_step(scheduled_batch)
                    sample_state = self._sample_async(scheduled_batch, batch_outputs)
                    self._update_request_states(scheduled_batch)
                    self._update_requests(sample_state, self.resource_manager)
                    getattr(self, CANCEL_NAME)()
                    self._handle_responses()
                    self.resource_manager.update_resources(scheduled_batch)
                self.iter_counter += 1
                self.fake_iteration += 1

        def _executor_loop_overlap(self) -> None:
            while True:
                self._fake_iteration_start()
                scheduled_batch, _ = self._prepare_and_schedule_batch()
                if scheduled_batch is None:
                    break
                self._terminate_requests(scheduled_batch.paused_requests)
                can_queue = scheduled_batch.batch_size > 0
                if can_queue:
                    self.resource_manager.prepare_resources(scheduled_batch)
                    previous_tensors_device = self.previous_batch and self.previous_batch.sample_state
                    batch_outputs = self._forward_step(scheduled_batch, previous_tensors_device, None)
                if self.previous_batch is not None:
                    self._update_requests(self.previous_batch.sample_state)
                self._pause_requests(scheduled_batch.paused_requests)
                if can_queue:
                    sample_state = self._sample_async(scheduled_batch, batch_outputs)
                    self._update_request_states(scheduled_batch)
                if self.previous_batch is not None:
                    self._process_previous_batch()
                if can_queue and sample_state is not None:
                    self.previous_batch = BatchState(sample_state=sample_state, scheduled_requests=scheduled_batch)
                else:
                    self.previous_batch = None
                self.iter_counter += 1
                self.fake_iteration += 1
    else:
        def _executor_loop(self) -> None:
            while not self.is_shutdown or len(self.active_requests) > 0:
                self._fake_iteration_start()
                self._fetch_new_requests()
                if self.is_shutdown and len(self.active_requests) == 0:
                    break
                if self.draft_model_engine is not None:
                    self._prepare_draft_requests()
                scheduled_batch, _, _ = self._schedule()
                self._pause_requests(scheduled_batch.paused_requests)
                if scheduled_batch.batch_size > 0:
                    self.resource_manager.prepare_resources(scheduled_batch)
                    if self.draft_model_engine is not None:
                        self._prepare_draft_tokens(scheduled_batch)
                    batch_outputs = self._forward_step(scheduled_batch)
                    sample_state = self._sample_async(scheduled_batch, batch_outputs)
                    self._update_request_states(scheduled_batch)
                    self._update_requests(sample_state)
                    getattr(self, CANCEL_NAME)()
                    self._handle_responses()
                    self.resource_manager.update_resources(scheduled_batch)
                self.fake_iteration += 1

        def _executor_loop_overlap(self) -> None:
            while not self.is_shutdown or len(self.active_requests) > 0:
                self._fake_iteration_start()
                self._fetch_new_requests()
                if self.is_shutdown and len(self.active_requests) == 0:
                    break
                scheduled_batch, _, _ = self._schedule()
                self._pause_requests(scheduled_batch.paused_requests)
                if scheduled_batch.batch_size > 0:
                    self.resource_manager.prepare_resources(scheduled_batch)
                    previous_tensors_device = self.previous_batch and self.previous_batch.sample_state
                    batch_outputs = self._forward_step(scheduled_batch, previous_tensors_device)
                    sample_state = self._sample_async(scheduled_batch, batch_outputs)
                    self._update_request_states(scheduled_batch)
                    if self.previous_batch is not None:
                        self._process_previous_batch()
                        self.previous_batch = None
                    # As at 9521caf4: the non-final context chunks are split off
                    # after the step, so the batch object changes after launch.
                    scheduled_batch.chunked_requests = [
                        r for r in scheduled_batch.context_requests if r.context_remaining_length != 0]
                    scheduled_batch.context_requests = [
                        r for r in scheduled_batch.context_requests if r.context_remaining_length == 0]
                    if sample_state is not None:
                        self.previous_batch = BatchState(sample_state=sample_state)
                self.fake_iteration += 1


    # ----- pipeline parallelism (rank 0: first pipeline rank, not the last) -----

    if LAYOUT == "2026":
        def _forward_step_inter_pp(self, scheduled_batch: Any, gpu_forward_start: Any = None,
                                   gpu_forward_end: Any = None) -> SampleState:
            outputs = self._forward_step(scheduled_batch)
            self._update_request_states(scheduled_batch)
            sampling_requests = scheduled_batch.context_requests_last_chunk + scheduled_batch.generation_requests
            return self.sampler.SampleState(requests=sampling_requests, sampler_event=None, runtime_draft_len=0,
                                            fake_launch=outputs["fake_launch"] if outputs else None)

        def _ring_broadcast_sample_state(self, executed_batch: BatchStatePP | None) -> None:
            if executed_batch is None:
                return
            sample_state = executed_batch.sample_state
            if not self.dist.is_last_pp_rank:
                # recv_object from the previous pipeline rank: the host results
                # the last rank sampled (scaffolding computes them now).
                sample_state.host = self.sampler.sample_requests(sample_state.requests, sample_state.fake_launch)
            self.executed_batch_response_queue.put(executed_batch)
            # Rank 0 of two pipeline ranks is the second-last: it sends nothing on.

        def _handle_executed_batch(self, executed_batch: BatchStatePP | None) -> None:
            if executed_batch is None:
                return
            self._update_requests(executed_batch.sample_state)
            getattr(self, CANCEL_NAME)()
            self._handle_responses()
            self.resource_manager.update_resources(executed_batch.scheduled_requests)
            self._remove_inflight_ids(executed_batch.scheduled_requests)

        def _executor_loop_pp(self) -> None:
            microbatch_id = 0
            while True:
                self._fake_iteration_start()
                self._fetch_and_activate_new_requests()
                if self.should_stop_processing:
                    break
                # _pp_schedule_and_propagate: rank 0 schedules.
                scheduled_batch, _, _ = self._schedule()
                can_queue = scheduled_batch.batch_size > 0
                if not can_queue:
                    self.micro_batches[microbatch_id] = None
                else:
                    self._add_inflight_ids(scheduled_batch)
                    self.resource_manager.prepare_resources(scheduled_batch)
                    sample_state = self._forward_step_inter_pp(scheduled_batch)
                    self.micro_batches[microbatch_id] = BatchStatePP(
                        sample_state=sample_state, scheduled_requests=scheduled_batch, microbatch_id=microbatch_id)
                # Stage 2: the micro-batch launched pp_size - 1 iterations ago comes back.
                offset = -1 if self.dist.is_last_pp_rank else 1 - self.dist.pp_size
                executed_microbatch_id = (microbatch_id + offset) % self.num_micro_batches
                executed_batch = self.micro_batches[executed_microbatch_id]
                if executed_batch is not None:
                    self._ring_broadcast_sample_state(executed_batch)
                    self.unhandled_batch_counter += 1
                self.micro_batches[executed_microbatch_id] = None
                # Stage 3: the synchronous relay waits for at least one batch.
                executed_batches = []
                must_get = True
                while not self.executed_batch_response_queue.empty() or (
                        must_get and self.unhandled_batch_counter > 0):
                    executed_batches.append(self.executed_batch_response_queue.get())
                    must_get = False
                for batch in executed_batches:
                    self._handle_executed_batch(batch)
                self.unhandled_batch_counter -= len(executed_batches)
                microbatch_id = (microbatch_id + 1) % self.num_micro_batches
                self.iter_counter += 1
                self.fake_iteration += 1
            while self.unhandled_batch_counter > 0:
                self._handle_executed_batch(self.executed_batch_response_queue.get())
                self.unhandled_batch_counter -= 1
    else:
        def _forward_step_inter_pp(self, scheduled_batch: Any) -> SampleState:
            outputs = self._forward_step(scheduled_batch)
            # Scaffolding: which requests the last rank samples, known before
            # the context chunks move on.
            sampling = [r for r in scheduled_batch.context_requests if r.is_last_context_chunk]
            sampling += list(scheduled_batch.generation_requests)
            self._update_request_states(scheduled_batch)
            return self.sampler.SampleState(scheduled_requests=scheduled_batch, sampler_event=None,
                                            fake_launch=outputs["fake_launch"] if outputs else None,
                                            fake_sampling=sampling)

        def _executor_loop_pp(self) -> None:
            microbatch_id = 0
            while not self.is_shutdown or len(self.active_requests) > 0:
                self._fake_iteration_start()
                self._fetch_new_requests()
                if self.is_shutdown and len(self.active_requests) == 0:
                    break
                scheduled_batch, _, _ = self._schedule()
                can_queue = scheduled_batch.batch_size > 0
                if not can_queue:
                    self.micro_batches[microbatch_id] = None
                else:
                    self._add_inflight_ids(scheduled_batch)
                    self.resource_manager.prepare_resources(scheduled_batch)
                    sample_state = self._forward_step_inter_pp(scheduled_batch)
                    self.micro_batches[microbatch_id] = BatchStatePP(sample_state=sample_state,
                                                                     microbatch_id=microbatch_id)
                # Stage 2: receive the tokens of the next slot's batch from the previous rank.
                offset = -1 if self.dist.is_last_pp_rank else 1
                prev_microbatch_id = (microbatch_id + offset) % self.num_micro_batches
                previous_batch = self.micro_batches[prev_microbatch_id]
                if previous_batch is not None:
                    state = previous_batch.sample_state
                    state.host = self.sampler.sample_requests(state.fake_sampling, state.fake_launch)
                # Stage 3: finalize that batch.
                prev_microbatch_id = (microbatch_id + 1) % self.num_micro_batches
                previous_batch = self.micro_batches[prev_microbatch_id]
                if previous_batch is not None:
                    self._update_requests(previous_batch.sample_state)
                    getattr(self, CANCEL_NAME)()
                    self._handle_responses()
                    previous_scheduled_batch = previous_batch.sample_state.scheduled_requests
                    self.resource_manager.update_resources(previous_scheduled_batch)
                    self._remove_inflight_ids(previous_scheduled_batch)
                    self.micro_batches[prev_microbatch_id] = None
                microbatch_id = (microbatch_id + 1) % self.num_micro_batches
                self.fake_iteration += 1


if RENAMED:
    setattr(PyExecutor, "_handle_cancellations", getattr(PyExecutor, CANCEL_NAME))
    delattr(PyExecutor, CANCEL_NAME)
    CANCEL_NAME = "_handle_cancellations"
