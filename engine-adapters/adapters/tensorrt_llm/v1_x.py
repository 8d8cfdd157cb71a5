"""TensorRT-LLM 1.x, PyTorch backend: every hook point and object field toktrace reads.

Where it runs: each MPI worker process builds a ``PyExecutor``
(``tensorrt_llm/executor/base_worker.py`` → ``create_py_executor``) and runs
its event loop in a daemon thread (``start_worker`` → ``_event_loop_wrapper``
→ ``_executor_loop`` without overlap, ``_executor_loop_overlap`` by default,
``_executor_loop_pp`` with pipeline parallelism). The loops are bound in
``__init__`` and are not patched; the helpers they call through ``self.`` are.
Only the rank that owns the batch records: ``dist.rank == 0`` (rank 0
schedules, receives the client's requests and publishes the responses; under
attention-DP only rank 0's share of the requests is traced). Nothing is
recorded while ``is_warmup`` is set (model warm-up, and the KV-cache
estimation run of older releases, whose dummy requests go through a first
executor).

Hook points (class ``PyExecutor`` in ``tensorrt_llm/_torch/pyexecutor/py_executor.py``):

- ``enqueue_request(request, …) -> req_id`` / ``enqueue_requests(requests)``:
  the moment the executor accepted a request (its arrival), kept by id; the
  ids are the ``LlmRequest.py_request_id`` of the request later.
  ``enqueue_requests`` queues the batch itself (it does not go through
  ``enqueue_request``), so its own hook stamps the batch.
- ``_schedule()``: on entry, requests newly activated into
  ``self.active_requests`` (appended at its end by
  ``_fetch_and_activate_new_requests`` / ``_fetch_new_requests``) get their
  arrival record (prompt length, sampling parameters, requested logprobs,
  client id). Its return value's ``paused_requests`` (and, with KV-cache
  manager V2, ``recompute_paused_requests``) are the preemptions reported
  with the next launched step.
- ``_forward_step(scheduled_requests, …)``: the moment a batch is launched (a
  step's *enter*) and its composition, read before ``_update_request_states``
  moves the context chunks on: per context request ``context_chunk_size``
  (prefill tokens of this chunk) and ``context_current_position`` (tokens
  already in the KV cache: on the first chunk of a (re)prefill, the prefix
  reused from the cache); per generation request 1 + its draft tokens
  decode tokens, the real ones: drafters pad ``py_draft_tokens`` with zeros
  to a static maximum for CUDA graphs, and the 2026 ones record the real
  count in ``py_draft_tokens_effective_len`` first (without it, every
  position counts); queue lengths; KV usage from
  ``kv_cache_manager.get_kv_cache_stats()`` (``1 - free_num_blocks /
  max_num_blocks``, the figure PyExecutor logs). Attention-DP and CUDA-graph
  padding dummies are left out.
- ``_sample_async(scheduled_batch, outputs) -> SampleState`` (and, on
  non-last pipeline ranks, ``_forward_step_inter_pp``): tags the returned
  ``SampleState`` with the launch of that very ``ScheduledRequests`` object.
  With pipeline parallelism rank 0 is the first, not the last, pipeline
  rank: ``_forward_step_inter_pp`` calls ``_forward_step`` (the launch) and
  returns the batch's ``SampleState``, whose tokens come back around the
  ring and reach ``_update_requests`` one or more iterations later (2026:
  ``_handle_executed_batch``; mid-2025: the loop's stage 3).
- ``_update_requests(sample_state, …)``: called once per launched batch with
  that ``SampleState`` — one loop iteration later in the overlap loop, where
  step N's tokens are added after step N+1 was launched — so tokens are
  paired with the launch that produced them, never with "the latest" one.
  New tokens are the growth of ``get_num_tokens(0)`` past what was recorded
  (read with ``get_token(0, pos)``); their logprobs are the last entries of
  ``py_result.log_probs[0]``.
- ``_enqueue_responses(responses)``: the first non-empty call after a
  batch's update is when its outputs are handed to the waiting clients: the
  step's *exit*.
- ``_handle_responses(…)``: requests that left ``active_requests`` have
  finished; the step (one native call) and then the finishes are recorded
  here.
- ``_handle_canceled_requests`` (``_handle_cancelled_requests`` in the
  mid-2025 revision, which drops cancelled requests from ``active_requests``
  right there: their finishes are recorded with the step that follows; later
  ones only mark them, and ``_handle_responses`` removes them). The 2026 one
  also removes cancelled requests still in the waiting queue: never
  activated, they have no arrival record (written at activation), so none
  is written for them and their enqueue times are dropped
  (``canceled_req_ids`` read before the call; a request still queued keeps
  its time, as the mid-2025 engine drops a cancellation of a request that is
  not active yet and runs it later).
- ``_handle_errors(…)``: requests failed by the engine finish with "error".
  A request that fails validation at activation (2026:
  ``_handle_errors(msg, requests=[request], charge_budget=False)`` from
  ``_fetch_and_activate_new_requests``) was never active: as above, nothing
  is recorded and its enqueue time is dropped. Not handled: the fatal path's
  drain of the queues (the executor shuts down; ``MAX_ARRIVED`` bounds the
  table).

Class ``LlmRequest`` (``tensorrt_llm/_torch/pyexecutor/llm_request.py``, a
subclass of the C++ ``bindings.internal.batch_manager.LlmRequest``):
``set_finished_reason(reason, beam)`` (called by ``finish_by``, which the
TorchSampler uses for END_ID / STOP_WORDS / LENGTH) and
``finish_by_reason(reason)`` (cancellation) are wrapped to keep the finish
reason of beam 0. When neither ran (samplers that finish requests inside
C++), the reason is "length" if ``is_finished_due_to_length`` says so, else
null.

Fields read: ``py_request_id``, ``py_client_id`` (the LLM API's request id:
the external id), ``orig_prompt_len``, ``py_max_new_tokens``,
``sampling_config`` (``temperature``/``top_p``/``top_k``/``random_seed``,
single-element lists in the C++ ``SamplingConfig``), ``py_return_log_probs``
and ``py_num_logprobs``, ``is_child``/``parent_request_id`` (n > 1: each
sequence is its own request, arriving with its parent),
``is_attention_dp_dummy``/``is_cuda_graph_dummy``/``is_dummy_request``,
``py_draft_tokens``/``py_draft_tokens_effective_len``. On ``PyExecutor``:
``dist``, ``is_warmup``, ``active_requests``, ``kv_cache_manager``, the
queues (``waiting_queue``, ``executor_request_queue`` and its
``get_request_queue()``, or mid-2025 ``request_queue``) and
``canceled_req_ids``.

Logprobs (``py_result.log_probs``, ``list[beam] of list[position]``): one
entry per generated token, a ``dict[token_id -> Logprob(logprob, rank)]`` or,
in the "simple format", a float. The sampled token is looked up by its id,
so every layout seen reads the same: the 2026 sampler puts the sampled token
first and then the top-K with ranks 1..K (``sampler/logprobs.py``
``store_logprobs_list_to_request``); late-2025 samplers put the top-K first
and add the sampled token after it when it is outside the top-K; earlier
ones give the top-K only (a sampled token outside it then has no logprob
here, and none is recorded). The top-K recorded is the entries ranked
1..``py_num_logprobs``, best first; the rank recorded is the sampled token's
``Logprob.rank`` (0 — "not reported", read back as null — for floats).

Checked against (2026-12-07; published source read through the source
index, not run; the release tag cannot be verified): NVIDIA/TensorRT-LLM
``py_executor.py`` at commit 0004396720054fd8e205cbf616f21f0b57c6b412, the
newest stored revision (2026), and at 9521caf4696c1fb79b0f946f0d980f8f0ebd3e64
(mid-2025); ``llm_request.py`` at 002f3cc3d0554c4ebd530d1354f96e89666d93b8
(2026; older than 0004396, which imports a name it lacks). ``version.py`` is
not stored at 0004396: the stored ones say "1.0.0rc4" (000a01de),
"1.2.0rc2" (b35ac1b6) and "1.3.0rc20" (one whose commit the index does not
name) — so 0004396 is taken as a 1.3 pre-release, tag not verified. Every
hook and field above was found there (per hook, with where:
``fixtures/TRTLLM_NOTES.md``) except the ``SamplingConfig`` subfields, the
logprob layouts and the model-name lookups, which rest on the earlier
checks: the 1.1.0rc6 side of the
merge left in Ataraksia/TensorRT-LLM@a451bf93, ``scheduler/scheduler.py`` at
002f3cc3, ``sampler/logprobs.py`` at 3b58bec8 (2026), ``sampler.py`` at
00026bd1 (2025) and another stored 2025 ``sampler.py`` for the late-2025
logprob layout, and the LlmRequest bindings (pybind and nanobind). Renames
covered here: ``_handle_cancelled_requests`` → ``_handle_canceled_requests``;
``_update_requests(sample_state)`` gained ``resource_manager``;
``_forward_step`` gained ``num_accepted_tokens_device``;
``_forward_step_inter_pp`` gained the GPU timing events; ``_handle_errors``
gained ``requests``/``charge_budget``/``fatal_is_collective_aligned``
(keyword-only); ``SampleState`` lists its requests as ``scheduled_requests``
(2025) or ``requests`` (2026) — not read, the launch record is used instead;
``ScheduledRequests.context_requests`` is an attribute (2025) or a property
(2026) — read the same way.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Iterable

import toktrace
from toktrace.adapters import _common as C

ENGINE = "tensorrt_llm"
ROLE = "executor"
PY_EXECUTOR = "tensorrt_llm._torch.pyexecutor.py_executor"
LLM_REQUEST = "tensorrt_llm._torch.pyexecutor.llm_request"

_guard = C.Guard(ENGINE)
_version = "unknown"
# The adapter's own cost, measured inside the hooks: [self ns, steps, step ns]
# (step ns = _forward_step() entry to the step's record).
_cost = [0, 0, 0]

# Launched-but-not-yet-updated batches remembered: the overlap loop keeps one
# in flight, pipeline parallelism one per micro-batch (up to 1024 with the
# asynchronous sample-state relay: MIN_ASYNC_MICRO_BATCH_NUM, 2026).
MAX_PENDING = 2048
# Arrivals kept between enqueue_request and activation (requests wait in the
# executor's queue until there is room for them).
MAX_ARRIVED = 1 << 16
NO_RANK = 0  # what the probe is given as the sampled token's rank: "not reported"

# Present in every checked revision; a release without one of them is refused.
REQUIRED = ("enqueue_request", "_schedule", "_forward_step", "_sample_async", "_update_requests",
            "_enqueue_responses", "_handle_responses", "_handle_errors")
# The cancellation handler, spelled both ways across the 1.x line.
CANCEL_NAMES = ("_handle_canceled_requests", "_handle_cancelled_requests")

# TensorRT-LLM FinishReason names -> the probe's words.
_REASONS = {"END_ID": "stop", "STOP_WORDS": "stop", "LENGTH": "length", "CANCELLED": "abort",
            "TIMED_OUT": "timeout"}


def cost() -> dict[str, float]:
    """Adapter self-time so far in this process (what the overhead budget is about)."""
    return C.cost_report(_cost)


def install(version: str) -> None:
    """Register the patches (applied as TensorRT-LLM imports the modules)."""
    global _version
    _version = version
    from toktrace import hooks

    hooks.when_imported(LLM_REQUEST, C.checked(ENGINE, version, _patch_llm_request))
    hooks.when_imported(PY_EXECUTOR, C.checked(ENGINE, version, _patch_py_executor))




def _patch_py_executor(mod: Any) -> None:
    C.require(mod, "PyExecutor", where=PY_EXECUTOR)
    P = mod.PyExecutor
    C.require(P, *REQUIRED, where="tensorrt_llm PyExecutor")
    cancel = [name for name in CANCEL_NAMES if hasattr(P, name)]
    if not cancel:
        raise C.AdapterError(f"tensorrt_llm PyExecutor has no {' or '.join(CANCEL_NAMES)}")
    C.patch(P, "enqueue_request", _wrap_enqueue_request)
    if hasattr(P, "enqueue_requests"):
        C.patch(P, "enqueue_requests", _wrap_enqueue_requests)
    C.patch(P, "_schedule", _wrap_schedule)
    C.patch(P, "_forward_step", _wrap_forward_step)
    C.patch(P, "_sample_async", _wrap_tagging("_sample_async"))
    if hasattr(P, "_forward_step_inter_pp"):  # non-last pipeline ranks build their SampleState here
        C.patch(P, "_forward_step_inter_pp", _wrap_tagging("_forward_step_inter_pp"))
    C.patch(P, "_update_requests", _wrap_update_requests)
    C.patch(P, "_enqueue_responses", _wrap_enqueue_responses)
    C.patch(P, "_handle_responses", _wrap_handle_responses)
    for name in cancel:
        C.patch(P, name, _wrap_cancel(name))
    C.patch(P, "_handle_errors", _wrap_handle_errors)


def _patch_llm_request(mod: Any) -> None:
    # Finish reasons only: the executor hooks work without them (reasons are
    # then null unless the request says it finished due to length), so a
    # layout without these names is no reason to leave the engine untraced.
    L = getattr(mod, "LlmRequest", None)
    if L is None:
        return
    if hasattr(L, "set_finished_reason"):
        C.patch(L, "set_finished_reason", _wrap_set_finished_reason)
    if hasattr(L, "finish_by_reason"):
        C.patch(L, "finish_by_reason", _wrap_finish_by_reason)


# ===== finish reasons (LlmRequest) =====

REASON_ATTR = "_toktrace_finish"


def _reason_word(reason: Any) -> str | None:
    name = getattr(reason, "name", None) or str(reason).rsplit(".", 1)[-1]
    return _REASONS.get(str(name).upper())


def _wrap_set_finished_reason(orig: Callable) -> Callable:
    def set_finished_reason(self: Any, reason: Any, beam: int, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, reason, beam, *args, **kwargs)
        try:
            if beam == 0:
                setattr(self, REASON_ATTR, _reason_word(reason))
        except Exception as exc:  # noqa: BLE001
            _guard.failed("LlmRequest.set_finished_reason", exc)
        return out

    return set_finished_reason


def _wrap_finish_by_reason(orig: Callable) -> Callable:
    def finish_by_reason(self: Any, reason: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, reason, *args, **kwargs)
        try:
            setattr(self, REASON_ATTR, _reason_word(reason))
        except Exception as exc:  # noqa: BLE001
            _guard.failed("LlmRequest.finish_by_reason", exc)
        return out

    return finish_by_reason


# ===== executor state =====


class _ExecState:
    """Per-executor bookkeeping between the hooks (rank 0 only)."""

    def __init__(self) -> None:
        self.steps = itertools.count()
        # Traced requests by py_request_id: the request, its prompt length and
        # the generated tokens recorded so far. Entries leave at the finish.
        self.reqs: dict[int, Any] = {}
        self.prompt: dict[int, int] = {}
        self.out: dict[int, int] = {}
        self.arrival: dict[int, int | None] = {}
        # Requests whose (re)prefill has started: only the first chunk's
        # starting position counts as a prefix-cache hit.
        self.started: set[int] = set()
        # Arrival times by request id, written by the thread that enqueues
        # (re-entrant: a release whose enqueue_requests calls enqueue_request
        # must not deadlock).
        self.lock = threading.RLock()
        self.enqueued: dict[int, int] = {}
        self.paused: list[int] = []
        # (the ScheduledRequests passed to _forward_step, its launch record)
        self.last: tuple[Any, tuple] | None = None
        # id(sample_state) -> (sample_state, launch); the state is held so its
        # id cannot be reused while the entry waits.
        self.pending: dict[int, tuple[Any, tuple]] = {}
        # The updated step not yet recorded: [launch, runs, updated_ns, exit_ns].
        self.done: list | None = None
        # Finishes seen before the step that carries their last tokens is recorded.
        self.deferred: list[tuple[int, str | None, int | None]] = []

    def forget(self, rid: int) -> None:
        for table in (self.reqs, self.prompt, self.out, self.arrival):
            table.pop(rid, None)
        self.started.discard(rid)


_UNSET = object()
_init_lock = threading.Lock()


def _recorder() -> Any:
    """The recorder, or None when tracing is off (or switched off at runtime)."""
    rec = toktrace.recorder(ROLE)
    return rec if rec is not None and rec.enabled else None


def _warm(ex: Any) -> bool:
    return bool(getattr(ex, "is_warmup", False))


def _state(ex: Any) -> _ExecState | None:
    """The executor's state; None on ranks (and executors) that do not record."""
    st = ex.__dict__.get("_toktrace", _UNSET)
    if st is not _UNSET:
        return st
    with _init_lock:  # enqueue_request runs on another thread than the loop
        st = ex.__dict__.get("_toktrace", _UNSET)
        if st is _UNSET:
            st = None
            try:
                rec = _recorder()
                if rec is not None and int(ex.dist.rank) == 0:
                    st = _ExecState()
                    rec.process(**_process_info(ex))
            except Exception as exc:  # noqa: BLE001
                st = None
                _guard.failed("PyExecutor (first use)", exc)
            ex.__dict__["_toktrace"] = st
    return st


