//! What is kept of one process directory as it is followed: the records a
//! judgement needs, a few numbers per request in flight, and the rule that
//! forgets the rest ([`LiveProcess::trim`]).

use super::figures::ProcessFigures;
use super::LiveOptions;
use crate::warmup::Warmup;
use probe_core::event::{Record, RequestArrival};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Per-request numbers kept while it is in flight.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct InFlight {
    /// Exit of its last token (0 before the first).
    pub(super) last_exit_ns: u64,
    /// First step it was scheduled in (its start), for what is kept.
    pub(super) first_step_ns: Option<u64>,
    /// Its arrival, or the end of the last step it was in.
    pub(super) last_seen_ns: u64,
    /// Its TTFT was judged.
    pub(super) ttft_done: bool,
    /// When it finished (engine clock), once it has.
    pub(super) finish_ns: Option<u64>,
    /// Its finish was handed out by a tick.
    pub(super) handed_out: bool,
}

impl InFlight {
    pub(super) fn running(&self) -> bool {
        self.finish_ns.is_none()
    }
}

/// A request not seen in a step for this long, without a finish (its finish
/// record was dropped), is forgotten: it would hold the window back forever.
pub(super) const STALE_NS: u64 = 600_000_000_000;

/// One process directory as followed.
pub(super) struct LiveProcess {
    pub(super) dir: PathBuf,
    pub(super) figures: ProcessFigures,
    /// Records outside time, the latest of each kind.
    pub(super) header: Option<Record>,
    pub(super) info: Option<Record>,
    /// Arrivals of requests in flight or in kept steps, by key.
    pub(super) arrivals: HashMap<u32, RequestArrival>,
    /// Steps, finishes and emits, in file order.
    pub(super) window: VecDeque<Record>,
    pub(super) window_steps: usize,
    /// Requests in flight (and finished ones not yet handed out), by key.
    pub(super) requests: HashMap<u32, InFlight>,
    /// End of the newest step judged.
    pub(super) judged_until_ns: u64,
    /// End of the newest step read (of the newest emit, for a frontend).
    pub(super) newest_ns: u64,
    /// When `newest_ns` last moved, by the watcher's clock: a process that
    /// went quiet has written all it will for now.
    pub(super) advanced_at: Option<Instant>,
    /// The warm-up, once the process's first steps have shown it.
    pub(super) warmup: Option<Warmup>,
    pub(super) warmup_settled: bool,
    /// Steps dropped past `max_steps` (answers of old requests cut short).
    pub(super) evicted_steps: u64,
}

impl LiveProcess {
    pub(super) fn new(dir: &Path) -> LiveProcess {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LiveProcess {
            dir: dir.to_path_buf(),
            figures: ProcessFigures::new(name),
            header: None,
            info: None,
            arrivals: HashMap::new(),
            window: VecDeque::new(),
            window_steps: 0,
            requests: HashMap::new(),
            judged_until_ns: 0,
            newest_ns: 0,
            advanced_at: None,
            warmup: None,
            warmup_settled: false,
            evicted_steps: 0,
        }
    }

    pub(super) fn is_engine(&self) -> bool {
        self.figures.steps > 0
    }

    pub(super) fn ingest(&mut self, record: Record, now: Instant) {
        let before = self.newest_ns;
        self.take(record);
        if self.newest_ns > before {
            self.advanced_at = Some(now);
        }
    }

