//! `NativeProbe`: the adapter-facing recorder, one per traced process.
//!
//! Every method is built for one native call per engine iteration (or per
//! batch of lifecycle events): the columns go in whole, the clock is read here,
//! and nothing waits on the disk. The drain thread starts on the first record,
//! so a probe built before a fork costs the child nothing; after a fork the
//! child calls `reset_after_fork` and gets its own ring, thread and directory.

use crate::convert::{
    extend_f32, extend_flags, extend_u32, inner_lengths, lookup_each, u32s, Matrix,
};
use crate::intern::{Interner, Site};
use crate::step_builder::{self, Scratch};
use probe_core::event::{
    AdapterErrors, BatchEntry, CaptureLevel, EmitBatch, FinishReason, HookErrors, ProcessInfo,
    Record, RequestArrival, RequestFinish, SamplingParams, SpecialTokens, Step,
};
use probe_core::{clock, FsyncPolicy, Probe, ProbeConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// The recorder. Cheap to call from the engine thread; never blocks on disk.
#[pyclass(module = "toktrace._native")]
pub struct NativeProbe {
    config: ProbeConfig,
    capture: CaptureLevel,
    top_k_cap: u32,
    /// Live requests remembered at most (see `Interner::trim`).
    max_requests: usize,
    probe: OnceLock<Probe>,
    interner: Mutex<Interner>,
    scratch: Mutex<Scratch>,
}

fn poisoned<T>(_: T) -> PyErr {
    PyValueError::new_err("toktrace probe state poisoned by an earlier panic")
}

impl NativeProbe {
    fn probe(&self) -> PyResult<&Probe> {
        if let Some(p) = self.probe.get() {
            return Ok(p);
        }
        self.start()
    }

    #[cold]
    #[inline(never)]
    fn start(&self) -> PyResult<&Probe> {
        let started = Probe::start(self.config.clone()).map_err(|e| {
            PyValueError::new_err(format!("cannot start the toktrace drain thread: {e}"))
        })?;
        // A racing thread may have won: its probe is used, ours shuts down.
        Ok(self.probe.get_or_init(|| started))
    }

    fn record(&self, record: Record) -> PyResult<bool> {
        Ok(self.probe()?.record(record))
    }

    /// The interner, locked, and trimmed to its cap before this call's lookups.
    fn interner(&self) -> PyResult<MutexGuard<'_, Interner>> {
        let mut interner = self.interner.lock().map_err(poisoned)?;
        interner.trim();
        Ok(interner)
    }

    /// Key of each request id in `ids`, recording an arrival for ids never seen.
    fn keys(&self, site: Site, ids: &Bound<'_, PyAny>, out: &mut Vec<u32>) -> PyResult<()> {
        self.keys_and_slots(site, ids, out, &mut Vec::new())
    }

    /// `keys`, also giving each request's slot among the live ones.
    fn keys_and_slots(
        &self,
        site: Site,
        ids: &Bound<'_, PyAny>,
        out: &mut Vec<u32>,
        slots: &mut Vec<u32>,
    ) -> PyResult<()> {
        if ids.is_none() {
            return Ok(());
        }
        let mut new = Vec::new();
        self.interner()?.keys(site, ids, out, slots, &mut new)?;
        self.record_first_sight(new)
    }

    /// Ids seen in a step (or a finish) before any arrival record: record what
    /// we know, so no key in the trace is ever an orphan.
    fn record_first_sight(&self, new: Vec<(u32, String)>) -> PyResult<()> {
        if new.is_empty() {
            return Ok(());
        }
        let now = clock::monotonic_ns();
        for (req, internal_id) in new {
            self.record(Record::Arrival(RequestArrival {
                req,
                arrival_ns: now,
                internal_id,
                ..Default::default()
            }))?;
        }
        Ok(())
    }
}

/// Parse a W3C `traceparent` header: `00-<32 hex trace id>-<16 hex span id>-<flags>`,
/// as the Trace Context spec has it: lowercase hex only, ids not all zero,
/// version `ff` invalid, and version `00` exactly four fields (later versions
/// may append fields). It comes from a client: anything else is no parent.
pub fn parse_traceparent(header: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = header.trim().split('-');
    let mut version = [0u8; 1];
    hex_into(parts.next()?, &mut version)?;
    let trace = parts.next()?;
    let span = parts.next()?;
    hex_into(parts.next()?, &mut [0u8; 1])?;
    if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let mut t = [0u8; 16];
    let mut s = [0u8; 8];
    hex_into(trace, &mut t)?;
    hex_into(span, &mut s)?;
    if t == [0; 16] || s == [0; 8] {
        return None;
    }
    Some((t, s))
}

/// Lowercase hex digits, exactly two per byte of `out`.
fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(())
}

fn finish_reason(text: Option<&str>) -> Option<FinishReason> {
    let t = text?;
    Some(match t.to_ascii_lowercase().as_str() {
        "stop" | "eos" | "stop_token" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "abort" | "aborted" | "cancelled" => FinishReason::Abort,
        "error" => FinishReason::Error,
        _ => FinishReason::Other(t.to_owned()),
    })
}

