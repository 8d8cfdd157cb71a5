"""SGLang 0.5.13 through 0.5.23: every hook point and object field toktrace reads.

Written against 0.5.23; the releases back to 0.5.13 differ at two places,
each a shim below named by the release that changed it (read in each
release's wheel, proven by the compatibility suite on each):
- the ranks: on ``Scheduler.ps`` up to 0.5.20; ``runtime_context.get_parallel()``
  from 0.5.21 (0.5.14–0.5.20 have it too, but without the DP rank);
- a request leaving before it ran (client abort while queued, queue limit,
  priority rejection, waiting timeout): ``_release_aborted_request`` sees
  every one from 0.5.21; before, no single method does (0.5.20 has it, but
  admission rejections bypass it), so the abort sent to the tokenizer for
  that request (``SenderWrapper.send_output(AbortReq, req)``) is the hook.

Scheduler process (``sglang::scheduler…``, spawned; one per TP × PP [× DP]
rank). Only the scheduler that talks to the tokenizer records: pp_rank 0,
attn_tp_rank 0, attn_cp_rank 0 — one per DP group, tagged with its DP rank.
- ``Scheduler.__init__``: process info (model, special tokens, loop kind).
- ``Scheduler._add_request_to_queue``: arrival (rid, prompt length, sampling
  parameters, requested top-K); a retracted request coming back is not one.
- ``Scheduler._release_aborted_request`` (0.5.21 on; before,
  ``SenderWrapper.send_output`` of an ``AbortReq``): a request aborted before
  it ran (client gone while queued, queue limit, priority rejection): its
  finish.
- ``Scheduler.run_batch``: the moment a batch is launched (a step's *enter*)
  and its composition, read from the ``ScheduleBatch`` as launched: forward
  mode, per row ``extend_lens``/``prefix_lens`` (chunked prefill counts per
  chunk), decode rows (``DECODE`` batches, and the ``decoding_reqs`` appended
  to a ``MIXED`` batch), queue lengths, KV usage, retractions since the last
  launch. Kept per returned result object.
- ``Scheduler.process_batch_result``: called once per launched batch with the
  very result object ``run_batch`` returned — one iteration later in the
  overlap loop — so composition and sampled tokens are paired by that object,
  never with "the latest" launch (with pipeline parallelism, whose last
  stage builds a new result object, by the micro-batch: not run here, PP
  needs NCCL). New tokens and logprobs are the growth of
  ``req.output_ids`` and ``req.logprob.output_*`` across the call (SGLang
  itself skips finished and retracted rows there). One native call records the
  step; finishes follow.
- ``SchedulerOutputStreamer.stream_output``: the moment a processed batch's
  tokens are handed towards the client (to the detokenizer): a step's *exit*.
  Taken there rather than when ``process_batch_result`` returns, because the
  frontend may already have the tokens by then (it runs in another process).
- ``ScheduleBatch.retract_decode``: preemption (its first return value is the
  retracted requests; they keep their outputs and are prefilled again), and
  the finish of the requests it aborts instead (its third value).

Frontend process (``TokenizerManager``: the HTTP server's, or the caller's
with ``sglang.Engine``):
- ``TokenizerManager.__init__``: process info from the tokenizer.
- ``TokenizerManager._init_req_state(obj, request)``: arrival per rid, with the
  W3C ``traceparent`` of the HTTP request's headers (SGLang reads them only
  when its own tracing is on) or of ``obj.external_trace_header``.
- ``TokenizerManager._handle_batch_output(recv_obj)``: the moment the new
  tokens of each rid are handed to the waiting client (emit): the growth of
  ``ReqState.output_ids`` across the call; finishes.
The rid is the same in the frontend and the scheduler, so it is both the
internal and the client-visible id.

Field facts (read in the sglang 0.5.23 wheel): ``ForwardMode`` has
``is_decode()``/``is_extend()`` (``MIXED`` is an extend);
``Req.output_ids: array('q')``; logprobs in ``Req.logprob: ReqLogprob``
(``top_logprobs_num``, ``output_token_logprobs_val``/``_idx``,
``output_top_logprobs_val``/``_idx``: K candidates per generated position,
best first). SGLang reports no rank for the sampled token: the probe is given
0, "not reported" (ranks start at 1), never a computed guess. Finish reasons
are ``BaseFinishReason.to_json()['type']`` (``stop``/``length``/``abort``).
KV usage is SGLang's own formula: ``max_total_num_tokens - (available +
evictable)`` over ``max_total_num_tokens``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable

import toktrace
from toktrace._native import prompt_hash
from toktrace.adapters import _common as C

ENGINE = "sglang"
_guard = C.Guard(ENGINE)
_version = "unknown"
# The adapter's own cost, measured inside the hooks: [self ns, steps, step ns]
# (step ns = run_batch() entry to process_batch_result() return).
_cost = [0, 0, 0]

# At most this many launched-but-not-yet-processed batches are remembered (the
# overlap loop keeps one in flight; pipeline parallelism a few more).
MAX_PENDING = 64
NO_RANK = 0  # what the probe is given as the sampled token's rank: "not reported"


def cost() -> dict[str, float]:
    """Adapter self-time so far in this process (what the overhead budget is about)."""
    return C.cost_report(_cost)


def _before_0_5_21(version: str) -> bool:
    """Ranks on ``Scheduler.ps``; no single hook for requests leaving unrun."""
    return (C.parse_version(version) or (0, 0, 0)) < (0, 5, 21)


# Set by install(): 0.5.13–0.5.20 (ranks on Scheduler.ps; unrun aborts seen at send_output).
_pre_0_5_21 = False

SCHEDULER_METHODS = ("__init__", "run_batch", "process_batch_result", "_add_request_to_queue",
                     "on_idle", "event_loop_normal", "event_loop_overlap", "handle_generate_request")

# How long the scheduler, once idle, waits for what it recorded to reach the
# kernel. Typically well under a millisecond; the bound only matters when the
# disk stalls, and then an idle engine waits at most this long.
IDLE_FLUSH_S = 0.02


def hook_points(version: str) -> list[C.HookPoint]:
    """Everything this layout patches or reads, for the structural check
    (``toktrace doctor``, and releases not tested)."""
    if _before_0_5_21(version):
        release_specific = [
            C.HookPoint("sglang.srt.managers.scheduler", "Scheduler", attrs=SCHEDULER_METHODS),
            C.HookPoint("sglang.srt.managers.scheduler_components.output_sender", "SenderWrapper",
                        params=(("send_output", ("output", "recv_obj")),)),
            C.HookPoint("sglang.srt.managers.io_struct", "AbortReq"),
        ]
    else:
        release_specific = [
            C.HookPoint("sglang.srt.managers.scheduler", "Scheduler",
                        attrs=(*SCHEDULER_METHODS, "_release_aborted_request")),
            C.HookPoint("sglang.srt.runtime_context", "get_parallel"),
        ]
    return [
        *release_specific,
        C.HookPoint("sglang.srt.managers.schedule_batch", "ScheduleBatch", attrs=("retract_decode",)),
        C.HookPoint("sglang.srt.managers.schedule_batch", "Req"),
        C.HookPoint("sglang.srt.managers.schedule_batch", "ReqLogprob",
                    fields=("top_logprobs_num", "output_token_logprobs_val", "output_top_logprobs_val",
                            "output_top_logprobs_idx")),
        C.HookPoint("sglang.srt.managers.scheduler_components.output_streamer", "SchedulerOutputStreamer",
                    attrs=("stream_output",)),
        C.HookPoint("sglang.srt.managers.tokenizer_manager", "TokenizerManager",
                    attrs=("__init__", "_init_req_state", "_handle_batch_output")),
    ]


def install(version: str) -> None:
    """Register the patches (applied as SGLang imports the modules)."""
    global _version, _pre_0_5_21
    _version = version
    _pre_0_5_21 = _before_0_5_21(version)
    from toktrace import hooks

    hooks.when_imported("sglang.srt.managers.scheduler", C.checked(ENGINE, version, _patch_scheduler))
    hooks.when_imported("sglang.srt.managers.schedule_batch",
                        C.checked(ENGINE, version, _patch_schedule_batch))
    hooks.when_imported("sglang.srt.managers.scheduler_components.output_streamer",
                        C.checked(ENGINE, version, _patch_output_streamer))
    hooks.when_imported("sglang.srt.managers.tokenizer_manager",
                        C.checked(ENGINE, version, _patch_tokenizer_manager))
    if _pre_0_5_21:
        hooks.when_imported("sglang.srt.managers.scheduler_components.output_sender",
                            C.checked(ENGINE, version, _patch_output_sender))




# ===== scheduler =====


class _SchedState:
    """Per-scheduler bookkeeping between run_batch() and process_batch_result()."""

    def __init__(self, rank: int | None, pipelined: bool = False) -> None:
        self.rank = rank
        self.pipelined = pipelined  # pipeline parallelism: results are paired by batch
        self.steps = itertools.count()
        # id(result) -> (result, launch record); the result is held so its id
        # cannot be reused while the entry waits.
        self.pending: dict[int, tuple[Any, tuple]] = {}
        # Requests seen arriving (rid -> prompt length) and requests whose
        # (re)prefill has started: the first chunk's prefix_len is a cache hit.
        self.live: dict[str, int] = {}
        self.started: set[str] = set()
        self.retracted: list[str] = []
        # Aborted by retract_decode while a launched batch still held them.
        self.abort_after: set[str] = set()
        # Steps recorded since the scheduler was last idle.
        self.unflushed = False

    def forget(self, rid: str) -> None:
        self.live.pop(rid, None)
        self.started.discard(rid)
        self.abort_after.discard(rid)
        _trace_only.pop(rid, None)


# rid -> the top-K this scheduler asked SGLang for on the trace's behalf
# (TOKTRACE_TOPK_SAMPLE), for requests whose client asked for no logprobs:
# what the arrival record says. Kept by the recording rank only (every rank
# asks alike, from the prompt's hash), forgotten at finish.
_trace_only: dict[str, int] = {}
# Bound on the map should finishes go unseen; the oldest go first.
MAX_TRACE_ONLY = 65536


def _state(sched: Any) -> _SchedState | None:
    """The scheduler's state; None on ranks that do not record."""
    return sched.__dict__.get("_toktrace")