def _recording(ex: Any, create: bool) -> tuple[_ExecState, Any] | None:
    """(state, recorder) when this executor records now: rank 0, not warming
    up, tracing on. ``create``: hooks that may be the first to run set it up.
    Never raises: every hook calls it outside its own guarded block."""
    try:
        if _warm(ex):
            return None
        st = _state(ex) if create else _live(ex)
        if st is None:
            return None
        rec = _recorder()
        return (st, rec) if rec is not None else None
    except Exception as exc:  # noqa: BLE001
        _guard.failed("PyExecutor (state)", exc)
        return None


def _live(ex: Any) -> _ExecState | None:
    """The state if it was already created (hooks that cannot be the first)."""
    st = ex.__dict__.get("_toktrace")
    return st if isinstance(st, _ExecState) else None


def _process_info(ex: Any) -> dict[str, Any]:
    engine = getattr(ex, "model_engine", None)
    llm_args = getattr(ex, "llm_args", None) or getattr(engine, "llm_args", None)
    model_config = getattr(getattr(engine, "model", None), "model_config", None)
    hf = getattr(model_config, "pretrained_config", None)
    name = getattr(llm_args, "model", None) or getattr(hf, "_name_or_path", None)
    name = str(name) if name else None
    model_path = C.local_dir(name)
    dist = ex.dist
    kv = getattr(ex, "kv_cache_manager", None)
    info: dict[str, Any] = dict(
        engine=ENGINE,
        engine_version=_version,
        model_name=name,
        model_path=model_path,
        role=ROLE,
        rank=int(dist.rank),
        extra=[
            ("overlap_scheduler", str(not getattr(ex, "disable_overlap_scheduler", False))),
            ("tp_size", str(getattr(dist, "tp_size", None))),
            ("pp_size", str(getattr(dist, "pp_size", None))),
            ("attention_dp", str(getattr(ex, "enable_attention_dp", None))),
            ("max_batch_size", str(getattr(ex, "max_batch_size", None))),
            ("max_num_tokens", str(getattr(ex, "max_num_tokens", None))),
            ("stream_interval", str(getattr(ex, "stream_interval", None))),
            ("kv_cache_manager", type(kv).__name__ if kv is not None else "None"),
        ],
    )
    info.update(C.special_tokens(model_path, hf))
    return info