fn opt<'a, 'py>(o: &'a Option<Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    o.as_ref().filter(|b| !b.is_none())
}

#[pymethods]
impl NativeProbe {
    /// A probe writing under `dir`. Nothing starts until the first record.
    /// `max_requests` bounds the requests remembered between their arrival
    /// and their finish: past it (finishes lost) all are forgotten, and a
    /// request seen again gets a new key with an arrival record.
    #[new]
    #[pyo3(signature = (dir, role="main", capture="tokens", top_k_cap=20, ring_slots=65536,
                        ring_bytes=256<<20, segment_bytes=64<<20, disk_budget_bytes=4<<30,
                        fsync="close", max_requests=crate::intern::MAX_KEYS, flush_ms=50))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        dir: &str,
        role: &str,
        capture: &str,
        top_k_cap: u32,
        ring_slots: usize,
        ring_bytes: usize,
        segment_bytes: u64,
        disk_budget_bytes: u64,
        fsync: &str,
        max_requests: usize,
        flush_ms: u64,
    ) -> PyResult<Self> {
        let capture = CaptureLevel::parse(capture).ok_or_else(|| {
            PyValueError::new_err(format!(
                "capture must be metadata, tokens or text, not {capture:?}"
            ))
        })?;
        let fsync = FsyncPolicy::parse(fsync).ok_or_else(|| {
            PyValueError::new_err(format!(
                "fsync must be never, close, always or <N>ms, not {fsync:?}"
            ))
        })?;
        if ring_slots == 0 || ring_bytes == 0 || segment_bytes == 0 {
            return Err(PyValueError::new_err(
                "ring and segment sizes must be positive",
            ));
        }
        if !(1..=60_000).contains(&flush_ms) {
            return Err(PyValueError::new_err(format!(
                "flush_ms must be 1-60000, not {flush_ms}"
            )));
        }
        let mut config = ProbeConfig::new(dir);
        config.writer.role = role.to_owned();
        config.writer.segment_bytes = segment_bytes;
        config.writer.disk_budget_bytes = disk_budget_bytes;
        config.writer.fsync = fsync;
        config.ring_slots = ring_slots;
        config.ring_bytes = ring_bytes;
        config.idle_wait = std::time::Duration::from_millis(flush_ms);
        Ok(NativeProbe {
            config,
            capture,
            top_k_cap,
            probe: OnceLock::new(),
            interner: Mutex::new(Interner::with_cap(max_requests)),
            max_requests,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The capture level in force.
    #[getter]
    fn capture(&self) -> &'static str {
        self.capture.as_str()
    }

    /// This process's trace directory (None before the first record).
    #[getter]
    fn process_dir(&self) -> Option<String> {
        self.probe.get().map(|p| p.dir().display().to_string())
    }

    /// Loss counters: (ring_full, too_big, write_failed, tokens).
    fn drops(&self) -> (u64, u64, u64, u64) {
        let d = self.probe.get().map(|p| p.drops()).unwrap_or_default();
        (d.ring_full, d.too_big, d.write_failed, d.tokens)
    }

    /// Requests the interner currently knows.
    fn known_requests(&self) -> PyResult<usize> {
        Ok(self.interner.lock().map_err(poisoned)?.len())
    }

    /// Record what the adapter knows of the process (repeated in every later segment).
    #[pyo3(signature = (engine, engine_version, model_name=None, model_path=None, bos=None,
                        eos=None, pad=None, special=None, role=None, rank=None, extra=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_process(
        &self,
        engine: &str,
        engine_version: &str,
        model_name: Option<String>,
        model_path: Option<String>,
        bos: Option<u32>,
        eos: Option<Bound<'_, PyAny>>,
        pad: Option<u32>,
        special: Option<Vec<(u32, String)>>,
        role: Option<String>,
        rank: Option<u32>,
        extra: Option<Vec<(String, String)>>,
    ) -> PyResult<bool> {
        self.record(Record::Process(ProcessInfo {
            engine: engine.to_owned(),
            engine_version: engine_version.to_owned(),
            model_name,
            model_path,
            special_tokens: SpecialTokens {
                bos,
                eos: u32s(opt(&eos))?,
                pad,
                all: special.unwrap_or_default(),
            },
            capture: self.capture,
            top_k_cap: self.top_k_cap,
            role: role.unwrap_or_else(|| self.config.writer.role.clone()),
            rank,
            extra: with_direct_reads(extra.unwrap_or_default()),
        }))
    }

    /// Record the errors the adapter caught in its hooks so far, cumulative:
    /// `(hook, count, first_error)` per hook, and whether it switched tracing
    /// off after them. Later segments repeat the latest.
    fn record_adapter_errors(
        &self,
        hooks: Vec<(String, u64, String)>,
        disabled: bool,
    ) -> PyResult<bool> {
        self.record(Record::AdapterErrors(AdapterErrors {
            hooks: hooks
                .into_iter()
                .map(|(hook, count, first_error)| HookErrors {
                    hook,
                    count,
                    first_error,
                })
                .collect(),
            disabled,
        }))
    }

    /// Record request arrivals, one tuple per request:
    /// `(internal_id, external_id, traceparent, prompt_tokens, temperature, top_p,
    ///   top_k, max_tokens, logprobs, seed, arrival_ns[, prompt_hash, trace_top_k])`;
    /// any field but the first may be None. `arrival_ns` is CLOCK_MONOTONIC
    /// (`time.monotonic_ns()`); None means now. `prompt_hash` comes from
    /// `prompt_hash(ids)`; `trace_top_k` is the top-K the adapter asked the
    /// engine for on the trace's behalf (`TOKTRACE_TOPK_SAMPLE`).
    fn record_arrivals(&self, arrivals: Vec<ArrivalRow>) -> PyResult<usize> {
        let now = clock::monotonic_ns();
        let mut recorded = 0;
        for a in arrivals {
            // The arrival written here is the first sight: no extra record.
            let key = {
                let mut interner = self.interner()?;
                let known = interner.key(a.id.as_any(), &mut Vec::new())?;
                if let Some(p) = interner.live().prompts.get_mut(known.slot as usize) {
                    *p = a.prompt;
                }
                known.key
            };
            let (trace_id, parent_span_id) = a
                .traceparent
                .as_deref()
                .and_then(parse_traceparent)
                .map_or((None, None), |(t, s)| (Some(t), Some(s)));
            let ok = self.record(Record::Arrival(RequestArrival {
                req: key,
                arrival_ns: a.at.unwrap_or(now),
                internal_id: a.id.to_str()?.to_owned(),
                external_id: a.external,
                trace_id,
                parent_span_id,
                prompt_tokens: a.prompt.unwrap_or(0),
                params: SamplingParams {
                    temperature: a.temperature.map(|t| t as f32),
                    top_p: a.top_p.map(|t| t as f32),
                    top_k: a
                        .top_k
                        .map(|k| k.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32),
                    max_tokens: a.max_tokens,
                    // Engines use negative values for "all"/"off": keep only real requests.
                    logprobs: a.logprobs.and_then(|l| u32::try_from(l).ok()),
                    seed: a.seed,
                },
                prompt_hash: a.prompt_hash,
                trace_top_k: a.trace_top_k,
            }))?;
            recorded += usize::from(ok);
        }
        Ok(recorded)
    }

    /// Record finished requests: `(request_id, reason, output_tokens)` tuples;
    /// an `output_tokens` of None is filled in with the outputs this probe
    /// recorded for the request, if it recorded any. The ids are forgotten
    /// afterwards.
    fn record_finishes(
        &self,
        finishes: Vec<(Bound<'_, PyAny>, Option<String>, Option<u32>)>,
    ) -> PyResult<usize> {
        let now = clock::monotonic_ns();
        let mut recorded = 0;
        for (id, reason, output_tokens) in finishes {
            let mut new = Vec::new();
            let (known, outputs_seen) = {
                let mut interner = self.interner()?;
                let known = interner.key(&id, &mut new)?;
                // Filled in only for requests whose tokens this probe recorded.
                let seen = interner
                    .live()
                    .outputs
                    .get(known.slot as usize)
                    .copied()
                    .filter(|&n| n > 0);
                (known, seen)
            };
            self.record_first_sight(new)?;
            let ok = self.record(Record::Finish(RequestFinish {
                req: known.key,
                time_ns: now,
                reason: finish_reason(reason.as_deref()),
                output_tokens: output_tokens.or(outputs_seen),
            }))?;
            self.interner.lock().map_err(poisoned)?.forget(known);
            recorded += usize::from(ok);
        }
        // A request's trace ends here: have it written now rather than at the
        // drain's next idle tick, so an engine killed right after its last
        // request (SGLang's shutdown SIGKILLs its scheduler) keeps it.
        if recorded > 0 {
            self.probe()?.wake();
        }
        Ok(recorded)
    }

    /// Record tokens handed to client streams, all at this moment: for each
    /// request id, the output index of its first token in the chunk and the count.
    #[pyo3(signature = (req_ids, first_index, counts=None))]
    fn record_emits(
        &self,
        req_ids: &Bound<'_, PyAny>,
        first_index: &Bound<'_, PyAny>,
        counts: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let now = clock::monotonic_ns();
        let mut keys = Vec::new();
        self.keys(Site::Other, req_ids, &mut keys)?;
        let firsts = u32s(Some(first_index))?;
        let counts = match opt(&counts) {
            Some(c) => u32s(Some(c))?,
            None => vec![1; keys.len()],
        };
        if firsts.len() != keys.len() || counts.len() != keys.len() {
            return Err(PyValueError::new_err(
                "record_emits: columns differ in length",
            ));
        }
        let emits = keys
            .iter()
            .zip(firsts)
            .zip(counts)
            .map(|((&req, first_index), count)| probe_core::event::Emit {
                req,
                first_index,
                count,
                time_ns: now,
            })
            .collect();
        self.record(Record::Emit(EmitBatch { emits }))
    }

    /// Record one engine iteration: batch composition and every token sampled.
    ///
    /// Batch columns (one entry per scheduled request): `batch_reqs` (ids),
    /// `prefill`, `decode`, optional `cached`. Or, with `prefill` and
    /// `decode` None, `scheduled` (tokens scheduled this step, per entry or
    /// as a dict from request id) and `computed` (tokens computed before
    /// it): the probe splits them into prefill and decode work from the
    /// prompt length it was told at arrival and the outputs it recorded. Token runs (one per request that
    /// got tokens this step): `run_reqs`, `run_first_index` (output index of
    /// the run's first token; None continues each request from the outputs
    /// this probe has recorded for it), optional `run_counts` (default: the
    /// length of each run's list when `token_ids` is a list of lists, one per
    /// run; else 1 each).
    /// `run_reqs=None` means one run per batch entry, in batch order (entries
    /// with a count of 0, such as partial prefill chunks, get no run) — the
    /// cheap form, since each id is looked up once.
    /// Token columns over all n tokens, in run order: `token_ids`; with
    /// `top_k >= 0` also `logprobs`, `ranks` (1 = best; 0 where the engine
    /// reports no rank, read back as null) and, for k > 0, `top_ids` and
    /// `top_logprobs` (n×k, flat or 2-D). `run_has_logprobs` (per run: a
    /// bool, or any object with None meaning no) keeps logprob data only for
    /// the runs whose request asked for it; the
    /// logprob columns then cover either every token or only the tokens of
    /// those runs. Or, as vLLM hands them over: `sampled_first=True` says
    /// `top_ids`/`top_logprobs` are n×(k+1) with the sampled token in column
    /// 0 (its logprob is taken from there when `logprobs` is None), and
    /// `logprob_rows` gives, per run, the row of its first token in those
    /// columns (its other tokens follow), as a list or as a dict from request
    /// id to row — the probe picks the rows itself.
    /// Arrays, nested lists and lists are all accepted. `start_ns` is when the
    /// batch was launched (`monotonic_ns()` then); the end is read now unless
    /// `end_ns` is given. Everything after `run_first_index` is keyword-only.
    // The keywords are declared in the order adapters pass them most: each
    // keyword is found by comparing names from the first declared on, so the
    // vLLM adapter's 16 keywords are found after the fewest comparisons.
    #[pyo3(signature = (step_id, start_ns, batch_reqs, prefill, decode, run_reqs, run_first_index,
                        *, token_ids=None, scheduled=None, computed=None, cached=None, waiting=0,
                        running=0, kv_usage=None, preempted=None, finished=None, top_k=-1,
                        top_ids=None, top_logprobs=None, ranks=None, sampled_first=false,
                        logprob_rows=None, run_has_logprobs=None, logprobs=None, run_counts=None,
                        texts=None, end_ns=None))]
    #[allow(clippy::too_many_arguments)]
    fn record_step(
        &self,
        step_id: u64,
        start_ns: u64,
        batch_reqs: &Bound<'_, PyAny>,
        prefill: &Bound<'_, PyAny>,
        decode: &Bound<'_, PyAny>,
        run_reqs: &Bound<'_, PyAny>,
        run_first_index: &Bound<'_, PyAny>,
        token_ids: Option<Bound<'_, PyAny>>,
        scheduled: Option<Bound<'_, PyAny>>,
        computed: Option<Bound<'_, PyAny>>,
        cached: Option<Bound<'_, PyAny>>,
        waiting: u32,
        running: u32,
        kv_usage: Option<f64>,
        preempted: Option<Bound<'_, PyAny>>,
        finished: Option<Bound<'_, PyAny>>,
        top_k: i64,
        top_ids: Option<Bound<'_, PyAny>>,
        top_logprobs: Option<Bound<'_, PyAny>>,
        ranks: Option<Bound<'_, PyAny>>,
        sampled_first: bool,
        logprob_rows: Option<Bound<'_, PyAny>>,
        run_has_logprobs: Option<Bound<'_, PyAny>>,
        logprobs: Option<Bound<'_, PyAny>>,
        run_counts: Option<Bound<'_, PyAny>>,
        texts: Option<Vec<String>>,
        end_ns: Option<u64>,
    ) -> PyResult<bool> {
        let end = end_ns.unwrap_or_else(clock::monotonic_ns);
        let probe = self.probe()?;
        let mut step = probe.take_step();
        let mut scratch = self.scratch.lock().map_err(poisoned)?;
        let built = self.fill_step(
            &mut step,
            StepArgs {
                batch_reqs,
                prefill,
                decode,
                cached: opt(&cached),
                run_reqs,
                run_first_index,
                run_counts: opt(&run_counts),
                run_has_logprobs: opt(&run_has_logprobs),
                token_ids: opt(&token_ids),
                top_k,
                logprobs: opt(&logprobs),
                ranks: opt(&ranks),
                top_ids: opt(&top_ids),
                top_logprobs: opt(&top_logprobs),
                preempted: opt(&preempted),
                finished: opt(&finished),
                texts,
                sampled_first,
                logprob_rows: opt(&logprob_rows),
                scheduled: opt(&scheduled),
                computed: opt(&computed),
            },
            &mut scratch,
        );
        drop(scratch);
        built?;
        step.step_id = step_id;
        step.start_ns = start_ns;
        step.end_ns = end;
        step.waiting = waiting;
        step.running = running;
        step.kv_usage = kv_usage.map(|k| k as f32);
        Ok(probe.record(Record::Step(step)))
    }

    /// Wait until everything recorded so far reached the kernel (at most
    /// `timeout_s`), leaving the drain running. True when it got there.
    #[pyo3(signature = (timeout_s=2.0))]
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> bool {
        let timeout = Duration::from_secs_f64(timeout_s.clamp(0.0, 3600.0));
        match self.probe.get() {
            Some(p) => py.detach(|| p.flush(timeout)),
            None => true,
        }
    }

    /// Write everything queued and stop the drain (at most `timeout_s`).
    /// Returns True when the drain finished in time.
    #[pyo3(signature = (timeout_s=5.0))]
    fn shutdown(&mut self, py: Python<'_>, timeout_s: f64) -> bool {
        let timeout = Duration::from_secs_f64(timeout_s.clamp(0.0, 3600.0));
        match self.probe.take() {
            // The drain never needs the GIL: release it while waiting.
            Some(mut p) => py.detach(move || p.shutdown(timeout).clean),
            None => true,
        }
    }

    /// In a forked child: forget the parent's drain (its thread does not exist
    /// here) and interned ids; the next record starts this process's own.
    fn reset_after_fork(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abandon();
        }
        self.interner = Mutex::new(Interner::with_cap(self.max_requests));
    }
}

