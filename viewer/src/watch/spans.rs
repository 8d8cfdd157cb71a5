//! Finished requests' spans to an OTLP collector, from a thread of their
//! own: a slow or absent collector never holds up the stall lines. At most
//! [`QUEUED`] batches wait; past that a batch is counted as failed, not
//! queued without bound.

use crate::cli::OtlpProtocol;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use toktrace_analyzer::data::RequestIx;
use toktrace_analyzer::select::Selection;
use toktrace_analyzer::Analysis;
use toktrace_exports::otlp::{self, Transport};

/// Batches waiting for the sender thread at most.
const QUEUED: usize = 8;

type Batch = (Analysis, Vec<RequestIx>);

/// The sending thread and its counts.
pub struct Sender {
    tx: Option<SyncSender<Batch>>,
    thread: Option<JoinHandle<()>>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Sender {
    /// Start sending to `url`.
    pub fn start(url: String, protocol: OtlpProtocol) -> anyhow::Result<Sender> {
        let transport = match protocol {
            OtlpProtocol::Grpc => Transport::Grpc,
            OtlpProtocol::Http => Transport::Http,
        };
        let (tx, rx) = sync_channel::<Batch>(QUEUED);
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, f) = (sent.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("toktrace-otlp".into())
            .spawn(move || {
                let mut reported = false;
                for (analysis, requests) in rx {
                    let n = requests.len() as u64;
                    let selection = Selection {
                        requests: Some(requests.into_iter().collect::<HashSet<_>>()),
                        ..Selection::default()
                    };
                    match otlp::send(&analysis, &selection, &url, transport, None) {
                        Ok(stats) => {
                            s.fetch_add(stats.spans, Ordering::Relaxed);
                        }
                        Err(e) => {
                            f.fetch_add(n, Ordering::Relaxed);
                            // Once: a collector that is down would flood the terminal.
                            if !reported {
                                eprintln!("toktrace watch: spans not sent ({e:#}); counting the rest in toktrace_watch_spans_failed_total");
                                reported = true;
                            }
                        }
                    }
                }
            })?;
        Ok(Sender {
            tx: Some(tx),
            thread: Some(thread),
            sent,
            failed,
        })
    }

    /// Hand a batch over; a full queue counts it as failed.
    pub fn send(&mut self, analysis: Analysis, requests: Vec<RequestIx>) {
        let n = requests.len() as u64;
        if let Some(tx) = &self.tx {
            match tx.try_send((analysis, requests)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.failed.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }

    /// (spans sent, spans given up) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Send what is queued, then stop.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