def _is_dummy(req: Any) -> bool:
    return bool(getattr(req, "is_attention_dp_dummy", False) or getattr(req, "is_cuda_graph_dummy", False)
                or getattr(req, "is_dummy_request", False))


def _first(value: Any) -> Any:
    """A C++ SamplingConfig field (None or a one-element list) as a scalar."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def _prompt_len(req: Any) -> int:
    # orig_prompt_len stays the client's prompt when pause() folds generated
    # tokens into prompt_len; py_prompt_len is set once at construction.
    for name in ("orig_prompt_len", "py_orig_prompt_len", "py_prompt_len", "prompt_len"):
        value = getattr(req, name, None)
        if isinstance(value, int):
            return value
    raise C.AdapterError("LlmRequest has no prompt length")


# ===== arrivals =====


def _wrap_enqueue(what: str, ids_of: Callable[[Any], list[int]]) -> Callable:
    """A wrapper for ``PyExecutor.<what>`` keeping each enqueued request's
    time; `ids_of` turns the call's result into request ids."""

    def wrap(orig: Callable) -> Callable:
        def enqueue(self: Any, *args: Any, **kwargs: Any) -> Any:
            live = _recording(self, create=True)
            if live is None:
                return orig(self, *args, **kwargs)
            st = live[0]
            # Held across the call: the loop thread may activate the request
            # as soon as it is queued, and its arrival must find the time kept here.
            with st.lock:
                t = time.monotonic_ns()
                result = orig(self, *args, **kwargs)
                try:
                    _stash(st, ids_of(result), t)
                except Exception as exc:  # noqa: BLE001
                    _guard.failed(f"PyExecutor.{what}", exc)
            return result

        return enqueue

    return wrap