def _recorder() -> Any:
    """The recorder, or None when tracing is off (or switched off at runtime)."""
    rec = toktrace.recorder("scheduler")
    return rec if rec is not None and rec.enabled else None


def _patch_scheduler(mod: Any) -> None:
    C.require(mod, "Scheduler", where="sglang.srt.managers.scheduler")
    S = mod.Scheduler
    C.require(S, *SCHEDULER_METHODS, where="sglang Scheduler")
    from sglang.srt.managers import schedule_batch as sb

    if not _pre_0_5_21:
        from sglang.srt import runtime_context

        C.require(S, "_release_aborted_request", where="sglang Scheduler")
        C.require(runtime_context, "get_parallel", where="sglang.srt.runtime_context")

    C.require(sb, "Req", "ScheduleBatch", where="sglang.srt.managers.schedule_batch")
    C.require(sb, "ReqLogprob", where="sglang.srt.managers.schedule_batch")
    fields = getattr(sb.ReqLogprob, "__dataclass_fields__", None) or {}
    for name in ("top_logprobs_num", "output_token_logprobs_val", "output_top_logprobs_val",
                 "output_top_logprobs_idx"):
        if name not in fields:
            raise C.AdapterError(f"sglang ReqLogprob has no field {name}")
    C.patch(S, "__init__", _wrap_init)
    C.patch(S, "handle_generate_request", _wrap_handle_generate_request)
    C.patch(S, "_add_request_to_queue", _wrap_add_request_to_queue)
    if not _pre_0_5_21:
        C.patch(S, "_release_aborted_request", _wrap_release_aborted_request)
    C.patch(S, "run_batch", _wrap_run_batch)
    C.patch(S, "process_batch_result", _wrap_process_batch_result)
    C.patch(S, "on_idle", _wrap_on_idle)