struct StepArgs<'a, 'py> {
    batch_reqs: &'a Bound<'py, PyAny>,
    prefill: &'a Bound<'py, PyAny>,
    decode: &'a Bound<'py, PyAny>,
    cached: Option<&'a Bound<'py, PyAny>>,
    run_reqs: &'a Bound<'py, PyAny>,
    run_first_index: &'a Bound<'py, PyAny>,
    run_counts: Option<&'a Bound<'py, PyAny>>,
    run_has_logprobs: Option<&'a Bound<'py, PyAny>>,
    token_ids: Option<&'a Bound<'py, PyAny>>,
    top_k: i64,
    logprobs: Option<&'a Bound<'py, PyAny>>,
    ranks: Option<&'a Bound<'py, PyAny>>,
    top_ids: Option<&'a Bound<'py, PyAny>>,
    top_logprobs: Option<&'a Bound<'py, PyAny>>,
    preempted: Option<&'a Bound<'py, PyAny>>,
    finished: Option<&'a Bound<'py, PyAny>>,
    texts: Option<Vec<String>>,
    sampled_first: bool,
    logprob_rows: Option<&'a Bound<'py, PyAny>>,
    scheduled: Option<&'a Bound<'py, PyAny>>,
    computed: Option<&'a Bound<'py, PyAny>>,
}

