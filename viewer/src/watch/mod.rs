//! `toktrace watch`: follow a trace while it is written and say what
//! happens as it happens. Reading is [`probe_core::follow`], judging is
//! [`toktrace_analyzer::live`]; this module is the loop that drives them and
//! what it tells people (stall lines, a status line), Prometheus
//! ([`metrics`], [`serve`]) and an OTLP collector ([`spans`]).

mod metrics;
mod serve;
mod spans;

use crate::cli::OtlpProtocol;
use anyhow::{Context, Result};
use probe_core::follow::Follower;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use toktrace_analyzer::live::{LiveOptions, LiveStall, LiveTrace};

/// What `toktrace watch` was asked.
#[derive(Debug, Clone)]
pub struct WatchArgs {
    /// The trace directory.
    pub dir: PathBuf,
    /// Stalls as JSON lines.
    pub json: bool,
    /// Serve /metrics here.
    pub prometheus: Option<SocketAddr>,
    /// Send finished requests' spans here.
    pub otlp: Option<String>,
    /// Over this transport.
    pub protocol: OtlpProtocol,
    /// Accept a collector on another machine.
    pub allow_remote_http: bool,
    /// Time between looks at the directory.
    pub poll: Duration,
    /// What is kept.
    pub window_steps: usize,
    /// At most.
    pub max_steps: usize,
    /// Stop after this much quiet (once something was written).
    pub exit_when_idle: Option<Duration>,
    /// One pass and stop.
    pub once: bool,
}

/// Ticks are spaced by five times their cost, never more than this: on a
/// starved machine a tick's wall time is mostly waiting for a core.
const MAX_TICK_SPACING: Duration = Duration::from_millis(500);

/// How often the status line is rewritten when stderr is not a terminal.
const STATUS_EVERY_LOGGED: Duration = Duration::from_secs(10);

/// Run the watch until stopped.
pub fn watch(args: WatchArgs) -> Result<()> {
    if let Some(url) = &args.otlp {
        toktrace_exports::otlp::check_endpoint(url, args.allow_remote_http)?;
    }
    let mut follower =
        Follower::new(&args.dir).with_context(|| format!("cannot watch {}", args.dir.display()))?;
    let options = LiveOptions {
        window_steps: args.window_steps,
        max_steps: args.max_steps.max(args.window_steps),
        ..LiveOptions::default()
    };
    let settle = Duration::from_nanos(options.settle_ns);
    let mut live = LiveTrace::new(options);
    let exposition: serve::Exposition = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = args.prometheus {
        let bound = serve::start(addr, exposition.clone())?;
        eprintln!("toktrace watch: metrics at http://{bound}/metrics");
    }
    let mut sender = match &args.otlp {
        Some(url) => Some(spans::Sender::start(url.clone(), args.protocol)?),
        None => None,
    };
    let mut watcher = metrics::WatcherFigures::default();
    let mut status = Status::new();
    let mut last_news: Option<Instant> = None;
    let mut next_tick: Option<Instant> = None;
    let mut out = std::io::stdout().lock();
    loop {
        let polled = follower
            .poll()
            .with_context(|| format!("reading {}", args.dir.display()))?;
        let mut now = Instant::now();
        watcher.bytes_read += polled.bytes;
        watcher.segments_missed += polled.segments_missed;
        watcher.read_warnings += polled.warnings.len() as u64;
        for w in &polled.warnings {
            status.clear();
            eprintln!("toktrace watch: {w}");
        }
        if !polled.records.is_empty() {
            last_news = Some(now);
        }
        for (dir, records) in polled.records {
            live.ingest(&dir, records.into_iter().map(|r| r.record), now);
        }
        let idle = last_news.is_some_and(|t| {
            args.exit_when_idle
                .is_some_and(|limit| now.saturating_duration_since(t) >= limit)
        });
        let stopping = args.once || idle;
        if stopping {
            // Nothing more is coming: judge and settle everything.
            live.close();
            now += settle + Duration::from_secs(1);
        }
        // Judging re-reads what is kept: after a tick that took d, the next
        // waits 4·d (at most MAX_TICK_SPACING), so a large window costs at
        // most a fifth of a core (records are still read meanwhile).
        if !stopping && next_tick.is_some_and(|t| Instant::now() < t) {
            std::thread::sleep(args.poll);
            continue;
        }
        let started = Instant::now();
        let tick = live.tick(sender.is_some(), now);
        next_tick = Some(started + (started.elapsed() * 5).min(MAX_TICK_SPACING));
        for stall in &tick.stalls {
            status.clear();
            let lag_ms = lag_ms(stall);
            print_stall(&mut out, stall, lag_ms, args.json)?;
        }
        out.flush()?;
        if let (Some(s), Some((analysis, finished))) = (&mut sender, tick.finished) {
            s.send(analysis, finished);
        }
        if let Some(s) = &sender {
            (watcher.spans_sent, watcher.spans_failed) = s.counts();
        }
        if args.prometheus.is_some() {
            let text = metrics::render(&live, &watcher);
            if let Ok(mut e) = exposition.lock() {
                *e = text;
            }
        }
        status.show(&live, &follower, &watcher, last_news.is_none());
        if stopping {
            status.clear();
            status.finish(&live);
            if let Some(s) = sender.take() {
                s.finish();
            }
            return Ok(());
        }
        if !polled.more {
            std::thread::sleep(args.poll);
        }
    }
}

