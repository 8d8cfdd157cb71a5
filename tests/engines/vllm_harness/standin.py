"""Stand-in executor and model runner for the scheduler-level harness.

vLLM's real engine core, scheduler, KV cache manager and output processor
run unchanged; only the model is replaced. ``StandinExecutor`` is handed to
vLLM as ``distributed_executor_backend`` (a class: ``Executor.get_class``
accepts an ``Executor`` subclass as is). It runs one in-process worker,
``StandinWorker`` (a real ``WorkerBase``), that answers the engine core's
set-up calls without a model and, per step, returns the release's own output
types built from deterministic fake sampling:

- the sampled token of request R at sequence position P (0-based index of
  the token being produced) is ``blake2b(R, P)`` mapped into the vocabulary,
  never a special token, except EOS where the request asked for one with
  ``SamplingParams(extra_args={"harness_eos_at": k})`` (output index k);
- its "distribution" is a seeded random vector of logits, log-softmaxed in
  float32; the sampled token's logprob and rank (1 + how many tokens are
  more likely; vLLM counts ``>=``) come from it, and the top-K rows hold the
  sampled token in column 0 then the K best, as vLLM's sampler lays them out.
  Every row of a step gets K = the largest ``logprobs`` any request of the
  step asked for (the sampler computes one [rows, K+1] block);
- rows are in the order the release's real model runner keeps its batch
  (``rows_v1``: the persistent batch of ``gpu_model_runner.py``, holes
  filled lowest first then condensed from the top; ``rows_v2``: the V2
  runner's per-step sort), chosen as vLLM chooses its runner
  (``VllmConfig.use_v2_model_runner``; gone in 0.34, where V2 is the only one);
- partial prefill chunks sample nothing (``[]``), as both runners do;
- under async scheduling ``sample_tokens`` returns an
  ``AsyncModelRunnerOutput`` whose result is taken only when the engine core
  pops it from its batch queue, i.e. one step late with two batches in flight.

Everything produced is recorded (``StandinWorker.record``) for the tests.
Per-release differences are the named shims below; a required field this
file does not know raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from vllm.v1.executor.abstract import Executor
from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, AsyncModelRunnerOutput, LogprobsLists, ModelRunnerOutput
from vllm.v1.worker.worker_base import WorkerBase

# The last worker made in this process, for the runner to dump.
WORKERS: list["StandinWorker"] = []

# Benchmark switches (benches/vllm_insitu.py). RECORD off keeps no per-step
# record (it grows with the run and its dicts are not vLLM's work).
# EVICT_BYTES > 0: each forward pass writes one byte per cache line of a
# buffer that size, so vLLM's Python work after it starts on the caches a
# real forward pass leaves (set it to the last-level cache's size).
RECORD = True
EVICT_BYTES = 0
_evict_buf: np.ndarray | None = None


def _evict_caches() -> None:
    global _evict_buf
    if _evict_buf is None or _evict_buf.size != EVICT_BYTES:
        _evict_buf = np.zeros(EVICT_BYTES, dtype=np.uint8)
    lines = _evict_buf[::64]
    lines += 1

EOS_ARG = "harness_eos_at"


# ===== per-release shims =====

def _dataclass_required(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


# 0.26-0.33: ModelRunnerOutput(req_ids, req_id_to_index, ...); 0.34 dropped
# req_id_to_index (the scheduler indexes req_ids itself).
_MRO_REQUIRED = _dataclass_required(ModelRunnerOutput)
_MRO_KNOWN_REQUIRED = {"req_ids", "req_id_to_index"}
if not _MRO_REQUIRED <= _MRO_KNOWN_REQUIRED:
    raise RuntimeError(f"ModelRunnerOutput requires fields the stand-in does not know: "
                       f"{sorted(_MRO_REQUIRED - _MRO_KNOWN_REQUIRED)}")
HAS_REQ_ID_TO_INDEX = "req_id_to_index" in {f.name for f in dataclasses.fields(ModelRunnerOutput)}

# LogprobsLists has been the same NamedTuple 0.26-0.34.
_LP_FIELDS = ("logprob_token_ids", "logprobs", "sampled_token_ranks", "cu_num_generated_tokens")
if tuple(LogprobsLists._fields) != _LP_FIELDS:
    raise RuntimeError(f"LogprobsLists fields changed: {LogprobsLists._fields}")


def make_output(req_ids: list[str], sampled: list[list[int]], logprobs: LogprobsLists | None) -> ModelRunnerOutput:
    kw: dict[str, Any] = dict(req_ids=list(req_ids), sampled_token_ids=sampled, logprobs=logprobs)
    if HAS_REQ_ID_TO_INDEX:
        kw["req_id_to_index"] = {r: i for i, r in enumerate(req_ids)}
    return ModelRunnerOutput(**kw)


def uses_v2_runner(vllm_config: Any) -> bool:
    """0.29-0.33 pick V1 or V2 at run time (a property of VllmConfig); 0.34
    has only V2 and no such property."""
    flag = getattr(type(vllm_config), "use_v2_model_runner", None)
    if flag is None:
        return True
    return bool(vllm_config.use_v2_model_runner)


def prefill_tokens(new_req: Any) -> int:
    """Tokens a new (or, under V2, resumed) request must prefill: 0.34 always
    sends ``prefill_token_ids`` (prompt plus outputs on resume); before, only
    resumed requests under V2 carry it and plain new ones have None."""
    pti = getattr(new_req, "prefill_token_ids", None)
    if pti is not None:
        return len(pti)
    return len(new_req.prompt_token_ids)


def resumed_ids(cached: Any) -> set[str]:
    """V1 runner only (0.26-0.33): requests resumed from preemption arrive
    among the cached ones, named in ``resumed_req_ids``."""
    return set(getattr(cached, "resumed_req_ids", ()) or ())


# ===== row order =====

class RowsV2:
    """V2 model runner (``v1/worker/gpu/model_runner.py``,
    ``sort_batch_req_ids``): rows are re-sorted every step, requests with
    drafts first, then decodes (``num == decode_query_len``), then the rest
    by scheduled token count; Python's sort is stable, so ties keep
    ``num_scheduled_tokens``' order."""

    decode_query_len = 1  # no speculative decoding here

    def step(self, so: Any) -> list[str]:
        nst = so.num_scheduled_tokens
        drafts = so.scheduled_spec_decode_tokens or {}
        key: Callable[[str], tuple] = lambda r: (not drafts.get(r), nst[r] != self.decode_query_len, nst[r])
        return sorted(nst, key=key)