fn mismatch(what: &str, got: usize, want: usize) -> PyErr {
    PyValueError::new_err(format!(
        "record_step: {what} has {got} values, expected {want}"
    ))
}

impl NativeProbe {
    /// Build a step's record from the adapter's columns. The interner is
    /// locked once for everything that names requests; ids seen for the first
    /// time get their arrival record even when the step itself is refused.
    fn fill_step(
        &self,
        step: &mut Step,
        mut a: StepArgs<'_, '_>,
        sc: &mut Scratch,
    ) -> PyResult<()> {
        sc.clear();
        let mut new = Vec::new();
        let composed = match self.interner() {
            Ok(mut interner) => self.fill_composition(&mut interner, step, &a, sc, &mut new),
            Err(e) => Err(e),
        };
        self.record_first_sight(new)?;
        composed?;
        if self.capture == CaptureLevel::Metadata {
            return Ok(());
        }
        self.fill_tokens(step, &mut a, sc)
    }

    /// Batch composition, preempted and finished requests, and the token
    /// runs (whose output indices move each request's count on).
    fn fill_composition(
        &self,
        interner: &mut Interner,
        step: &mut Step,
        a: &StepArgs<'_, '_>,
        sc: &mut Scratch,
        new: &mut Vec<(u32, String)>,
    ) -> PyResult<()> {
        if !a.batch_reqs.is_none() {
            interner.keys(Site::Batch, a.batch_reqs, &mut sc.keys, &mut sc.slots, new)?;
        }
        let nb = sc.keys.len();
        if a.prefill.is_none() && a.decode.is_none() {
            classify(interner, a, sc)?;
        } else {
            extend_u32(a.prefill, &mut sc.prefill)?;
            extend_u32(a.decode, &mut sc.decode)?;
        }
        if let Some(c) = a.cached {
            extend_u32(c, &mut sc.cached)?;
        }
        if sc.prefill.len() != nb {
            return Err(mismatch("prefill", sc.prefill.len(), nb));
        }
        if sc.decode.len() != nb {
            return Err(mismatch("decode", sc.decode.len(), nb));
        }
        if !sc.cached.is_empty() && sc.cached.len() != nb {
            return Err(mismatch("cached", sc.cached.len(), nb));
        }
        let cached = &sc.cached;
        step.batch.extend(
            sc.keys
                .iter()
                .zip(&sc.prefill)
                .zip(&sc.decode)
                .enumerate()
                .map(|(i, ((&req, &p), &d))| BatchEntry {
                    req,
                    prefill_tokens: p,
                    cached_tokens: cached.get(i).copied().unwrap_or(0),
                    decode_tokens: d,
                }),
        );
        for (ids, out) in [
            (a.preempted, &mut step.preempted),
            (a.finished, &mut step.finished),
        ] {
            if let Some(ids) = ids {
                interner.keys(Site::Other, ids, out, &mut sc.other_slots, new)?;
            }
        }

        // Token runs: their own ids, or (None) one run per batch entry, in
        // batch order, which saves looking every id up twice.
        if !a.run_reqs.is_none() {
            sc.keys.clear();
            sc.slots.clear();
            interner.keys(Site::Runs, a.run_reqs, &mut sc.keys, &mut sc.slots, new)?;
        }
        let nr = sc.keys.len();
        match (a.run_counts, a.token_ids) {
            (Some(c), _) => extend_u32(c, &mut sc.counts)?,
            (None, Some(ids)) if inner_lengths(ids, nr, &mut sc.counts) => {}
            (None, _) => sc.counts.resize(nr, 1),
        }
        if sc.counts.len() != nr {
            return Err(mismatch("run_counts", sc.counts.len(), nr));
        }
        let firsts_given = !a.run_first_index.is_none();
        if firsts_given {
            extend_u32(a.run_first_index, &mut sc.firsts)?;
            if sc.firsts.len() != nr {
                return Err(mismatch("run_first_index", sc.firsts.len(), nr));
            }
        }
        match a.run_has_logprobs {
            Some(m) => extend_flags(m, &mut sc.has_lp)?,
            None => sc.has_lp.resize(nr, 1),
        }
        if sc.has_lp.len() != nr {
            return Err(mismatch("run_has_logprobs", sc.has_lp.len(), nr));
        }
        let keep_k = self
            .kept_k(a.top_k)
            .map(|k| k as u8)
            .filter(|_| self.capture != CaptureLevel::Metadata);
        step_builder::carry_outputs(sc, firsts_given, &mut interner.live().outputs);
        step_builder::write_runs(&mut step.tokens.runs, sc, keep_k);
        Ok(())
    }