_wrap_enqueue_request = _wrap_enqueue("enqueue_request", lambda rid: [rid] if isinstance(rid, int) else [])
_wrap_enqueue_requests = _wrap_enqueue(
    "enqueue_requests", lambda rids: [r for r in rids or () if isinstance(r, int)])


def _stash(st: _ExecState, rids: list[int], t: int) -> None:
    """Keep enqueue times by request id (the caller holds st.lock)."""
    for rid in rids:
        st.enqueued[rid] = t
    while len(st.enqueued) > MAX_ARRIVED:
        st.enqueued.pop(next(iter(st.enqueued)))


def _ids_of(items: Any) -> set[int]:
    """Request ids of a revision's id collection (list, set or the C++
    ReqIdsSet); empty when it cannot be read."""
    try:
        return {int(i) for i in items} if items else set()
    except Exception:  # noqa: BLE001 - unreadable: nothing is forgotten, MAX_ARRIVED still bounds the table
        return set()


def _queued_ids(ex: Any) -> set[int] | None:
    """Ids of the requests accepted but not active yet, wherever the revision
    keeps them (2026: ``waiting_queue`` and the executor request queue; 1.1:
    both inside ``executor_request_queue``; mid-2025: ``request_queue``).
    None when a queue cannot be read, so that nothing is forgotten."""
    queues: list[Any] = []
    erq = getattr(ex, "executor_request_queue", None)
    for owner in (ex, erq):
        if owner is not None and getattr(owner, "waiting_queue", None) is not None:
            queues.append(owner.waiting_queue)
    raw = getattr(ex, "request_queue", None)
    if erq is not None:
        get = getattr(erq, "get_request_queue", None)
        raw = get() if get is not None else getattr(erq, "request_queue", None)
    ids: set[int] = set()
    try:
        if raw is not None:
            with raw.mutex:  # clients enqueue from their own thread
                queues.append(list(raw.queue))
        for q in queues:
            ids.update(int(item.id) for item in list(q) if getattr(item, "request", None) is not None)
    except Exception:  # noqa: BLE001
        return None
    return ids