class RowsV1:
    """V1 persistent batch (``gpu_model_runner._update_states`` and
    ``gpu_input_batch.InputBatch``): finished, then unscheduled (preempted or
    skipped) requests leave their rows; new requests, then cached ones not
    in the batch (resumed), take the lowest free row or append; ``condense``
    then moves the highest rows down into the remaining holes. The optional
    ``_may_reorder_batch`` (attention backends with a reorder threshold, e.g.
    FlashInfer) is not modelled: FlashAttention, the usual backend for a
    plain Llama on NVIDIA, sets none."""

    def __init__(self) -> None:
        self.rows: list[str | None] = []
        self.index: dict[str, int] = {}

    def _remove(self, req_id: str, removed: list[int]) -> None:
        i = self.index.pop(req_id, None)
        if i is not None:
            self.rows[i] = None
            removed.append(i)

    def step(self, so: Any) -> list[str]:
        removed: list[int] = []
        for r in so.finished_req_ids:
            self._remove(r, removed)
        scheduled = set(so.num_scheduled_tokens)
        cached = so.scheduled_cached_reqs
        resumed = resumed_ids(cached)
        for r in list(self.index.keys() - (scheduled - resumed)):
            self._remove(r, removed)
        to_add = [nr.req_id for nr in so.scheduled_new_reqs]
        to_add += [r for r in cached.req_ids if r not in self.index]
        holes = sorted(removed, reverse=True)  # pop() gives the lowest
        for r in to_add:
            i = holes.pop() if holes else len(self.index)
            if i == len(self.rows):
                self.rows.append(None)
            self.rows[i] = r
            self.index[r] = i
        # condense
        n = len(self.index)
        last = n + len(holes) - 1
        hole_set = set(holes)
        while holes:
            while last in hole_set:
                last -= 1
            empty = holes[-1]
            if empty >= last:
                break
            holes.pop()
            hole_set.discard(empty)
            r = self.rows[last]
            assert r is not None
            self.rows[empty], self.rows[last] = r, None
            self.index[r] = empty
            last -= 1
        del self.rows[n:]
        assert all(r is not None for r in self.rows), self.rows
        assert set(self.rows) == scheduled, (sorted(self.rows), sorted(scheduled))
        return list(self.rows)  # type: ignore[arg-type]