    /// Candidates kept per token for a step handing over `top_k` (negative:
    /// no logprob data): at most the configured cap, and what a run records.
    fn kept_k(&self, top_k: i64) -> Option<usize> {
        step_builder::kept_k(top_k, self.top_k_cap)
    }

    /// The token columns of a step whose runs are in place.
    fn fill_tokens(
        &self,
        step: &mut Step,
        a: &mut StepArgs<'_, '_>,
        sc: &mut Scratch,
    ) -> PyResult<()> {
        let n = sc.tokens;
        let t = &mut step.tokens;
        if self.capture == CaptureLevel::Text {
            if let Some(texts) = a.texts.take() {
                if texts.len() != n {
                    return Err(mismatch("texts", texts.len(), n));
                }
                t.texts = texts;
            }
        }
        if let Some(ids) = a.token_ids {
            extend_u32(ids, &mut t.ids.0)?;
            if t.ids.len() != n {
                return Err(mismatch("token_ids", t.ids.len(), n));
            }
        }
        if let (Ok(k), Some(keep)) = (usize::try_from(a.top_k), self.kept_k(a.top_k)) {
            if a.sampled_first || a.logprob_rows.is_some() {
                return gather_logprobs(t, a, sc, k, keep, n);
            }
            let (Some(lp), Some(rk)) = (a.logprobs, a.ranks) else {
                return Err(PyValueError::new_err(
                    "record_step: top_k >= 0 needs logprobs and ranks",
                ));
            };
            extend_f32(lp, &mut t.logprobs.0)?;
            extend_u32(rk, &mut t.ranks.0)?;
            // Rows for every token (the flags pick), or only for the tokens
            // of the runs flagged with logprobs (already picked).
            let flagged = sc.flagged_tokens;
            let rows = t.logprobs.len();
            if (rows != n && rows != flagged) || t.ranks.len() != rows {
                return Err(mismatch(
                    "logprobs/ranks",
                    t.logprobs.len().min(t.ranks.len()),
                    n,
                ));
            }
            if k > 0 {
                let (Some(ti), Some(tl)) = (a.top_ids, a.top_logprobs) else {
                    return Err(PyValueError::new_err(
                        "record_step: top_k > 0 needs top_ids and top_logprobs",
                    ));
                };
                extend_u32(ti, &mut t.top_ids.0)?;
                extend_f32(tl, &mut t.top_logprobs.0)?;
                if t.top_ids.len() != rows * k || t.top_logprobs.len() != rows * k {
                    return Err(mismatch("top_ids/top_logprobs", t.top_ids.len(), rows * k));
                }
            }
            // Keep only the runs that asked, and at most the capped k per token.
            let picked = rows == flagged;
            if keep < k || (!picked && sc.has_lp.contains(&0)) {
                let has_row = |run: usize| !picked || sc.has_lp[run] != 0;
                step_builder::select_rows(t, &sc.counts, &sc.has_lp, has_row, k, keep);
            }
        }
        Ok(())
    }
}

