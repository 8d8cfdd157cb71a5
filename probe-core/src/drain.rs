//! The probe: a ring the engine records into and the drain thread that empties
//! it into segment files.
//!
//! Loss policy: recording never blocks. A full ring drops the record and counts
//! it; a write that fails (disk full, unwritable directory) loses its batch and
//! counts it. The drain writes the cumulative counters in-band as soon as they
//! move, reports the first failure of an episode once through the error hook,
//! and retries the disk with a back-off, so the engine keeps running whatever
//! the disk does.
//!
//! Shutdown ([`Probe::shutdown`], or drop) asks the drain to write everything
//! queued and waits for it at most a bounded time, so an exiting server never
//! hangs on its tracer.

use crate::event::{DropCounts, Record};
use crate::ring::Ring;
use crate::writer::{ProcessIdentity, SegmentWriter, WriterConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Called with a one-line message when the drain hits trouble.
pub type ErrorHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Everything needed to start a probe.
#[derive(Clone)]
pub struct ProbeConfig {
    /// Where segments go.
    pub writer: WriterConfig,
    /// Ring slots (records).
    pub ring_slots: usize,
    /// Ring byte budget for the heap data queued records own.
    pub ring_bytes: usize,
    /// How long the drain sleeps when the ring is empty: at most how long a
    /// record waits in memory. Each wake-up is a context switch on a core the
    /// engine may be using, so it is long (fewer than two dozen a second);
    /// `Probe::wake` (request finishes), `flush` and shutdown cut it short.
    pub idle_wait: Duration,
    /// Back-off before retrying the disk after a failure.
    pub retry_after: Duration,
    /// Where error reports go (default: one line on stderr).
    pub on_error: ErrorHook,
}

impl ProbeConfig {
    /// Defaults: 64k slots, 256 MiB ring, 50 ms idle wait, 1 s retry back-off.
    pub fn new(root: impl Into<PathBuf>) -> ProbeConfig {
        ProbeConfig {
            writer: WriterConfig::new(root),
            ring_slots: 65_536,
            ring_bytes: 256 << 20,
            idle_wait: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
            on_error: Arc::new(|msg| eprintln!("toktrace: {msg}")),
        }
    }
}

/// What shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The drain finished in time and everything queued was handled.
    pub clean: bool,
    /// Final loss counters.
    pub drops: DropCounts,
}

struct Shared {
    ring: Ring,
    stop: AtomicBool,
    write_failed: AtomicU64,
    write_failed_tokens: AtomicU64,
    /// Drain loop iterations completed (each ends with a flush to the kernel).
    passes: AtomicU64,
}

/// A running probe. Cheap to record into from any thread.
pub struct Probe {
    shared: Arc<Shared>,
    dir: PathBuf,
    // The receiver sits in a mutex only so that `Probe` is `Sync`.
    drain: Option<(JoinHandle<()>, Mutex<mpsc::Receiver<()>>)>,
}

impl Probe {
    /// Start the drain thread. The process directory is created by the drain on
    /// its first write, so starting never touches the disk from the caller.
    pub fn start(config: ProbeConfig) -> std::io::Result<Probe> {
        Probe::start_with_ring(config, None)
    }

    /// Start a drain over records already queued in `ring` (tests use this to
    /// overflow a ring before any drain exists).
    pub fn start_with_ring(config: ProbeConfig, ring: Option<Ring>) -> std::io::Result<Probe> {
        let shared = Arc::new(Shared {
            ring: ring.unwrap_or_else(|| Ring::new(config.ring_slots, config.ring_bytes)),
            stop: AtomicBool::new(false),
            write_failed: AtomicU64::new(0),
            write_failed_tokens: AtomicU64::new(0),
            passes: AtomicU64::new(0),
        });
        let writer = SegmentWriter::new(config.writer.clone(), ProcessIdentity::current());
        let dir = writer.dir().to_path_buf();
        let (done_tx, done_rx) = mpsc::channel();
        let drain_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("toktrace-drain".into())
            .spawn(move || {
                Drain {
                    shared: drain_shared,
                    writer,
                    config,
                    written_drops: DropCounts::default(),
                    failing_since: None,
                }
                .run();
                let _ = done_tx.send(());
            })?;
        Ok(Probe {
            shared,
            dir,
            drain: Some((handle, Mutex::new(done_rx))),
        })
    }

    /// An empty step to fill and pass to [`Probe::record`]: recycled buffers
    /// when the drain has some to give back, so recording does not allocate.
    #[inline]
    pub fn take_step(&self) -> crate::event::Step {
        self.shared.ring.take_step()
    }

    /// Queue a record. Never blocks; `false` means it was dropped (and counted).
    #[inline]
    pub fn record(&self, record: Record) -> bool {
        self.shared.ring.try_push(record).is_ok()
    }

    /// This process's trace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loss counters so far.
    pub fn drops(&self) -> DropCounts {
        self.shared.drops()
    }

    /// Have the drain write what is queued now instead of at its next idle
    /// tick; returns at once.
    pub fn wake(&self) {
        if let Some((handle, _)) = &self.drain {
            handle.thread().unpark();
        }
    }