def _forget_unactivated(ex: Any, st: _ExecState, rids: Iterable[int]) -> None:
    """Drop the enqueue times of requests the engine let go without ever
    activating them (cancelled while waiting, failed at validation). Their
    arrival record is never written (it is written at activation), so no
    finish is either. A request still queued keeps its time: the mid-2025
    engine drops a cancellation of a request that is not active yet, and the
    request runs later."""
    with st.lock:
        gone = [rid for rid in rids if rid in st.enqueued and rid not in st.reqs]
        if not gone:
            return
        queued = _queued_ids(ex)
        if queued is None:
            return
        keep = queued | _ids_of(getattr(ex, "canceled_req_ids", None))  # 2026 retries failed cancellations
        keep |= {int(r.py_request_id) for r in ex.active_requests}  # active, not yet seen by _schedule
        for rid in gone:
            if rid not in keep:
                del st.enqueued[rid]


def _params(req: Any) -> tuple:
    sc = getattr(req, "sampling_config", None)
    logprobs = getattr(req, "py_num_logprobs", None) if getattr(req, "py_return_log_probs", False) else None
    max_tokens = getattr(req, "py_max_new_tokens", None)
    if max_tokens is None:
        max_tokens = getattr(req, "max_new_tokens", None)
    return (
        _first(getattr(sc, "temperature", None)),
        _first(getattr(sc, "top_p", None)),
        _first(getattr(sc, "top_k", None)),
        max_tokens,
        logprobs,
        _first(getattr(sc, "random_seed", None)),
    )


def _arrive(st: _ExecState, rec: Any, reqs: list[Any]) -> None:
    """Arrival records for requests seen for the first time (in their order)."""
    rows = []
    for req in reqs:
        rid = int(req.py_request_id)
        prompt = _prompt_len(req)
        with st.lock:
            at = st.enqueued.pop(rid, None)
        if at is None and getattr(req, "is_child", False):
            # n > 1: each further sequence is a child request created with its
            # parent, so it arrived when the parent did.
            at = st.arrival.get(int(req.parent_request_id))
        st.reqs[rid] = req
        st.prompt[rid] = prompt
        st.out[rid] = max(int(req.get_num_tokens(0)) - prompt, 0)
        st.arrival[rid] = at
        client = getattr(req, "py_client_id", None)
        external = str(client) if client is not None and client != rid else None
        # arrival None = now: a request not seen at enqueue (the adapter came in late)
        rows.append((str(rid), external, None, prompt, *_params(req), at))
    if rows:
        rec.arrivals(rows)


def _new_requests(ex: Any, st: _ExecState) -> list[Any]:
    """Requests appended to active_requests since the last look (activation
    appends at the end and nothing reorders the rest), oldest first."""
    new = []
    for req in reversed(ex.active_requests):
        if _is_dummy(req):
            continue
        if int(req.py_request_id) in st.reqs:
            break
        new.append(req)
    new.reverse()
    return new


def _wrap_schedule(orig: Callable) -> Callable:
    def _schedule(self: Any, *args: Any, **kwargs: Any) -> Any:
        live = _recording(self, create=True)
        if live is None:
            return orig(self, *args, **kwargs)
        st, rec = live
        try:
            new = _new_requests(self, st)
            if new:
                _arrive(st, rec, new)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("PyExecutor._schedule", exc)
        out = orig(self, *args, **kwargs)
        try:
            batch = out[0]
            paused = list(getattr(batch, "paused_requests", None) or ())
            paused += list(getattr(batch, "recompute_paused_requests", None) or ())
            for req in paused:
                rid = int(req.py_request_id)
                if rid in st.reqs:
                    st.paused.append(rid)
                    st.started.discard(rid)  # it is prefilled again from the start
        except Exception as exc:  # noqa: BLE001
            _guard.failed("PyExecutor._schedule (after)", exc)
        return out

    return _schedule