/// Prefill and decode tokens per batch entry from what was scheduled and the
/// tokens computed before the step (read here, split by
/// [`step_builder::split_work`]).
fn classify(interner: &mut Interner, a: &StepArgs<'_, '_>, sc: &mut Scratch) -> PyResult<()> {
    let (Some(scheduled), Some(computed)) = (a.scheduled, a.computed) else {
        return Err(PyValueError::new_err(
            "record_step: without prefill and decode, give scheduled and computed",
        ));
    };
    let nb = sc.keys.len();
    // Per batch entry, or the engine's request-id -> tokens dict as it is.
    match lookup_each(scheduled, a.batch_reqs, &mut sc.scheduled) {
        Some(done) => {
            done?;
            if sc.scheduled.contains(&u32::MAX) {
                return Err(PyValueError::new_err(
                    "record_step: a batch request has no entry in the scheduled dict",
                ));
            }
        }
        None => extend_u32(scheduled, &mut sc.scheduled)?,
    }
    extend_u32(computed, &mut sc.computed)?;
    if sc.scheduled.len() != nb {
        return Err(mismatch("scheduled", sc.scheduled.len(), nb));
    }
    if sc.computed.len() != nb {
        return Err(mismatch("computed", sc.computed.len(), nb));
    }
    let live = interner.live();
    step_builder::split_work(sc, &live.prompts, &live.outputs);
    Ok(())
}