    /// Wait until everything recorded before the call has been handed to the
    /// kernel, at most `timeout`, without stopping the drain. Returns whether
    /// it got there in time.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some((handle, _)) = &self.drain else {
            return true;
        };
        let start = Instant::now();
        // Two full passes after this point: the first may have begun before our records.
        let target = self.shared.passes.load(Ordering::Acquire) + 2;
        loop {
            handle.thread().unpark();
            if self.shared.ring.is_empty() && self.shared.passes.load(Ordering::Acquire) >= target {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            thread::sleep(Duration::from_micros(200));
        }
    }

    /// Ask the drain to write everything queued, and wait for it at most `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> ShutdownReport {
        self.shared.stop.store(true, Ordering::Release);
        let mut clean = false;
        if let Some((handle, done)) = self.drain.take() {
            handle.thread().unpark();
            let finished = done
                .into_inner()
                .map(|rx| rx.recv_timeout(timeout).is_ok())
                .unwrap_or(false);
            if finished {
                clean = handle.join().is_ok();
            }
            // Otherwise the drain is left to finish on its own: never hang the host.
        }
        ShutdownReport {
            clean,
            drops: self.shared.drops(),
        }
    }

    /// Forget the drain without stopping it. For a forked child, where the
    /// parent's drain thread does not exist and must not be waited for.
    pub fn abandon(mut self) {
        self.drain = None;
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.drain.is_some() {
            self.shutdown(Duration::from_secs(5));
        }
    }
}

impl Shared {
    fn drops(&self) -> DropCounts {
        let mut d = self.ring.drops();
        d.write_failed = self.write_failed.load(Ordering::Relaxed);
        d.tokens += self.write_failed_tokens.load(Ordering::Relaxed);
        d
    }
}

/// Most records encoded before the batch is handed to the kernel.
const MAX_BATCH_BYTES: usize = 4 << 20;

struct Drain {
    shared: Arc<Shared>,
    writer: SegmentWriter,
    config: ProbeConfig,
    written_drops: DropCounts,
    failing_since: Option<Instant>,
}

impl Drain {
    fn run(mut self) {
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let mut took_any = false;
            while let Some(record) = self.shared.ring.pop() {
                took_any = true;
                if self.backing_off() {
                    self.lost(1, record.token_count());
                    self.shared.ring.recycle(record);
                    continue;
                }
                self.note_drops();
                self.append(&record);
                self.shared.ring.recycle(record);
                if self.writer.pending_bytes() >= MAX_BATCH_BYTES {
                    self.flush();
                }
            }
            self.note_drops();
            self.flush();
            self.shared.passes.fetch_add(1, Ordering::Release);
            if stopping {
                break;
            }
            if !took_any {
                thread::park_timeout(self.config.idle_wait);
            }
        }
        if self.failing_since.is_none() {
            if let Err(f) = self.writer.finish() {
                self.lost(f.records, f.tokens);
                (self.config.on_error)(&format!(
                    "closing trace segment in {}: {}",
                    self.writer.dir().display(),
                    f.error
                ));
            }
        }
    }

    fn backing_off(&self) -> bool {
        self.failing_since
            .is_some_and(|since| since.elapsed() < self.config.retry_after)
    }

    /// Write the counters in-band as soon as they move.
    fn note_drops(&mut self) {
        if self.backing_off() {
            return;
        }
        let now = self.shared.drops();
        if now != self.written_drops {
            self.writer.set_drops(now);
            self.append(&Record::Drops(now));
            self.written_drops = now;
        }
    }

    fn append(&mut self, record: &Record) {
        if let Err(f) = self.writer.append(record) {
            self.fail(f.error.to_string(), f.records, f.tokens);
        }
    }

    fn flush(&mut self) {
        if self.backing_off() {
            let (records, tokens) = self.writer.discard_batch();
            self.lost(records, tokens);
            return;
        }
        let flushed = self.writer.flush();
        if let Some(notice) = self.writer.take_notice() {
            (self.config.on_error)(&notice);
        }
        match flushed {
            Ok(()) => {
                if self.failing_since.take().is_some() {
                    (self.config.on_error)(&format!(
                        "writing to {} again; {} records lost meanwhile",
                        self.writer.dir().display(),
                        self.shared.write_failed.load(Ordering::Relaxed)
                    ));
                }
            }
            Err(f) => self.fail(f.error.to_string(), f.records, f.tokens),
        }
    }

    fn fail(&mut self, error: String, records: u64, tokens: u64) {
        self.lost(records, tokens);
        // The counters written so far may be lost with the batch: write them again.
        self.written_drops = DropCounts::default();
        if self.failing_since.is_none() {
            (self.config.on_error)(&format!(
                "cannot write trace to {}: {error}; recording continues, losses are counted",
                self.writer.dir().display()
            ));
        }
        self.failing_since = Some(Instant::now());
    }

    fn lost(&self, records: u64, tokens: u64) {
        self.shared
            .write_failed
            .fetch_add(records, Ordering::Relaxed);
        self.shared
            .write_failed_tokens
            .fetch_add(tokens, Ordering::Relaxed);
    }
}