def _patch_schedule_batch(mod: Any) -> None:
    C.require(mod, "ScheduleBatch", where="sglang.srt.managers.schedule_batch")
    C.require(mod.ScheduleBatch, "retract_decode", where="sglang ScheduleBatch")
    C.patch(mod.ScheduleBatch, "retract_decode", _wrap_retract_decode)


def _records_here(sched: Any) -> tuple[bool, int | None]:
    """(whether this scheduler records, its DP rank) from SGLang's parallel state."""
    if _pre_0_5_21:
        par = sched.ps  # 0.5.13–0.5.20
    else:
        from sglang.srt.runtime_context import get_parallel

        par = get_parallel()
    owner = par.pp_rank == 0 and par.attn_tp_rank == 0 and getattr(par, "attn_cp_rank", 0) == 0
    dp = None
    for name in ("dp_rank", "attn_dp_rank"):
        try:
            v = getattr(par, name)
        except Exception:  # noqa: BLE001 - unset in this process
            continue
        if isinstance(v, int):
            dp = v
            break
    return bool(owner), dp


def _wrap_init(orig: Callable) -> Callable:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        global _current_state
        orig(self, *args, **kwargs)
        try:
            rec = _recorder()
            if rec is None:
                return
            owner, dp = _records_here(self)
            if not owner:
                return
            pp = getattr(getattr(self, "server_args", None), "pp_size", 1)
            st = self.__dict__["_toktrace"] = _SchedState(dp, pipelined=isinstance(pp, int) and pp > 1)
            _current_state = st
            rec.process(**_process_info(self, dp))
        except Exception as exc:  # noqa: BLE001
            self.__dict__.pop("_toktrace", None)
            _current_state = None
            _guard.failed("Scheduler.__init__", exc)

    return __init__


