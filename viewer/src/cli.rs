//! Command-line parsing: strings in, a plain [`Command`] out, so tests can
//! check parsing without running anything.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use toktrace_analyzer::select::TimeSpec;

/// toktrace: token-level traces of LLM inference engines.
///
/// Record a trace by installing the `toktrace` Python package into the server's
/// environment and setting TOKTRACE_DIR; then point these commands at that
/// directory. DIR may be the trace directory, one process directory inside it,
/// or a single segment file.
///
/// Start with `toktrace summary DIR`, then `toktrace requests DIR --sort max-itl`
/// to find the worst requests, `toktrace interference DIR --request ID` for whose
/// work stalled one of them and `toktrace tokens DIR --request ID` for its
/// token-by-token timeline, or `toktrace view DIR --request ID` to explore it
/// in the terminal viewer. ID is the client-visible request id, the engine's
/// internal id or the W3C trace id. Add --json for stable JSON (documented in
/// docs/analysis.md).
///
/// Before deploying, `toktrace doctor` (run through the Python package, in the
/// server's environment) says whether the installed engine will be traced.
///
/// Exit codes: 0 success; 1 the trace could not be read (missing, not a trace,
/// unsupported format version) or the output could not be written; 2 bad
/// command line; 3 no request (or more than one) answers to the given ID.
#[derive(Debug, Parser, PartialEq)]
#[command(name = "toktrace", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand, PartialEq)]
pub enum Command {
    /// The whole trace at a glance: processes, throughput, latency spread,
    /// stalls, the worst offenders, accuracy flags, losses and read warnings.
    Summary {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Print stable JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        analysis: AnalysisArgs,
    },
    /// One line per request with its latency metrics, interference and flags.
    Requests {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Order by this, worst first (arrival: oldest first).
        #[arg(long, value_enum, default_value_t = SortKey::Arrival)]
        sort: SortKey,
        /// Only the N slowest requests by their largest inter-token gap
        /// (shorthand for --sort max-itl --limit N).
        #[arg(long, value_name = "N")]
        slowest: Option<usize>,
        /// Show at most this many requests.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only requests whose largest inter-token gap is at least this long.
        #[arg(long, value_name = "MS")]
        min_itl_ms: Option<f64>,
        /// Only requests delayed by other requests' work.
        #[arg(long)]
        has_interference: bool,
        /// Only requests carrying this flag (e.g. special_token_in_output).
        #[arg(long, value_name = "NAME")]
        flag: Option<String>,
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        analysis: AnalysisArgs,
    },
    /// Every generated token of one request: timing, batch, logprob, rank,
    /// top-K candidates and who delayed it.
    Tokens {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Request id (client-visible or internal) or trace id.
        #[arg(long, value_name = "ID")]
        request: String,
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        analysis: AnalysisArgs,
    },
    /// Whose work stalled whom: the offender ranking of the trace, or with
    /// --request the slow tokens of one request with their culprits.
    ///
    /// A token's excess is its gap minus what the trace's own step-time model
    /// expects (a decode-only step of its batch plus the usual pause between
    /// steps); it is shared among the requests whose prefill ran in its step,
    /// or in the steps it sat out, by the work they added.
    Interference {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Request id (client-visible or internal) or trace id.
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// Show at most this many offenders or slow tokens.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        analysis: AnalysisArgs,
    },
    /// Write what an incident review needs: tables, a timeline or a report.
    ///
    /// Formats:
    ///   parquet, ipc, csv  one file per frame (steps, slices, tokens, requests,
    ///                      interference) in the --out directory; column names
    ///                      carry their units. Parquet holds the trace's metadata
    ///                      (engines, models, clock anchors, step models) under
    ///                      the key-value metadata key `toktrace`; `ipc` (Arrow,
    ///                      Feather v2) is what `toktrace.load()` reads.
    ///                      With --dataset ROOT instead of --out, parquet adds
    ///                      the traces to a fleet dataset: ROOT/TABLE/
    ///                      day=YYYY-MM-DD/host=H/CAPTURE-PART.parquet, every
    ///                      row with its capture_id, engine, engine_version and
    ///                      model; only what is new since the last export is
    ///                      added (run it periodically; a request is added once
    ///                      it has finished). See docs/fleet.md.
    ///   perfetto           one protobuf trace file for ui.perfetto.dev: engine
    ///                      steps with counters, one track per request with its
    ///                      tokens, gaps and culprits.
    ///   html               one self-contained page (no network): key numbers,
    ///                      batch size and step time over time, TTFT and ITL
    ///                      distributions, slowest requests with culprits,
    ///                      offenders, accuracy flags.
    ///   otlp               one OpenTelemetry span per request, sent to the
    ///                      collector at --endpoint (--protocol grpc|http):
    ///                      GenAI semantic-convention attributes, LoongSuite
    ///                      token-level arrays, toktrace's findings, a
    ///                      `toktrace.stall` event per stalled token; parented
    ///                      under the request's W3C trace when it had one.
    ///
    /// --from/--to take seconds from the trace start (90, 1.5s, 250ms) or an
    /// RFC 3339 time (2026-11-23T14:03:10Z). --request (repeatable) keeps those
    /// requests; without a window, the window becomes their lifetimes.
    ///
    /// Examples:
    ///   toktrace export TRACE --format parquet --out review/
    ///   toktrace export /var/tmp/toktrace/* --format parquet --dataset /shared/fleet
    ///   toktrace export TRACE --format perfetto --out slow.pftrace --request cmpl-42
    ///   toktrace export TRACE --format csv --out window/ --from 60s --to 90s
    ///   toktrace export TRACE --format html --out incident.html
    ///   toktrace export TRACE --format otlp --endpoint http://localhost:4317
    #[command(verbatim_doc_comment)]
    Export {
        /// Trace directory, process directory or segment file; several only
        /// with --dataset (each one a capture).
        #[arg(required = true, num_args = 1..)]
        dirs: Vec<PathBuf>,
        /// File format.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output: a directory for parquet/ipc/csv (created if missing), a file
        /// for perfetto/html; not for otlp.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// The fleet dataset to add the traces to (parquet only; created if
        /// missing). Re-running adds only what is new.
        #[arg(long, value_name = "ROOT", conflicts_with_all = ["out", "endpoint", "from", "to", "requests"])]
        dataset: Option<PathBuf>,
        /// OTLP collector to send spans to (otlp only), e.g.
        /// http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP).
        #[arg(long, value_name = "URL", conflicts_with = "out")]
        endpoint: Option<String>,
        /// OTLP transport.
        #[arg(long, value_enum, default_value_t = OtlpProtocol::Grpc, requires = "endpoint")]
        protocol: OtlpProtocol,
        /// Send to an --endpoint that is not on this machine. Spans hold what
        /// the model answered, and this build speaks plain http: without this
        /// flag only loopback addresses are accepted.
        #[arg(long, requires = "endpoint")]
        allow_remote_http: bool,
        /// Start of the window.
        #[arg(long, value_name = "T")]
        from: Option<TimeSpec>,
        /// End of the window.
        #[arg(long, value_name = "T")]
        to: Option<TimeSpec>,
        /// Only this request (external id, internal id or trace id); repeatable.
        #[arg(long = "request", value_name = "ID")]
        requests: Vec<String>,
        #[command(flatten)]
        analysis: AnalysisArgs,
    },
    /// Fleet questions over a dataset written by `export --dataset`,
    /// answered in place by the embedded engine (polars, lazy: only the
    /// partitions and columns a query needs are read).
    ///
    /// Questions (one of):
    ///   --worst-itl      the requests with the worst p99 inter-token latency,
    ///                    and the engine, release, host and capture they ran in
    ///   --offenders      the requests whose work delayed others' tokens most
    ///   --stalls         stalls, interference and the worst p99 ITL per --by
    ///                    (model, engine-version, host or day)
    ///   --sql QUERY      any SQL over the tables steps, slices, tokens,
    ///                    requests, interference (columns: docs/fleet.md)
    ///
    /// The named questions are SQL files that DuckDB and Spark run as they are
    /// (`--show-sql` prints the one that would run; the Python package's
    /// `toktrace.fleet` runs them there). `day` and `host` are text.
    ///
    /// Examples:
    ///   toktrace fleet /shared/fleet --worst-itl --from 2026-12-01
    ///   toktrace fleet /shared/fleet --stalls --by engine-version --json
    ///   toktrace fleet /shared/fleet --sql "SELECT host, count(*) AS steps FROM steps GROUP BY host"
    #[command(verbatim_doc_comment)]
    #[command(group(clap::ArgGroup::new("question").required(true).args(["worst_itl", "offenders", "stalls", "sql"])))]
    Fleet {
        /// The dataset's root directory.
        root: PathBuf,
        /// The requests with the worst p99 inter-token latency.
        #[arg(long)]
        worst_itl: bool,
        /// The requests that delayed others the most.
        #[arg(long)]
        offenders: bool,
        /// Stalls and interference per group (see --by).
        #[arg(long)]
        stalls: bool,
        /// The group of --stalls.
        #[arg(long, value_enum, default_value_t = StallsBy::Model)]
        by: StallsBy,
        /// Run this SQL instead of a named question.
        #[arg(long, value_name = "QUERY")]
        sql: Option<String>,
        /// First day (UTC, YYYY-MM-DD) of the captures asked about.
        #[arg(long, value_name = "DAY")]
        from: Option<String>,
        /// Last day (UTC, YYYY-MM-DD) of the captures asked about.
        #[arg(long, value_name = "DAY")]
        to: Option<String>,
        /// Rows at most, for --worst-itl and --offenders.
        #[arg(long, value_name = "N", default_value_t = 20)]
        limit: usize,
        /// Print a JSON array of rows instead of a table.
        #[arg(long)]
        json: bool,
        /// Print the SQL that would run, and stop.
        #[arg(long)]
        show_sql: bool,
    },
    /// Follow a trace while the engine writes it: each stall printed with its
    /// culprits as it happens, a one-line summary kept fresh on stderr, and
    /// optionally Prometheus metrics and OTLP spans.
    ///
    /// Run it beside the engine, in its own process (never inside the
    /// server): it only reads TRACE_DIR. It follows new process directories
    /// (an engine restart, a second replica), new segments, growing tails and
    /// segments the disk budget deletes. A stall is a token whose gap exceeds
    /// what the step model expects by more than max(the request's usual gap so
    /// far, 1 ms); its culprits are the requests whose prefill filled its step
    /// or the steps it sat out. Memory stays bounded over hours: what is kept
    /// is the last --window-steps steps of each engine process, back to the
    /// first step of the oldest request still running (at most --max-steps).
    ///
    /// --prometheus ADDR serves /metrics (per process: steps, tokens, probe
    /// drops, TTFT / inter-token / step-time histograms, stalls, interference
    /// seconds by cause; names in docs/live.md). --otlp URL sends each
    /// finished request's span (those of `export --format otlp`) as it
    /// finishes.
    ///
    /// Examples:
    ///   toktrace watch /var/log/toktrace
    ///   toktrace watch /var/log/toktrace --prometheus 0.0.0.0:9464 --json > stalls.jsonl
    ///   toktrace watch /var/log/toktrace --otlp http://localhost:4318 --protocol http
    ///
    /// Exit codes: 0 stopped by --exit-when-idle or --once; 1 TRACE_DIR
    /// missing or unreadable, a segment of an unsupported format, the
    /// metrics address taken; 2 bad command line.
    #[command(verbatim_doc_comment)]
    Watch {
        /// The trace directory the engine writes (TOKTRACE_DIR), or one
        /// process directory; it must exist, it may still be empty.
        dir: PathBuf,
        /// Print each stall as a JSON object on its own line (fields in
        /// docs/live.md) instead of text.
        #[arg(long)]
        json: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        prometheus: Option<std::net::SocketAddr>,
        /// Send each finished request's span to this OTLP collector, e.g.
        /// http://localhost:4317 (gRPC) or http://localhost:4318 (HTTP).
        #[arg(long, value_name = "URL")]
        otlp: Option<String>,
        /// OTLP transport.
        #[arg(long, value_enum, default_value_t = OtlpProtocol::Grpc, requires = "otlp")]
        protocol: OtlpProtocol,
        /// Send to an --otlp collector that is not on this machine (spans
        /// hold what the model answered; this build speaks plain http).
        #[arg(long, requires = "otlp")]
        allow_remote_http: bool,
        /// How often to look for new records, milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=10_000))]
        poll_ms: u64,
        /// Steps per engine process always kept (the step model's window).
        #[arg(long, value_name = "N", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(64..=1_000_000))]
        window_steps: u64,
        /// Steps per engine process kept at most.
        #[arg(long, value_name = "N", default_value_t = 32768, value_parser = clap::value_parser!(u64).range(64..=10_000_000))]
        max_steps: u64,
        /// Stop once nothing new was written for this many seconds (after
        /// something was): for scripts that watch one run.
        #[arg(long, value_name = "S")]
        exit_when_idle: Option<f64>,
        /// Read what is there, judge it, print, and stop.
        #[arg(long, conflicts_with = "exit_when_idle")]
        once: bool,
    },
    /// The terminal viewer: requests, one request's tokens, and the
    /// concurrency around a slow token (press ? inside for the keys).
    ///
    /// Opens on the requests list, or with --request straight on that
    /// request's tokens at its slowest token. Token text comes from the trace
    /// when it was captured, else from --tokenizer (a tokenizer.json or its
    /// directory), else from the model path the engine recorded.
    ///
    /// With --request on an indexed trace (see `toktrace index`), only the
    /// request's stretch of time is read: its list shows the requests of that
    /// window. A trace over 64 MB is indexed the first time it is opened so.
    View {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Request id (client-visible or internal) or trace id to open.
        #[arg(long, value_name = "ID")]
        request: Option<String>,
        /// tokenizer.json, or a directory holding one, for token text.
        #[arg(long, value_name = "PATH")]
        tokenizer: Option<PathBuf>,
        /// Read the whole trace: neither use the trace's index nor build one.
        #[arg(long)]
        no_index: bool,
    },
    /// Index a trace so that one request opens by reading only its stretch of time.
    ///
    /// Reads the whole trace once and writes DIR/.toktrace-index (or, when DIR
    /// is read-only, a file under ~/.cache/toktrace/index/): where each
    /// stretch of time lies in which segment, every request's ids and time
    /// window, and the trace's step models. `view --request`, `tokens
    /// --request` and `interference --request` then read only that window
    /// (same results as reading the whole trace). `view --request` builds the
    /// index by itself the first time on a trace over 64 MB. A trace that
    /// changed since (still being written) makes the index stale: it is then
    /// ignored, and rebuilt by the next `index` or `view --request`.
    Index {
        /// Trace directory (or one process directory).
        dir: PathBuf,
        /// Rebuild even when the index is current.
        #[arg(long)]
        force: bool,
    },
    /// What a trace holds: processes, segments, record counts, losses, read warnings.
    Info {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Print stable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The engine's iterations in order: duration, batch composition, tokens sampled.
    ///
    /// One line per step of every process that recorded steps. Times are
    /// milliseconds from the first step of that process.
    Steps {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
        /// Show at most this many steps (the slowest first with --slowest).
        #[arg(long)]
        limit: Option<usize>,
        /// Order by step duration, longest first.
        #[arg(long)]
        slowest: bool,
    },
    /// Every record of a trace as JSON lines, in file order (for debugging and scripts).
    ///
    /// Each line is {"process": DIR, "segment": INDEX, "offset": BYTE, "record": {KIND: {...}}}.
    /// Timestamps are the probe's CLOCK_MONOTONIC nanoseconds; each segment's Header record
    /// carries the anchor that converts them to unix time.
    Dump {
        /// Trace directory, process directory or segment file.
        dir: PathBuf,
    },
}

/// Options every analysis command shares.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct AnalysisArgs {
    /// Decode deadline of the fluidity-index (Etalon's D_d); default: 5 × the
    /// engine's median decode-only step in this trace.
    #[arg(long, value_name = "MS")]
    pub tbt_deadline_ms: Option<f64>,
    /// Count the requests that arrived during an engine's warm-up (its first,
    /// far slower steps) in the statistics and charts. By default they are
    /// listed, marked, and left out: their latency measures the engine's start.
    #[arg(long)]
    pub include_warmup: bool,
    /// The `low_confidence` flag: a token is unsure when its most likely
    /// candidate's probability is under this (0 to 1; needs recorded top-K).
    #[arg(long, value_name = "P", default_value_t = 0.25, value_parser = probability)]
    pub low_confidence_below: f32,
    /// The `low_confidence` flag: how many unsure tokens in a row make it.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub low_confidence_tokens: u32,
}