/// How long after the step ended the stall was printed, by the wall clock
/// (the engine's host's and this one's: any difference between them adds in).
fn lag_ms(stall: &LiveStall) -> f64 {
    (i128::from(probe_core::clock::unix_ns()) - i128::from(stall.step_end_unix_ns)) as f64 / 1e6
}

fn print_stall(
    out: &mut impl Write,
    stall: &LiveStall,
    lag_ms: f64,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut v = serde_json::to_value(stall).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("lag_ms".into(), serde_json::json!(lag_ms));
        }
        return writeln!(out, "{v}");
    }
    let culprits: Vec<String> = stall
        .culprits
        .iter()
        .take(3)
        .map(|c| format!("{} {:.1} ms ({})", c.request, c.delay_ms, c.cause.name()))
        .collect();
    let more = stall.culprits.len().saturating_sub(3);
    let who = if culprits.is_empty() {
        "nobody's prefill explains it (engine hiccup or noise)".to_string()
    } else if more > 0 {
        format!("{} and {more} more", culprits.join(", "))
    } else {
        culprits.join(", ")
    };
    writeln!(
        out,
        "{} stall {} token {}: {:.1} ms gap, {:.1} ms over the model (step {}); culprits: {}",
        clock_time(stall.step_end_unix_ns),
        stall.request,
        stall.token_index,
        stall.gap_ms,
        stall.excess_ms,
        stall.step_id,
        who
    )
}

/// HH:MM:SS.mmm, UTC.
fn clock_time(unix_ns: u64) -> String {
    let ms = unix_ns / 1_000_000;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// The refreshing one-line summary on stderr.
struct Status {
    tty: bool,
    shown: bool,
    last: Option<Instant>,
    tokens_then: Option<(Instant, u64)>,
    rate: f64,
}

impl Status {
    fn new() -> Status {
        Status {
            tty: std::io::stderr().is_terminal(),
            shown: false,
            last: None,
            tokens_then: None,
            rate: 0.0,
        }
    }

    /// Wipe the status line so a stall line can take its place.
    fn clear(&mut self) {
        if self.tty && self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }

    fn show(
        &mut self,
        live: &LiveTrace,
        follower: &Follower,
        watcher: &metrics::WatcherFigures,
        waiting: bool,
    ) {
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(500)
        } else {
            STATUS_EVERY_LOGGED
        };
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        self.last = Some(now);
        let tokens: u64 = live.figures().map(|f| f.tokens).sum();
        if let Some((then, before)) = self.tokens_then {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                self.rate = tokens.saturating_sub(before) as f64 / secs;
            }
        }
        self.tokens_then = Some((now, tokens));
        let line = if waiting {
            "waiting for the engine to write a trace…".to_string()
        } else {
            let steps: u64 = live.figures().map(|f| f.steps).sum();
            let running: usize = live.figures().map(|f| f.running).sum();
            let stalls: u64 = live.figures().map(|f| f.stalls).sum();
            let dropped: u64 = live.figures().map(|f| f.drops.tokens).sum();
            format!(
                "{} processes · {steps} steps · {tokens} tokens ({:.0}/s) · {running} running · {stalls} stalls · {dropped} tokens dropped{}",
                follower.processes(),
                self.rate,
                if watcher.segments_missed > 0 {
                    format!(" · {} segments deleted unread", watcher.segments_missed)
                } else {
                    String::new()
                }
            )
        };
        if self.tty {
            eprint!("\r\x1b[K{line}");
            self.shown = true;
        } else {
            eprintln!("toktrace watch: {line}");
        }
    }

    /// The totals, once, when the watch stops by itself.
    fn finish(&self, live: &LiveTrace) {
        let steps: u64 = live.figures().map(|f| f.steps).sum();
        let tokens: u64 = live.figures().map(|f| f.tokens).sum();
        let stalls: u64 = live.figures().map(|f| f.stalls).sum();
        eprintln!("toktrace watch: stopped: {steps} steps, {tokens} tokens, {stalls} stalls");
    }
}