# ===== launch =====


def _waiting(ex: Any) -> int:
    """Requests accepted but not active yet (their queues moved between releases)."""
    n = 0
    queue = getattr(ex, "waiting_queue", None)  # 2026: fetched, waiting for room
    if queue is not None:
        n += len(queue)
    erq = getattr(ex, "executor_request_queue", None)  # 1.1 onward
    if erq is not None:
        n += int(erq.get_request_queue_size())
        if queue is None and hasattr(erq, "get_waiting_queue_size"):
            n += int(erq.get_waiting_queue_size())
    else:
        raw = getattr(ex, "request_queue", None)  # mid-2025: a queue.Queue
        if raw is not None:
            n += raw.qsize()
    return n


def _kv_usage(ex: Any) -> float | None:
    mgr = getattr(ex, "kv_cache_manager", None)
    if mgr is None:
        return None
    stats = mgr.get_kv_cache_stats()
    total = stats.max_num_blocks
    return (total - stats.free_num_blocks) / total if total else None


def _chunk(req: Any) -> tuple[int, int]:
    """(position, chunk size) of a context request's current chunk."""
    try:
        return int(req.context_current_position), int(req.context_chunk_size)
    except RuntimeError:
        # The C++ accessors refuse once the request moved on; PyExecutor keeps
        # the chunk as py_last_context_chunk = (start, end) (2026).
        start, end = getattr(req, "py_last_context_chunk", (None, None)) or (None, None)
        if start is None or end is None:
            return 0, 0
        return int(start), int(end) - int(start)


def _draft_len(req: Any) -> int:
    """Draft tokens really proposed for this step. Drafters pad
    ``py_draft_tokens`` with zeros to a static maximum for CUDA graphs; the
    2026 ones record the real count in ``py_draft_tokens_effective_len``
    first, which the engine's own samplers read the same way (capped by the
    list, in case it was cleared since). Without that count (mid-2025
    drafters, one-model flows, whose placeholders stand for drafts the model
    verifies on the device) every position is counted."""
    drafts = getattr(req, "py_draft_tokens", None)
    n = len(drafts) if drafts else 0
    effective = getattr(req, "py_draft_tokens_effective_len", None)
    if isinstance(effective, int) and not isinstance(effective, bool):
        return max(0, min(effective, n))
    return n


def _compose(ex: Any, st: _ExecState, rec: Any, batch: Any, t0: int) -> tuple | None:
    """The launch record: (step, start, ids, reqs, prefill, decode, cached, waiting, running, kv, preempted)."""
    ctx = [r for r in batch.context_requests if not _is_dummy(r)]
    gen = [r for r in batch.generation_requests if not _is_dummy(r)]
    if not ctx and not gen:
        return None
    late = [r for r in (*ctx, *gen) if int(r.py_request_id) not in st.reqs]
    if late:  # not seen by _schedule (pipeline ranks, an adapter applied late)
        _arrive(st, rec, late)
    ids: list[int] = []
    reqs: list[Any] = []
    prefill: list[int] = []
    decode: list[int] = []
    cached: list[int] = []
    for r in ctx:
        rid = int(r.py_request_id)
        start, size = _chunk(r)
        ids.append(rid)
        reqs.append(r)
        prefill.append(size)
        decode.append(0)
        if rid in st.started:
            cached.append(0)
        else:
            st.started.add(rid)
            cached.append(start)
    for r in gen:
        rid = int(r.py_request_id)
        ids.append(rid)
        reqs.append(r)
        prefill.append(0)
        decode.append(1 + _draft_len(r))
        cached.append(0)
    active = ex.active_requests
    running = len(active) - (1 if active and _is_dummy(active[-1]) else 0)
    preempted, st.paused = st.paused or None, []
    return (next(st.steps), t0, ids, reqs, prefill, decode, cached, _waiting(ex), running,
            _kv_usage(ex), preempted)


def _wrap_forward_step(orig: Callable) -> Callable:
    def _forward_step(self: Any, scheduled_requests: Any, *args: Any, **kwargs: Any) -> Any:
        live = _recording(self, create=True)
        if live is None:
            return orig(self, scheduled_requests, *args, **kwargs)
        st, rec = live
        t0 = time.monotonic_ns()
        st.last = None
        try:
            launch = _compose(self, st, rec, scheduled_requests, t0)
            if launch is not None:
                st.last = (scheduled_requests, launch)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("PyExecutor._forward_step", exc)
        _cost[0] += time.monotonic_ns() - t0
        return orig(self, scheduled_requests, *args, **kwargs)

    return _forward_step


def _wrap_tagging(where: str) -> Callable[[Callable], Callable]:
    """_sample_async / _forward_step_inter_pp: the SampleState they return
    carries the launch of the batch they were given."""

    def make(orig: Callable) -> Callable:
        def wrapper(self: Any, scheduled_batch: Any, *args: Any, **kwargs: Any) -> Any:
            out = orig(self, scheduled_batch, *args, **kwargs)
            st = _live(self)
            if st is not None and st.last is not None:
                try:
                    # Draft-model batches are sampled here too; only the batch
                    # _forward_step launched is paired.
                    if st.last[0] is scheduled_batch:
                        if out is not None:
                            st.pending[id(out)] = (out, st.last[1])
                            if len(st.pending) > MAX_PENDING:
                                st.pending.pop(next(iter(st.pending)))
                        st.last = None
                except Exception as exc:  # noqa: BLE001
                    _guard.failed(f"PyExecutor.{where}", exc)
            return out

        return wrapper

    return make