def _process_info(sched: Any, dp: int | None) -> dict[str, Any]:
    args = sched.server_args
    model_path = C.local_dir(getattr(args, "model_path", None))
    hf = getattr(getattr(sched, "model_config", None), "hf_config", None)
    info: dict[str, Any] = dict(
        engine=ENGINE,
        engine_version=_version,
        model_name=str(getattr(args, "served_model_name", None) or args.model_path),
        model_path=model_path,
        role="scheduler",
        rank=dp,
        extra=[
            ("overlap_schedule", str(bool(getattr(sched, "enable_overlap", False)))),
            ("chunked_prefill_size", str(getattr(sched, "chunked_prefill_size", None))),
            ("radix_cache", str(not getattr(args, "disable_radix_cache", False))),
            ("max_total_num_tokens", str(getattr(sched, "max_total_num_tokens", None))),
            ("max_running_requests", str(getattr(sched, "max_running_requests", None))),
            ("page_size", str(getattr(args, "page_size", None))),
        ],
    )
    info.update(C.special_tokens(model_path, hf, getattr(sched, "tokenizer", None)))
    return info


TOP_K_OFF = 1 << 30  # SGLang's SamplingParams.top_k when top-k sampling is off


def _params(req: Any) -> tuple:
    sp = req.sampling_params
    # What the client asked: none for a request only the trace asked for.
    top = req.logprob.top_logprobs_num if req.return_logprob and req.rid not in _trace_only else None
    top_k = getattr(sp, "top_k", None)
    if isinstance(top_k, int) and (top_k >= TOP_K_OFF or top_k < 0):
        top_k = 0  # off, written as vLLM writes it
    return (
        getattr(sp, "temperature", None),
        getattr(sp, "top_p", None),
        top_k,
        getattr(sp, "max_new_tokens", None),
        top,
        getattr(sp, "sampling_seed", None),
    )


def _arrival(st: _SchedState, req: Any) -> tuple:
    prompt = len(req.origin_input_ids)
    st.live[req.rid] = prompt
    return (req.rid, None, None, prompt, *_params(req), None, prompt_hash(req.origin_input_ids),
            _trace_only.get(req.rid))