/// Logprob columns picked row by row from the engine's arrays: rows named per
/// run (`logprob_rows`) or in run order, the sampled token's column first
/// when `sampled_first`, at most `keep` candidates per token.
fn gather_logprobs(
    t: &mut probe_core::event::SampledTokens,
    a: &StepArgs<'_, '_>,
    sc: &mut Scratch,
    k: usize,
    keep: usize,
    n: usize,
) -> PyResult<()> {
    let width = k + usize::from(a.sampled_first);
    let skip = usize::from(a.sampled_first);
    let Some(ranks) = a.ranks else {
        return Err(PyValueError::new_err("record_step: top_k >= 0 needs ranks"));
    };
    sc.raw_ranks.clear();
    extend_u32(ranks, &mut sc.raw_ranks)?;
    // Rows the engine's columns hold.
    let height = sc.raw_ranks.len();
    let tables = match (a.top_ids, a.top_logprobs) {
        (Some(ti), Some(tl)) if width > 0 => {
            let ids = Matrix::<u32>::new(ti, width)?;
            let lps = Matrix::<f32>::new(tl, width)?;
            if ids.rows() != height || lps.rows() != height {
                return Err(mismatch(
                    "top_ids/top_logprobs rows",
                    ids.rows().min(lps.rows()),
                    height,
                ));
            }
            Some((ids, lps))
        }
        _ if width > 0 => {
            return Err(PyValueError::new_err(
                "record_step: top_k > 0 (or sampled_first) needs top_ids and top_logprobs",
            ))
        }
        _ => None,
    };
    // The sampled token's logprob: its own column, or column 0 of the table.
    sc.raw_lp.clear();
    if let Some(lp) = a.logprobs {
        extend_f32(lp, &mut sc.raw_lp)?;
        if sc.raw_lp.len() != height {
            return Err(mismatch("logprobs", sc.raw_lp.len(), height));
        }
    } else if !a.sampled_first {
        return Err(PyValueError::new_err(
            "record_step: top_k >= 0 needs logprobs (or sampled_first)",
        ));
    }
    sc.rows.clear();
    if let Some(r) = a.logprob_rows {
        let run_ids = if a.run_reqs.is_none() {
            a.batch_reqs
        } else {
            a.run_reqs
        };
        match lookup_each(r, run_ids, &mut sc.rows) {
            Some(done) => done?,
            None => extend_u32(r, &mut sc.rows)?,
        }
        if sc.rows.len() != sc.counts.len() {
            return Err(mismatch("logprob_rows", sc.rows.len(), sc.counts.len()));
        }
    }
    // The rows kept, in token order: named per run, or in run order — rows
    // for every token (the flags pick) or only for the flagged runs' tokens.
    step_builder::pick_rows(sc, height == n);
    if let Some(&r) = sc.picked.iter().find(|&&r| r as usize >= height) {
        return Err(PyValueError::new_err(format!(
            "record_step: a token needs logprob row {r}, the columns hold {height} rows"
        )));
    }
    let picked = &sc.picked;
    t.ranks
        .0
        .extend(picked.iter().map(|&r| sc.raw_ranks[r as usize]));
    if !sc.raw_lp.is_empty() {
        t.logprobs
            .0
            .extend(picked.iter().map(|&r| sc.raw_lp[r as usize]));
    }
    if let Some((ids, lps)) = &tables {
        let failed = (sc.raw_lp.is_empty() && !lps.gather(picked, 0, 1, &mut t.logprobs.0))
            || !ids.gather(picked, skip, keep, &mut t.top_ids.0)
            || !lps.gather(picked, skip, keep, &mut t.top_logprobs.0);
        if failed {
            return Err(PyValueError::new_err(
                "record_step: a logprob table holds a value out of range",
            ));
        }
    }
    if t.logprobs.len() != picked.len() {
        return Err(mismatch("logprobs", t.logprobs.len(), picked.len()));
    }
    Ok(())
}