# ===== tokens =====


def _token_logprob(entry: Any, token: int, k: int) -> tuple[float, int, list[tuple[int, int, float]]] | None:
    """(logprob, rank, top) of one generated position, top being the entries
    ranked 1..k as (rank, id, logprob), best first; None when the sampled
    token's own logprob is not there."""
    if isinstance(entry, (int, float)):  # the "simple format": the sampled token's logprob only
        return float(entry), NO_RANK, []
    own = entry.get(token)
    if own is None:
        return None
    rank = own.rank if isinstance(own.rank, int) and own.rank > 0 else NO_RANK
    top: list[tuple[int, int, float]] = []
    if k:
        top = sorted((cand.rank, int(tid), float(cand.logprob)) for tid, cand in entry.items()
                     if isinstance(cand.rank, int) and 0 < cand.rank <= k)
    return float(own.logprob), rank, top


def _collect(st: _ExecState, launch: tuple) -> list[tuple]:
    """Per request of the launch that got tokens in this update:
    (rid, first index, tokens, logprob rows or None, requested K)."""
    runs = []
    for rid, req in zip(launch[2], launch[3]):
        if rid not in st.reqs:  # finished or failed meanwhile
            continue
        prompt = st.prompt[rid]
        have = st.out[rid]
        total = int(req.get_num_tokens(0))
        if total < prompt + have:
            # pause() may cut generated tokens that exceed max_input_len; they
            # are generated again at the same positions.
            have = st.out[rid] = max(total - prompt, 0)
        n = total - prompt - have
        if n <= 0:
            continue
        get_token = getattr(req, "get_token", None)
        if get_token is not None:
            tokens = [int(get_token(0, prompt + have + j)) for j in range(n)]
        else:
            tokens = [int(t) for t in req.get_tokens(0)[prompt + have:total]]
        st.out[rid] = have + n
        lps = None
        k = 0
        if getattr(req, "py_return_log_probs", False):
            stored = req.py_result.log_probs
            beam = stored[0] if stored else None
            if beam is not None and len(beam) >= n:
                k = int(getattr(req, "py_num_logprobs", 0) or 0)
                rows = [_token_logprob(e, t, k) for e, t in zip(beam[len(beam) - n:], tokens)]
                got = [row for row in rows if row is not None]
                if len(got) == len(rows):
                    lps = got
                    # What every position actually holds (a shorter list is
                    # not padded; the step is cut to it).
                    k = min(len(row[2]) for row in got)
        runs.append((rid, have, tokens, lps, k))
    return runs


def _wrap_update_requests(orig: Callable) -> Callable:
    def _update_requests(self: Any, sample_state: Any, *args: Any, **kwargs: Any) -> Any:
        live = _recording(self, create=False)
        entry = live[0].pending.pop(id(sample_state), None) if live is not None else None
        if live is None or entry is None:
            return orig(self, sample_state, *args, **kwargs)
        st, rec = live
        launch = entry[1]
        if st.done is not None:  # a step whose responses were never handled
            try:
                _flush(st, rec, None)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("PyExecutor._update_requests (flush)", exc)
        out = orig(self, sample_state, *args, **kwargs)
        ta = time.monotonic_ns()
        try:
            st.done = [launch, _collect(st, launch), ta, None]
        except Exception as exc:  # noqa: BLE001
            st.done = None
            _guard.failed("PyExecutor._update_requests", exc)
        _cost[0] += time.monotonic_ns() - ta
        return out

    return _update_requests


def _wrap_enqueue_responses(orig: Callable) -> Callable:
    def _enqueue_responses(self: Any, responses: Any, *args: Any, **kwargs: Any) -> Any:
        st = _live(self)
        if st is not None and st.done is not None and st.done[3] is None:
            try:
                if responses:  # attention-DP ranks also call it with nothing to hand on
                    st.done[3] = time.monotonic_ns()
            except Exception as exc:  # noqa: BLE001
                _guard.failed("PyExecutor._enqueue_responses", exc)
        return orig(self, responses, *args, **kwargs)

    return _enqueue_responses


# ===== the step record and finishes =====


def _gone(ex: Any, st: _ExecState, leaving: Iterable[int] = ()) -> list[tuple[int, Any]]:
    """Traced requests no longer in active_requests (finished, cancelled, failed)."""
    if not st.reqs:
        return []
    active = {id(r) for r in ex.active_requests}
    skip = set(leaving)
    return [(rid, req) for rid, req in st.reqs.items() if id(req) not in active and rid not in skip]


def _output_tokens(st: _ExecState, rid: int, req: Any) -> int | None:
    try:
        return max(int(req.get_num_tokens(0)) - st.prompt[rid], 0)
    except Exception:  # noqa: BLE001 - the engine's count is unavailable; the trace's own
        return st.out.get(rid)


def _reason(req: Any) -> str | None:
    word = getattr(req, REASON_ATTR, None)
    if word is not None:
        return word
    try:
        if getattr(req, "is_finished_due_to_length", False):
            return "length"
    except Exception:  # noqa: BLE001
        pass
    return None