def _wrap_handle_generate_request(orig: Callable) -> Callable:
    def handle_generate_request(self: Any, recv_req: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _recorder()
        if rec is not None and rec.config.topk_sample > 0.0:
            try:
                _ask_topk(self, rec, recv_req)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("Scheduler.handle_generate_request", exc)
        return orig(self, recv_req, *args, **kwargs)

    return handle_generate_request


def _ask_topk(sched: Any, rec: Any, recv_req: Any) -> None:
    """For a request sampled by ``TOKTRACE_TOPK_SAMPLE`` whose client asked
    for no logprobs, ask SGLang for top-K before it builds the ``Req`` (the
    Req makes its logprob lists only when asked at construction). No prompt
    logprobs (``logprob_start_len`` -1 becomes the prompt's length); the
    tokenizer manager hands a client logprobs only when its own copy of the
    request asked, so the client gets none. A client that asked for any
    number is left as it is. Not under speculative decoding or
    prefill/decode disaggregation, whose checks refuse or route logprob
    requests differently. Every rank decides alike: the choice is the
    prompt's hash."""
    if getattr(recv_req, "return_logprob", False):
        return
    spec = getattr(sched, "spec_algorithm", None)
    if spec is not None and not getattr(spec, "is_none", lambda: True)():
        return
    disagg = getattr(sched, "disaggregation_mode", None)
    if disagg is not None and str(getattr(disagg, "value", disagg)).lower() not in ("null", "none"):
        return
    _, k = C.prompt_identity(rec, ENGINE, getattr(recv_req, "input_ids", None), None, None)
    if k is None:
        return
    recv_req.return_logprob = True
    recv_req.top_logprobs_num = k
    recv_req.logprob_start_len = -1
    if hasattr(recv_req, "token_ids_logprob"):
        recv_req.token_ids_logprob = None
    if _state(sched) is not None:
        if len(_trace_only) >= MAX_TRACE_ONLY:
            _trace_only.pop(next(iter(_trace_only)))
        _trace_only[recv_req.rid] = k


def _wrap_add_request_to_queue(orig: Callable) -> Callable:
    def _add_request_to_queue(self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        st = _state(self)
        # Recorded before the call: SGLang may abort the request right there
        # (queue limit, priority), and that finish must follow its arrival.
        if st is not None and req.rid not in st.live:  # else a retracted request coming back
            try:
                rec = _recorder()
                if rec is not None:
                    rec.arrivals([_arrival(st, req)])
            except Exception as exc:  # noqa: BLE001
                _guard.failed("Scheduler._add_request_to_queue", exc)
        return orig(self, req, *args, **kwargs)

    return _add_request_to_queue


def _left_unrun(st: _SchedState | None, req: Any, where: str) -> None:
    """A request aborted outside any batch: its finish (once; later calls for
    the same request find it forgotten). One whose finish waits for a batch
    still in flight (``abort_after``) is left to that batch."""
    if st is None or req.rid not in st.live or req.rid in st.abort_after:
        return
    try:
        rec = _recorder()
        if rec is not None:
            rec.finishes([(req.rid, "abort", len(req.output_ids))])
        st.forget(req.rid)
    except Exception as exc:  # noqa: BLE001
        _guard.failed(where, exc)


def _wrap_release_aborted_request(orig: Callable) -> Callable:
    def _release_aborted_request(self: Any, req: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, req, *args, **kwargs)
        _left_unrun(_state(self), req, "Scheduler._release_aborted_request")
        return out

    return _release_aborted_request


def _patch_output_sender(mod: Any) -> None:
    """0.5.13–0.5.20: every abort of a request outside a batch sends an
    ``AbortReq`` for it to the tokenizer; running requests are aborted through
    their batch instead (``to_finish``), and finish there."""
    C.require(mod, "SenderWrapper", where="sglang.srt.managers.scheduler_components.output_sender")
    C.require(mod.SenderWrapper, "send_output", where="sglang SenderWrapper")
    from sglang.srt.managers.io_struct import AbortReq

    def wrap(orig: Callable) -> Callable:
        def send_output(self: Any, output: Any, recv_obj: Any = None, *args: Any, **kwargs: Any) -> Any:
            if recv_obj is not None and isinstance(output, AbortReq) and hasattr(recv_obj, "output_ids"):
                _left_unrun(_current_state, recv_obj, "SenderWrapper.send_output")
            return orig(self, output, recv_obj, *args, **kwargs)

        return send_output

    C.patch(mod.SenderWrapper, "send_output", wrap)


def _kv_usage(sched: Any) -> float | None:
    total = sched.max_total_num_tokens
    if not total:
        return None
    free = sched.token_to_kv_pool_allocator.available_size() + sched.tree_cache.evictable_size()
    return (total - free) / total


def _compose(sched: Any, st: _SchedState, rec: Any, batch: Any) -> tuple | None:
    """Batch composition at launch: (ids, prefill, decode, cached, reqs)."""
    mode = batch.forward_mode
    reqs = list(batch.reqs)
    if not reqs:
        return None
    late = [r for r in reqs if r.rid not in st.live and not r.finished()]
    if late:  # arrived by a path other than the waiting queue
        rec.arrivals([_arrival(st, r) for r in late])
    ids = [r.rid for r in reqs]
    n = len(reqs)
    if mode.is_decode():
        return ids, [0] * n, [1] * n, None, reqs
    if not mode.is_extend():
        return None  # idle / prebuilt / other modes carry no model work to attribute
    ext = batch.extend_lens
    pre = batch.prefix_lens
    decoding = {id(r) for r in (batch.decoding_reqs or ())}
    prefill: list[int] = []
    decode: list[int] = []
    cached: list[int] = []
    for i, r in enumerate(reqs):
        e = int(ext[i]) if i < len(ext) else 0
        if id(r) in decoding:
            prefill.append(0), decode.append(e), cached.append(0)
            continue
        prefill.append(e), decode.append(0)
        # The first chunk of a (re)prefill starts on top of what the radix
        # cache already held; later chunks start on their own earlier chunks.
        if r.rid in st.started:
            cached.append(0)
        else:
            st.started.add(r.rid)
            cached.append(int(pre[i]) if i < len(pre) else 0)
    return ids, prefill, decode, cached, reqs


def _wrap_run_batch(orig: Callable) -> Callable:
    def run_batch(self: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        st = _state(self)
        rec = _recorder() if st is not None else None
        if rec is None:
            return orig(self, batch, *args, **kwargs)
        t0 = time.monotonic_ns()
        launch = None
        try:
            comp = _compose(self, st, rec, batch)
            if comp is not None:
                preempted, st.retracted = st.retracted or None, []
                running = self.running_batch.batch_size() if self.running_batch is not None else 0
                launch = (next(st.steps), t0, comp, len(self.waiting_queue), running,
                          _kv_usage(self), preempted)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.run_batch", exc)
        ta = time.monotonic_ns()
        result = orig(self, batch, *args, **kwargs)
        if launch is not None:
            try:
                tb = time.monotonic_ns()
                st.pending[id(result)] = (result, launch, batch)
                if len(st.pending) > MAX_PENDING:
                    st.pending.pop(next(iter(st.pending)))
                _cost[0] += (ta - t0) + (time.monotonic_ns() - tb)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("Scheduler.run_batch (after)", exc)
        return result

    return run_batch


def _snapshot(reqs: list) -> list[tuple[int, int]]:
    """Per row: outputs and output logprobs so far (before result processing)."""
    out = []
    for r in reqs:
        lp = r.logprob.output_token_logprobs_val if r.return_logprob else None
        out.append((len(r.output_ids), len(lp) if lp else 0))
    return out


def _finish_reason(req: Any) -> str:
    fr = req.finished_reason
    try:
        kind = fr.to_json().get("type")
    except Exception:  # noqa: BLE001
        kind = None
    return str(kind or type(fr).__name__)


def _record(rec: Any, st: _SchedState, launch: tuple, before: list[tuple[int, int]],
            end_ns: int | None) -> int:
    """Record the step from the rows' growth; returns when its batch was launched."""
    step_id, t0, comp, waiting, running, kv, preempted = launch
    ids, prefill, decode, cached, reqs = comp
    keep = C.live_rows(ids, st.live)  # the overlap loop's finished rows go
    if keep is not None:
        ids, prefill, decode, cached, reqs, before = (
            C.pick(rows, keep) for rows in (ids, prefill, decode, cached, reqs, before))
    run_ids: list[str] = []
    first: list[int] = []
    tokens: list[list[int]] = []
    has_lp: list[bool] = []
    # Per run with logprobs: vals, top vals, top ids (the native call takes
    # rows for the runs flagged in run_has_logprobs only).
    lp_rows: list[tuple[list, list, list]] = []
    ks: list[int] = []
    finishes: list[tuple[str, str, int]] = []
    for r, (n0, l0) in zip(reqs, before):
        out = r.output_ids
        n1 = len(out)
        if n1 > n0:
            run_ids.append(r.rid)
            first.append(n0)
            tokens.append(list(out[n0:n1]))
            got = False
            if r.return_logprob:
                lg = r.logprob
                vals = (lg.output_token_logprobs_val or [])[l0:]
                if len(vals) == n1 - n0:
                    k = int(lg.top_logprobs_num or 0)
                    tv = (lg.output_top_logprobs_val or [])[l0:] if k else []
                    ti = (lg.output_top_logprobs_idx or [])[l0:] if k else []
                    if k and (len(tv) != len(vals) or len(ti) != len(vals)):
                        k, tv, ti = 0, [], []
                    lp_rows.append((vals, tv, ti))
                    ks.append(k)
                    got = True
            has_lp.append(got)
        if r.finished() and r.rid in st.live:
            finishes.append((r.rid, _finish_reason(r), n1))
        elif r.rid in st.abort_after:
            finishes.append((r.rid, "abort", n1))
    kwargs: dict[str, Any] = {}
    if ks:
        # One K per step: the smallest any row asked for (rows that asked for
        # more are cut to it; nothing is padded).
        k = min(ks)
        logprobs: list[float] = []
        top_ids: list[int] = []
        top_lps: list[float] = []
        for vals, tv, ti in lp_rows:
            logprobs.extend(float(v) for v in vals)
            if k:
                for row_v, row_i in zip(tv, ti):
                    top_lps.extend(float(v) for v in list(row_v)[:k])
                    top_ids.extend(int(i) for i in list(row_i)[:k])
        kwargs = dict(top_k=k, logprobs=logprobs, ranks=[NO_RANK] * len(logprobs),
                      run_has_logprobs=has_lp)
        if k:
            kwargs.update(top_ids=top_ids, top_logprobs=top_lps)
    rec.step(step_id, t0, ids, prefill, decode, run_ids, first, token_ids=tokens,
             run_counts=[len(t) for t in tokens], cached=cached, waiting=waiting,
             running=running, kv_usage=kv, preempted=preempted,
             finished=[f[0] for f in finishes] or None, end_ns=end_ns, **kwargs)
    if finishes:
        rec.finishes(finishes)
        for f in finishes:
            st.forget(f[0])
    return t0


def _launch_of(st: _SchedState, batch: Any, result: Any) -> tuple | None:
    """The pending launch this (batch, result) pair belongs to: by the very
    result object ``run_batch`` returned; else (pipeline parallelism, whose
    last stage hands back a newly built result) the oldest launch of that
    batch object — each micro-batch has one launch in flight at a time."""
    entry = st.pending.pop(id(result), None)
    # Only then: elsewhere one batch object (the running batch) is launched
    # again and again, and a launch left unrecorded must not take another's.
    if entry is None and st.pipelined:
        key = next((k for k, (_, _, b) in st.pending.items() if b is batch), None)
        entry = st.pending.pop(key) if key is not None else None
    return entry


def _wrap_process_batch_result(orig: Callable) -> Callable:
    def process_batch_result(self: Any, batch: Any, result: Any, *args: Any, **kwargs: Any) -> Any:
        st = _state(self)
        entry = _launch_of(st, batch, result) if st is not None else None
        rec = _recorder() if entry is not None else None
        if rec is None:
            return orig(self, batch, result, *args, **kwargs)
        ta = time.monotonic_ns()
        before = None
        launch = entry[1]
        try:
            before = _snapshot(launch[2][4])
        except Exception as exc:  # noqa: BLE001
            _guard.failed("process_batch_result (before)", exc)
        _streamed[0] = None
        tb = time.monotonic_ns()
        out = orig(self, batch, result, *args, **kwargs)
        tc = time.monotonic_ns()
        if before is not None:
            try:
                t0 = _record(rec, st, launch, before, _streamed[0] or tc)
                st.unflushed = True
                td = time.monotonic_ns()
                _cost[0] += (tb - ta) + (td - tc)
                _cost[1] += 1
                _cost[2] += td - t0
            except Exception as exc:  # noqa: BLE001
                _guard.failed("process_batch_result (after)", exc)
        return out

    return process_batch_result


def _wrap_on_idle(orig: Callable) -> Callable:
    # SGLang's Engine.shutdown() SIGKILLs the scheduler, often a few
    # milliseconds after the client got its last token: what the drain had not
    # written by then was lost (the last steps of the last requests). The first
    # time the scheduler goes idle after work, it waits (bounded) for the drain
    # instead; with nothing to run, the engine cannot notice.
    def on_idle(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            st = _state(self)
            if st is not None and st.unflushed:
                st.unflushed = False
                rec = _recorder()
                if rec is not None:
                    rec.flush(IDLE_FLUSH_S)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("Scheduler.on_idle", exc)
        return orig(self, *args, **kwargs)

    return on_idle


# When the batch being processed first handed its outputs on (monotonic ns).
_streamed: list[int | None] = [None]


def _patch_output_streamer(mod: Any) -> None:
    C.require(mod, "SchedulerOutputStreamer", where="sglang.srt.managers.scheduler_components.output_streamer")
    C.require(mod.SchedulerOutputStreamer, "stream_output", where="sglang SchedulerOutputStreamer")
    C.patch(mod.SchedulerOutputStreamer, "stream_output", _wrap_stream_output)


def _wrap_stream_output(orig: Callable) -> Callable:
    def stream_output(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _streamed[0] is None:
            _streamed[0] = time.monotonic_ns()
        return orig(self, *args, **kwargs)

    return stream_output


def _wrap_retract_decode(orig: Callable) -> Callable:
    def retract_decode(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, *args, **kwargs)
        try:
            st = _current_state
            if st is not None and out and out[0]:
                rids = [r.rid for r in out[0]]
                st.retracted.extend(rids)
                for rid in rids:
                    st.started.discard(rid)
            # The third value: requests aborted instead of retracted (beam
            # groups, no KV backup, the last request that still does not fit).
            # They leave the batch here and never reach another one.
            # In the overlap loop a batch holding them may still await its
            # result: their finish then follows that batch's tokens.
            for req in (out[2] if out and len(out) > 2 else None) or ():
                if st is not None and any(req.rid in launch[2][0] for _, launch, _ in st.pending.values()):
                    st.abort_after.add(req.rid)
                else:
                    _left_unrun(st, req, "ScheduleBatch.retract_decode")
        except Exception as exc:  # noqa: BLE001
            _guard.failed("ScheduleBatch.retract_decode", exc)
        return out

    return retract_decode


# The recording scheduler of this process (one per scheduler process), for
# hooks on objects that do not know their scheduler.
_current_state: _SchedState | None = None


# ===== frontend (tokenizer manager) =====


def _frontend_recorder() -> Any:
    rec = toktrace.recorder("frontend")
    return rec if rec is not None and rec.enabled else None


def _patch_tokenizer_manager(mod: Any) -> None:
    C.require(mod, "TokenizerManager", where="sglang.srt.managers.tokenizer_manager")
    T = mod.TokenizerManager
    C.require(T, "__init__", "_init_req_state", "_handle_batch_output", where="sglang TokenizerManager")
    C.patch(T, "__init__", _wrap_tm_init)
    C.patch(T, "_init_req_state", _wrap_init_req_state)
    C.patch(T, "_handle_batch_output", _wrap_handle_batch_output)


def _wrap_tm_init(orig: Callable) -> Callable:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig(self, *args, **kwargs)
        try:
            rec = _frontend_recorder()
            if rec is not None:
                path = C.local_dir(getattr(self, "model_path", None))
                info: dict[str, Any] = dict(engine=ENGINE, engine_version=_version, model_path=path,
                                            role="frontend")
                info.update(C.special_tokens(path, getattr(self, "tokenizer", None)))
                rec.process(**info)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("TokenizerManager.__init__", exc)

    return __init__


def _headers_traceparent(obj: Any, request: Any) -> str | None:
    tp = C.traceparent(getattr(request, "headers", None)) if request is not None else None
    return tp or C.traceparent(getattr(obj, "external_trace_header", None))


def _wrap_init_req_state(orig: Callable) -> Callable:
    def _init_req_state(self: Any, obj: Any, request: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = orig(self, obj, request, *args, **kwargs)
        try:
            rec = _frontend_recorder()
            if rec is not None:
                tp = _headers_traceparent(obj, request)
                rids = [obj.rid] if getattr(obj, "is_single", True) else list(obj.rid)
                arrivals = []
                for rid in rids:
                    state = self.rid_to_state.get(rid)
                    sub = getattr(state, "obj", None)
                    ids = getattr(sub, "input_ids", None)
                    sp = getattr(sub, "sampling_params", None) or {}
                    top = getattr(sub, "top_logprobs_num", None) if getattr(sub, "return_logprob", False) else None
                    arrivals.append((
                        rid, rid, tp, len(ids) if isinstance(ids, (list, tuple)) else None,
                        sp.get("temperature"), sp.get("top_p"), sp.get("top_k"), sp.get("max_new_tokens"),
                        top, sp.get("sampling_seed"), None,
                    ))
                rec.arrivals(arrivals)
        except Exception as exc:  # noqa: BLE001
            _guard.failed("TokenizerManager._init_req_state", exc)
        return out

    return _init_req_state


def _wrap_handle_batch_output(orig: Callable) -> Callable:
    async def _handle_batch_output(self: Any, recv_obj: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _frontend_recorder()
        before: list[tuple[str, Any, int]] = []
        if rec is not None:
            try:
                states = self.rid_to_state
                for rid in recv_obj.rids:
                    state = states.get(rid)
                    if state is not None:
                        before.append((rid, state, len(state.output_ids)))
            except Exception as exc:  # noqa: BLE001
                _guard.failed("TokenizerManager._handle_batch_output (before)", exc)
                before = []
        out = await orig(self, recv_obj, *args, **kwargs)
        if before:
            try:
                ids: list[str] = []
                first: list[int] = []
                counts: list[int] = []
                finished: list[tuple[str, str, int]] = []
                for rid, state, n0 in before:
                    n1 = len(state.output_ids)
                    if n1 > n0:
                        ids.append(rid), first.append(n0), counts.append(n1 - n0)
                    if state.finished:
                        finished.append((rid, _frontend_reason(recv_obj, rid), n1))
                if ids:
                    rec.emits(ids, first, counts)
                if finished:
                    rec.finishes(finished)
            except Exception as exc:  # noqa: BLE001
                _guard.failed("TokenizerManager._handle_batch_output (after)", exc)
        return out

    return _handle_batch_output


def _frontend_reason(recv_obj: Any, rid: str) -> str:
    try:
        fr = recv_obj.finished_reasons[list(recv_obj.rids).index(rid)]
        return str((fr or {}).get("type") or "stop")
    except Exception:  # noqa: BLE001
        return "stop"