    pub(super) fn take(&mut self, record: Record) {
        let f = &mut self.figures;
        match record {
            Record::Header(ref h) => {
                if f.host.is_empty() {
                    f.host.clone_from(&h.host);
                }
                if f.role.is_empty() {
                    f.role.clone_from(&h.role);
                }
                if self.header.is_none() {
                    self.header = Some(record);
                }
            }
            Record::Process(ref info) => {
                f.engine.clone_from(&info.engine);
                f.engine_version.clone_from(&info.engine_version);
                if !info.role.is_empty() {
                    f.role.clone_from(&info.role);
                }
                self.info = Some(record);
            }
            Record::Arrival(a) => {
                // Every segment repeats the arrivals in flight: count once.
                if let std::collections::hash_map::Entry::Vacant(slot) = self.requests.entry(a.req)
                {
                    f.arrived += 1;
                    slot.insert(InFlight {
                        last_seen_ns: a.arrival_ns,
                        ..InFlight::default()
                    });
                    self.arrivals.insert(a.req, a);
                }
            }
            Record::Step(ref s) => {
                f.steps += 1;
                f.tokens += s.tokens.len() as u64;
                f.step_time.observe_ns(s.end_ns.saturating_sub(s.start_ns));
                self.newest_ns = self.newest_ns.max(s.end_ns);
                for b in &s.batch {
                    let r = self.requests.entry(b.req).or_default();
                    r.first_step_ns.get_or_insert(s.start_ns);
                    r.last_seen_ns = s.end_ns;
                }
                // The step says who finished in it: enough when the finish
                // record itself was dropped.
                for key in &s.finished {
                    if let Some(r) = self.requests.get_mut(key) {
                        r.finish_ns.get_or_insert(s.end_ns);
                    }
                }
                if s.tokens.check().is_ok() {
                    for t in s.tokens.iter() {
                        let r = self.requests.entry(t.req).or_default();
                        if r.last_exit_ns > 0 {
                            f.itl.observe_ns(s.end_ns.saturating_sub(r.last_exit_ns));
                        }
                        r.last_exit_ns = s.end_ns;
                    }
                }
                self.window_steps += 1;
                self.window.push_back(record);
            }
            Record::Finish(ref fin) => {
                f.finished += 1;
                self.requests.entry(fin.req).or_default().finish_ns = Some(fin.time_ns);
                self.window.push_back(record);
            }
            Record::Emit(ref batch) => {
                f.emitted += batch.emits.iter().map(|e| u64::from(e.count)).sum::<u64>();
                if let Some(t) = batch.emits.iter().map(|e| e.time_ns).max() {
                    self.newest_ns = self.newest_ns.max(t);
                }
                self.window.push_back(record);
            }
            Record::Drops(d) => {
                if d.records() >= f.drops.records() {
                    f.drops = d;
                }
            }
            Record::SegmentsRemoved(s) => f.segments_removed = u64::from(s.before),
            Record::AdapterErrors(_) => {}
        }
    }

    /// When the newest `steps` steps kept began (0 when fewer are kept).
    fn window_start(&self, steps: usize) -> u64 {
        self.window
            .iter()
            .rev()
            .filter_map(|r| match r {
                Record::Step(s) => Some(s.start_ns),
                _ => None,
            })
            .nth(steps.saturating_sub(1))
            .unwrap_or(0)
    }

    /// The records kept, in an order the loader folds as it would the files.
    pub(super) fn records(&self) -> impl Iterator<Item = Record> + '_ {
        let mut arrivals: Vec<&RequestArrival> = self.arrivals.values().collect();
        arrivals.sort_by_key(|a| (a.arrival_ns, a.req));
        self.header
            .iter()
            .chain(self.info.iter())
            .cloned()
            .chain(arrivals.into_iter().cloned().map(Record::Arrival))
            .chain(self.window.iter().cloned())
    }

    /// Forget what no judgement needs any more: steps older than both the
    /// window and the oldest request in flight (past `max_steps`, the oldest
    /// steps whatever they hold), then requests that finished before the
    /// oldest step kept. `horizon_ns` bounds a frontend's records.
    pub(super) fn trim(&mut self, options: &LiveOptions, horizon_ns: Option<u64>) {
        let newest = self.newest_ns;
        self.requests
            .retain(|_, r| !(r.running() && r.last_seen_ns.saturating_add(STALE_NS) < newest));
        // Steps are kept back to the first of the oldest request not yet
        // handed out (its TTFT and span need every token): finished ones
        // until they settle, running ones while they are seen in the window's
        // steps — one that is not (its finish record was dropped, or it
        // waits preempted) must not hold every step since.
        let window_start = self.window_start(options.window_steps);
        let oldest_running = self
            .requests
            .values()
            .filter(|r| !r.handed_out && (!r.running() || r.last_seen_ns >= window_start))
            .filter_map(|r| r.first_step_ns)
            .min();
        while let Some(front) = self.window.front() {
            let time = record_time(front);
            let drop = if self.is_engine() {
                let past_window = self.window_steps > options.window_steps;
                let before_running = oldest_running.is_none_or(|t| time < t);
                let over_cap = self.window_steps > options.max_steps;
                over_cap || (past_window && before_running)
            } else {
                horizon_ns.is_some_and(|h| time < h)
            };
            if !drop {
                break;
            }
            if matches!(front, Record::Step(_)) {
                if self.window_steps > options.max_steps {
                    self.evicted_steps += 1;
                }
                self.window_steps -= 1;
            }
            self.window.pop_front();
        }
        let kept_from = self
            .window
            .front()
            .map_or(self.newest_ns, record_time)
            .min(horizon_ns.unwrap_or(u64::MAX));
        // A finished request goes once handed out and older than
        // everything kept.
        self.requests
            .retain(|_, r| !(r.handed_out && r.finish_ns.is_some_and(|f| f < kept_from)));
        let requests = &self.requests;
        self.arrivals.retain(|k, _| requests.contains_key(k));
        self.figures.running = self.requests.values().filter(|r| r.running()).count();
    }
}

/// The time a kept record is about.
pub(super) fn record_time(r: &Record) -> u64 {
    r.time_span().map_or(0, |(from, _)| from)
}