def _flush(st: _ExecState, rec: Any, end_ns: int | None, finished: list[int] | None = None) -> None:
    """Record the updated step (one native call)."""
    done, st.done = st.done, None
    if done is None:
        return
    launch, runs, updated_ns, exit_ns = done
    step_id, t0, ids, _reqs, prefill, decode, cached, waiting, running, kv, preempted = launch
    live = st.reqs
    keep = C.live_rows(ids, live)  # the overlap loop's finished rows go
    if keep is not None:
        ids, prefill, decode, cached = (C.pick(rows, keep) for rows in (ids, prefill, decode, cached))
        runs = [r for r in runs if r[0] in live]
    if not ids:
        return  # a batch whose every row was discarded produced nothing to attribute
    run_ids = [str(r[0]) for r in runs]
    first = [r[1] for r in runs]
    tokens = [r[2] for r in runs]
    kwargs: dict[str, Any] = {}
    with_lp = [r for r in runs if r[3] is not None]
    if with_lp:
        # One K per step: the smallest any row asked for and got (rows that
        # asked for more are cut to it; nothing is padded).
        k = min(r[4] for r in with_lp)
        logprobs: list[float] = []
        ranks: list[int] = []
        top_ids: list[int] = []
        top_lps: list[float] = []
        # Rows for the runs flagged in run_has_logprobs only.
        for r in with_lp:
            for lp, rank, top in r[3]:
                logprobs.append(lp)
                ranks.append(rank)
                if k:
                    top_ids.extend(t for _, t, _ in top[:k])
                    top_lps.extend(v for _, _, v in top[:k])
        kwargs = dict(top_k=k, logprobs=logprobs, ranks=ranks,
                      run_has_logprobs=[r[3] is not None for r in runs])
        if k:
            kwargs.update(top_ids=top_ids, top_logprobs=top_lps)
    rec.step(step_id, t0, [str(i) for i in ids], prefill, decode, run_ids, first, token_ids=tokens,
             run_counts=[len(t) for t in tokens], cached=cached, waiting=waiting, running=running,
             kv_usage=kv, preempted=[str(p) for p in preempted] if preempted else None,
             finished=[str(f) for f in finished] if finished else None,
             end_ns=exit_ns or end_ns or updated_ns, **kwargs)
    end = time.monotonic_ns()
    _cost[1] += 1
    _cost[2] += end - t0


def _finish(st: _ExecState, rec: Any, finishes: list[tuple[int, str | None, int | None]]) -> None:
    if finishes:
        rec.finishes([(str(rid), reason, n) for rid, reason, n in finishes])
        for rid, _, _ in finishes:
            st.forget(rid)


def _wrap_handle_responses(orig: Callable) -> Callable:
    def _handle_responses(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, *args, **kwargs)
        live = _recording(self, create=False)
        if live is None:
            return out
        st, rec = live
        t = time.monotonic_ns()
        try:
            leaving = [f[0] for f in st.deferred]
            finishes = st.deferred + [(rid, _reason(req), _output_tokens(st, rid, req))
                                      for rid, req in _gone(self, st, leaving)]
            st.deferred = []
            _flush(st, rec, t, [f[0] for f in finishes])
            _finish(st, rec, finishes)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("PyExecutor._handle_responses", exc)
        _cost[0] += time.monotonic_ns() - t
        return out

    return _handle_responses


def _wrap_cancel(where: str) -> Callable[[Callable], Callable]:
    def make(orig: Callable) -> Callable:
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            live = _recording(self, create=False)
            # The ids asked to cancel, read before the handler clears them.
            asked = _ids_of(getattr(self, "canceled_req_ids", None)) if live is not None else set()
            out = orig(self, *args, **kwargs)
            if live is not None:
                st = live[0]
                try:
                    # The mid-2025 revision removes cancelled requests here;
                    # later ones only mark them and _handle_responses removes them.
                    leaving = [f[0] for f in st.deferred]
                    st.deferred += [(rid, _reason(req) or "abort", _output_tokens(st, rid, req))
                                    for rid, req in _gone(self, st, leaving)]
                    # 2026 also drops cancelled requests from the waiting queue.
                    if asked:
                        _forget_unactivated(self, st, asked)
                except Exception as exc:  # noqa: BLE001
                    _guard.failed(f"PyExecutor.{where}", exc)
            return out

        return wrapper

    return make


def _wrap_handle_errors(orig: Callable) -> Callable:
    def _handle_errors(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return orig(self, *args, **kwargs)
        finally:
            live = _recording(self, create=False)
            if live is not None:
                st, rec = live
                try:
                    leaving = [f[0] for f in st.deferred]
                    # A request the sampler had finished (its reason set) is
                    # not one the engine failed, whatever path removed it.
                    failed = [(rid, _reason(req) or "error", _output_tokens(st, rid, req))
                              for rid, req in _gone(self, st, leaving)]
                    if failed or st.deferred:
                        finishes = st.deferred + failed
                        st.deferred = []
                        _flush(st, rec, time.monotonic_ns(), [f[0] for f in finishes])
                        _finish(st, rec, finishes)
                    # 2026 fails a request that does not pass validation with
                    # requests=[it] before it ever becomes active.
                    named = kwargs.get("requests")
                    if named:
                        _forget_unactivated(self, st, [int(r.py_request_id) for r in named])
                except Exception as exc:  # noqa: BLE001
                    _guard.failed("PyExecutor._handle_errors", exc)

    return _handle_errors