# ===== fake sampling =====

def _seed(req_id: str, pos: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{req_id}\0{pos}".encode(), digest_size=8).digest(), "little")


@dataclasses.dataclass
class _Req:
    prompt_len: int
    num_tokens: int  # tokens the runner holds: prompt plus outputs it sampled
    num_computed: int
    logprobs: int | None
    eos_at: int | None


class StandinWorker(WorkerBase):
    def __init__(self, vllm_config: Any) -> None:
        super().__init__(vllm_config=vllm_config, local_rank=0, rank=0,
                         distributed_init_method="", is_driver_worker=True)
        hf = self.model_config.hf_text_config
        self.vocab = int(self.model_config.get_vocab_size())
        self.eos = int(hf.eos_token_id)
        special = {getattr(hf, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        self.ordinary = np.array([t for t in range(self.vocab) if t not in special], dtype=np.int64)
        self.v2 = uses_v2_runner(vllm_config)
        self.rows = RowsV2() if self.v2 else RowsV1()
        self.async_scheduling = bool(vllm_config.scheduler_config.async_scheduling)
        self.reqs: dict[str, _Req] = {}
        self.steps = itertools.count()
        self.pending: tuple[Any, list[str]] | None = None
        self.record: dict[str, Any] = {
            "runner": "v2" if self.v2 else "v1",
            "async_scheduling": self.async_scheduling,
            "vocab": self.vocab,
            "steps": [],
        }
        WORKERS.append(self)

    # --- set-up calls from the engine core ---

    def init_device(self) -> None:
        return None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        return None

    def get_kv_cache_spec(self) -> dict[str, Any]:
        import torch

        from vllm.v1.kv_cache_interface import FullAttentionSpec

        hf = self.model_config.hf_text_config
        head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        spec = FullAttentionSpec(block_size=self.cache_config.block_size, num_kv_heads=hf.num_key_value_heads,
                                 head_size=head, dtype=torch.float32)
        return {f"model.layers.{i}.self_attn.attn": spec for i in range(hf.num_hidden_layers)}

    def get_supported_kv_cache_layouts(self) -> list[str]:
        # No attention backend exists to ask; the layout the engine core
        # resolves when no backend declares one.
        from vllm.v1.attention.backends.utils import _DEFAULT_LAYOUT_PREFERENCE

        return [layout.name for layout in _DEFAULT_LAYOUT_PREFERENCE]

    def determine_available_memory(self) -> int:
        return 1 << 30

    def initialize_from_config(self, kv_cache_configs: Any) -> None:
        # One config per worker (WorkerWrapperBase picks its own by rank).
        cfg = kv_cache_configs[0] if isinstance(kv_cache_configs, list) else kv_cache_configs
        self.record["num_blocks"] = int(cfg.num_blocks)

    def compile_or_warm_up_model(self) -> Any:
        try:
            from vllm.v1.worker.worker_base import CompilationTimes
        except ImportError:  # before 0.33 it returned nothing
            return None
        return CompilationTimes(language_model=0.0, encoder=0.0)

    def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    def get_kv_connector_handshake_metadata(self) -> None:
        return None

    # --- the step ---

    def _update(self, so: Any) -> None:
        for r in so.finished_req_ids:
            self.reqs.pop(r, None)
        if self.v2:
            # V2 drops a preempted request's state; it comes back as new.
            for r in so.preempted_req_ids or ():
                self.reqs.pop(r, None)
        for nr in so.scheduled_new_reqs:
            sp = nr.sampling_params
            extra = getattr(sp, "extra_args", None) or {}
            self.reqs[nr.req_id] = _Req(
                prompt_len=len(nr.prompt_token_ids), num_tokens=prefill_tokens(nr),
                num_computed=nr.num_computed_tokens, logprobs=sp.logprobs, eos_at=extra.get(EOS_ARG))
        cached = so.scheduled_cached_reqs
        resumed = resumed_ids(cached)
        num_out = getattr(cached, "num_output_tokens", None)
        for i, r in enumerate(cached.req_ids):
            st = self.reqs[r]
            st.num_computed = cached.num_computed_tokens[i]
            if r in resumed or num_out is not None and st.prompt_len + num_out[i] < st.num_tokens:
                # V1: a resumed request (or one whose last outputs the
                # scheduler dropped) keeps only the outputs the scheduler has.
                st.num_tokens = st.prompt_len + num_out[i]

    def _fake(self, req_id: str, pos: int, st: _Req) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng(_seed(req_id, pos))
        logits = rng.standard_normal(self.vocab).astype(np.float32) * np.float32(3.0)
        m = logits.max()
        lp = (logits - m - np.log(np.exp(logits - m).sum(dtype=np.float32))).astype(np.float32)
        out_idx = pos - st.prompt_len
        if st.eos_at is not None and out_idx == st.eos_at:
            tok = self.eos
        else:
            tok = int(self.ordinary[_seed(req_id, -pos - 1) % len(self.ordinary)])
        return tok, lp

    def execute_model(self, so: Any) -> ModelRunnerOutput | None:
        self._update(so)
        step = next(self.steps)
        rec: dict[str, Any] = {
            "step": step,
            "scheduled": dict(so.num_scheduled_tokens),
            "new": [nr.req_id for nr in so.scheduled_new_reqs],
            # Tokens already computed before the step: for a new (or, on V2,
            # resumed) request, its prefix-cache hits.
            "computed": {**{r: c for r, c in zip(so.scheduled_cached_reqs.req_ids,
                                                 so.scheduled_cached_reqs.num_computed_tokens)},
                         **{nr.req_id: nr.num_computed_tokens for nr in so.scheduled_new_reqs}},
            "cached": list(so.scheduled_cached_reqs.req_ids),
            "preempted": sorted(so.preempted_req_ids or ()),
            "finished": sorted(so.finished_req_ids),
        }
        if RECORD:
            self.record["steps"].append(rec)
        if EVICT_BYTES:
            _evict_caches()
        if not so.num_scheduled_tokens:
            rec["rows"] = []
            return EMPTY_MODEL_RUNNER_OUTPUT
        rows = self.rows.step(so)
        rec["rows"] = rows
        self.pending = (rec, rows)
        return None

    def sample_tokens(self, grammar_output: Any) -> ModelRunnerOutput | AsyncModelRunnerOutput:
        assert self.pending is not None, "sample_tokens without execute_model"
        rec, rows = self.pending
        self.pending = None
        so_nst = rec["scheduled"]
        k = max((self.reqs[r].logprobs or 0) for r in rows)
        want_lp = any(self.reqs[r].logprobs is not None for r in rows)
        sampled: list[list[int]] = []
        ids = np.zeros((len(rows), k + 1), dtype=np.int64)
        vals = np.zeros((len(rows), k + 1), dtype=np.float32)
        ranks = np.zeros(len(rows), dtype=np.int64)
        tokens: list[dict[str, Any]] = []
        for i, r in enumerate(rows):
            st = self.reqs[r]
            seq_len = st.num_computed + so_nst[r]
            # Both runners: a chunk that ends before the request's known
            # tokens is a partial prefill and samples nothing.
            tok, lp = self._fake(r, seq_len, st)
            top = np.argsort(-lp, kind="stable")[:k]
            ids[i, 0], vals[i, 0] = tok, lp[tok]
            ids[i, 1:], vals[i, 1:] = top, lp[top]
            ranks[i] = int((lp >= lp[tok]).sum())
            if seq_len < st.num_tokens:
                sampled.append([])
                continue
            sampled.append([tok])
            st.num_tokens = seq_len + 1
            if not RECORD:
                continue
            t: dict[str, Any] = {"req": r, "row": i, "pos": seq_len, "index": seq_len - st.prompt_len,
                                 "token": tok}
            if st.logprobs is not None:
                n = st.logprobs
                t.update(logprob=float(vals[i, 0]), rank=int(ranks[i]),
                         top=[[int(a), float(b)] for a, b in zip(ids[i, 1:n + 1], vals[i, 1:n + 1])])
            tokens.append(t)
        rec["tokens"] = tokens
        logprobs = LogprobsLists(ids, vals, ranks, None) if want_lp else None
        out = make_output(rows, sampled, logprobs)
        if self.async_scheduling:
            return _AsyncOutput(out)
        return out

    def take_draft_token_ids(self) -> None:
        return None


class _AsyncOutput(AsyncModelRunnerOutput):
    """The real runners hand back a device-to-host copy in flight; here the
    output is complete already and only its hand-over is deferred."""

    def __init__(self, output: ModelRunnerOutput) -> None:
        self.output = output
        self.taken = False

    def get_output(self) -> ModelRunnerOutput:
        assert not self.taken, "get_output called twice"
        self.taken = True
        return self.output

    def get_kv_connector_output(self) -> Any:
        return self.output.kv_connector_output


class _LateFuture(Future):
    """Resolved only when the engine core asks for the result (it pops a
    batch only once the next one is queued, under async scheduling)."""

    def __init__(self, async_output: AsyncModelRunnerOutput) -> None:
        super().__init__()
        self.async_output = async_output

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self.async_output.get_output())
            except Exception as exc:  # noqa: BLE001 - handed to the engine core
                self.set_exception(exc)
        return super().result(timeout)


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class StandinExecutor(Executor):
    supports_pp = False

    def _init_executor(self) -> None:
        self.worker = StandinWorker(self.vllm_config)

    def collective_rpc(self, method: str | Callable, timeout: float | None = None, args: tuple = (),
                       kwargs: dict | None = None, non_block: bool = False, **_: Any) -> Any:
        fn = getattr(self.worker, method) if isinstance(method, str) else (lambda *a, **k: method(self.worker, *a, **k))
        result = [fn(*args, **(kwargs or {}))]
        return _done(result) if non_block else result

    def execute_model(self, scheduler_output: Any, non_block: bool = False) -> Any:
        out = self.worker.execute_model(scheduler_output)
        return _done(out) if non_block else out

    def sample_tokens(self, grammar_output: Any, non_block: bool = False) -> Any:
        out = self.worker.sample_tokens(grammar_output)
        if isinstance(out, AsyncModelRunnerOutput):
            return _LateFuture(out) if non_block else out.get_output()
        return _done(out) if non_block else out

    def take_draft_token_ids(self) -> None:
        return None

    def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    @classmethod
    def supports_async_scheduling(cls) -> bool:
        return True