/// CLOCK_MONOTONIC nanoseconds, the probe's clock (equal to `time.monotonic_ns()` on Linux).
#[pyfunction]
pub fn monotonic_ns() -> u64 {
    clock::monotonic_ns()
}

/// The process record's extra fields, with which path reads the engine's
/// objects and why (`direct_reads`) unless the caller said already.
fn with_direct_reads(mut extra: Vec<(String, String)>) -> Vec<(String, String)> {
    if !extra.iter().any(|(k, _)| k == "direct_reads") {
        extra.push(("direct_reads".to_owned(), crate::layout::describe()));
    }
    extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_and_rejects() {
        let (t, s) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t[0], 0x4b);
        assert_eq!(s[7], 0xb7);
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        assert!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01").is_none()
        );
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // a sign
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 has four fields
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 5000, ..Default::default() })]

        /// Whatever a client sends: no panic, and what is accepted is exactly
        /// what the header says.
        #[test]
        fn any_traceparent_parses_or_is_refused(header in "(?s).{0,80}") {
            if let Some((t, s)) = parse_traceparent(&header) {
                let fields: Vec<&str> = header.trim().split('-').collect();
                proptest::prop_assert_eq!(fields[1], hex(&t));
                proptest::prop_assert_eq!(fields[2], hex(&s));
            }
        }

        #[test]
        fn near_traceparents_parse_or_are_refused(
            v in "[0-9a-fA-F+ ]{1,3}", t in "[0-9a-fA-F+]{30,34}",
            s in "[0-9a-fA-F+]{14,18}", f in "[0-9a-f]{1,3}", rest in "(-[a-z0-9]{0,4}){0,2}",
        ) {
            let header = format!("{v}-{t}-{s}-{f}{rest}");
            if let Some((tid, sid)) = parse_traceparent(&header) {
                proptest::prop_assert_eq!(t, hex(&tid));
                proptest::prop_assert_eq!(s, hex(&sid));
            }
        }

        #[test]
        fn every_valid_traceparent_is_accepted(t in proptest::array::uniform16(1u8..), s in proptest::array::uniform8(1u8..), f in 0u8..) {
            let header = format!("00-{}-{}-{f:02x}", hex(&t), hex(&s));
            proptest::prop_assert_eq!(parse_traceparent(&header), Some((t, s)));
        }
    }
}

/// One arrival as the adapters hand it over: the eleven fields every
/// adapter gives, then the two format 2 added, which older adapters leave
/// out (see `NativeProbe::record_arrivals`).
pub struct ArrivalRow<'py> {
    id: Bound<'py, PyString>,
    external: Option<String>,
    traceparent: Option<String>,
    prompt: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    max_tokens: Option<u32>,
    logprobs: Option<i64>,
    seed: Option<u64>,
    at: Option<u64>,
    prompt_hash: Option<u64>,
    trace_top_k: Option<u32>,
}

impl<'py> FromPyObject<'py> for ArrivalRow<'py> {
    fn extract_bound(ob: &Bound<'py, PyAny>) -> PyResult<Self> {
        let t = ob.downcast::<PyTuple>()?;
        let n = t.len();
        if n != 11 && n != 13 {
            return Err(PyValueError::new_err(format!(
                "an arrival is a tuple of 11 or 13 fields, not {n}"
            )));
        }
        let extra = |i: usize| -> PyResult<Bound<'py, PyAny>> {
            if i < n {
                t.get_item(i)
            } else {
                Ok(t.py().None().into_bound(t.py()))
            }
        };
        Ok(ArrivalRow {
            id: t.get_item(0)?.downcast_into::<PyString>()?,
            external: t.get_item(1)?.extract()?,
            traceparent: t.get_item(2)?.extract()?,
            prompt: t.get_item(3)?.extract()?,
            temperature: t.get_item(4)?.extract()?,
            top_p: t.get_item(5)?.extract()?,
            top_k: t.get_item(6)?.extract()?,
            max_tokens: t.get_item(7)?.extract()?,
            logprobs: t.get_item(8)?.extract()?,
            seed: t.get_item(9)?.extract()?,
            at: t.get_item(10)?.extract()?,
            prompt_hash: extra(11)?.extract()?,
            trace_top_k: extra(12)?.extract()?,
        })
    }
}

/// FNV-1a (64 bits) of a prompt's token ids (a list or array of ints), as the
/// arrival record holds it; None when they are not all unsigned 32-bit ints.
#[pyfunction]
pub fn prompt_hash(ids: &Bound<'_, PyAny>) -> Option<u64> {
    let mut v = Vec::new();
    extend_u32(ids, &mut v).ok()?;
    Some(probe_core::prompt::prompt_hash(&v))
}

/// Whether a prompt with this hash is among the fraction `rate` (0 to 1) whose
/// top-K the trace captures; the same answer in every process.
#[pyfunction]
pub fn topk_sampled(hash: u64, rate: f64) -> bool {
    probe_core::prompt::topk_sampled(hash, rate)
}