impl AnalysisArgs {
    /// The `low_confidence` thresholds given.
    pub fn low_confidence(&self) -> toktrace_analyzer::load::LowConfidence {
        toktrace_analyzer::load::LowConfidence {
            below: self.low_confidence_below,
            tokens: self.low_confidence_tokens,
        }
    }
}

fn probability(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability between 0 and 1")),
    }
}

/// What `requests --sort` orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Arrival time, oldest first.
    Arrival,
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
    /// 99th percentile inter-token gap.
    ItlP99,
    /// Largest inter-token gap.
    MaxItl,
    /// Delay caused by other requests.
    Interference,
    /// Arrival to last token.
    E2e,
}

/// What `fleet` is asked (made from its flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetQuestion {
    /// `--worst-itl`.
    WorstItl,
    /// `--offenders`.
    Offenders,
    /// `--stalls`.
    Stalls,
    /// `--sql QUERY`.
    Sql(String),
}

/// The groups of `fleet --stalls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StallsBy {
    /// The served model.
    Model,
    /// The engine's release.
    EngineVersion,
    /// The host.
    Host,
    /// The capture's start day.
    Day,
}

impl StallsBy {
    /// The dataset column.
    pub fn column(self) -> &'static str {
        match self {
            StallsBy::Model => "model",
            StallsBy::EngineVersion => "engine_version",
            StallsBy::Host => "host",
            StallsBy::Day => "day",
        }
    }
}

/// Formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Parquet (zstd), one file per frame, trace metadata in its key-value metadata.
    Parquet,
    /// Arrow IPC (Feather v2), one file per frame.
    Ipc,
    /// CSV with a header row, one file per frame.
    Csv,
    /// A Perfetto trace (protobuf) for ui.perfetto.dev.
    Perfetto,
    /// A self-contained HTML report with charts.
    Html,
    /// OpenTelemetry spans sent to a collector (--endpoint).
    Otlp,
}

/// OTLP transports of `export --format otlp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// gRPC (collector port 4317).
    Grpc,
    /// HTTP with protobuf bodies (collector port 4318, path /v1/traces).
    Http,
}

/// Parse arguments (the first is the program name).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let cli = parse(["toktrace", "info", "/tmp/t", "--json"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Info {
                dir: "/tmp/t".into(),
                json: true
            }
        );
    }

    #[test]
    fn parses_view() {
        let cli = parse(["toktrace", "view", "/tmp/t", "--request", "r1"]).unwrap();
        assert_eq!(
            cli.command,
            Command::View {
                dir: "/tmp/t".into(),
                request: Some("r1".into()),
                tokenizer: None,
                no_index: false
            }
        );
    }

    #[test]
    fn rejects_missing_dir() {
        let err = parse(["toktrace", "info"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }
}
