//! Probe-core benchmarks (criterion), each side by side with its baseline.
//!
//! - `record/*`: what an engine thread pays per step: build a step record from
//!   the engine's column slices (the copies the Python binding makes) and push
//!   it into the ring, at 1, 64 and 256 tokens with top-5, with one and two
//!   recording threads; a consumer thread empties the ring as the drain would.
//!   Baseline: a call to an empty function taking the same slices.
//! - `drain/*`: what the drain thread sustains: encode, frame and write steps
//!   of 256 tokens to a segment on disk, with and without top-5.
//!
//! Bytes per token on disk are printed before the drain group runs.
//!
//! Run: `cargo bench -p probe-core --bench probe` (figures go in docs/performance.md).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use probe_core::event::{BatchEntry, Record, Step, TokenRun};
use probe_core::ring::Ring;
use probe_core::synth;
use probe_core::writer::{ProcessIdentity, SegmentWriter, WriterConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The columns an engine hands over for one step, as slices.
struct EngineColumns {
    reqs: Vec<u32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    ranks: Vec<u32>,
    top_ids: Vec<u32>,
    top_logprobs: Vec<f32>,
}

fn engine_columns(batch: u32, k: u8) -> EngineColumns {
    let s = synth::step(1, batch, Some(k));
    EngineColumns {
        reqs: (0..batch).collect(),
        ids: s.tokens.ids.0,
        logprobs: s.tokens.logprobs.0,
        ranks: s.tokens.ranks.0,
        top_ids: s.tokens.top_ids.0,
        top_logprobs: s.tokens.top_logprobs.0,
    }
}

/// Fill a (recycled) step from the engine's slices: the binding's work.
#[inline]
fn fill_step(mut s: Step, step_id: u64, c: &EngineColumns, k: u8) -> Step {
    s.step_id = step_id;
    s.start_ns = step_id;
    s.end_ns = step_id + 1;
    s.running = c.reqs.len() as u32;
    s.batch.extend(c.reqs.iter().map(|&req| BatchEntry {
        req,
        decode_tokens: 1,
        ..Default::default()
    }));
    s.tokens.runs.extend(c.reqs.iter().map(|&req| TokenRun {
        req,
        first_index: step_id as u32,
        count: 1,
        top_k: Some(k),
    }));
    s.tokens.ids.0.extend_from_slice(&c.ids);
    s.tokens.logprobs.0.extend_from_slice(&c.logprobs);
    s.tokens.ranks.0.extend_from_slice(&c.ranks);
    s.tokens.top_ids.0.extend_from_slice(&c.top_ids);
    s.tokens.top_logprobs.0.extend_from_slice(&c.top_logprobs);
    s
}

#[inline(never)]
fn empty_call(c: &EngineColumns) {
    black_box(c);
}

/// A consumer that empties the ring as fast as it can, like an idle drain.
fn spawn_consumer(ring: Arc<Ring>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            while let Some(r) = ring.pop() {
                ring.recycle(black_box(r));
            }
            std::thread::yield_now();
        }
    })
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for batch in [1u32, 64, 256] {
        let cols = Arc::new(engine_columns(batch, 5));
        group.throughput(Throughput::Elements(u64::from(batch)));
        group.bench_with_input(BenchmarkId::new("empty_fn", batch), &cols, |b, cols| {
            b.iter(|| empty_call(cols))
        });
        for threads in [1usize, 2] {
            let ring = Arc::new(Ring::new(65_536, 1 << 30));
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = spawn_consumer(Arc::clone(&ring), Arc::clone(&stop));
            let id = BenchmarkId::new(format!("step_top5_{threads}thr"), batch);
            group.bench_with_input(id, &cols, |b, cols| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads as u64);
                    let start = Instant::now();
                    // Every thread records `per_thread` steps; the figure is the
                    // wall time per step of one thread while the others run too.
                    std::thread::scope(|s| {
                        for _ in 0..threads {
                            let ring = &ring;
                            s.spawn(move || {
                                for i in 0..per_thread {
                                    let step = fill_step(ring.take_step(), i, cols, 5);
                                    let _ = ring.try_push(Record::Step(step));
                                }
                            });
                        }
                    });
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / per_thread.max(1) as f64)
                })
            });
            stop.store(true, Ordering::Relaxed);
            consumer.join().ok();
            let d = ring.drops();
            if d.records() > 0 {
                eprintln!(
                    "note: record/{threads}thr/{batch}: {} steps dropped (ring full)",
                    d.records()
                );
            }
        }
    }
    group.finish();
}

fn encoded_bytes_per_token(batch: u32, top_k: Option<u8>) -> f64 {
    let mut buf = Vec::new();
    let steps = 100;
    for i in 0..steps {
        probe_core::frame::encode_frame(&Record::Step(synth::step(i, batch, top_k)), &mut buf)
            .expect("encode");
    }
    buf.len() as f64 / (steps * u64::from(batch)) as f64
}

fn drain(c: &mut Criterion) {
    for (label, k) in [("top5", Some(5u8)), ("no_logprobs", None)] {
        eprintln!(
            "bytes per token on disk, batch 256, {label}: {:.1}",
            encoded_bytes_per_token(256, k)
        );
    }
    let mut group = c.benchmark_group("drain");
    group.measurement_time(Duration::from_secs(4));
    let batch = 256u32;
    group.throughput(Throughput::Elements(u64::from(batch)));
    // The page cache of a tmpfs shows the writer's own cost; the disk adds
    // whatever this machine's storage does under sustained writes.
    let targets = [
        ("memfs", std::path::PathBuf::from("/dev/shm")),
        ("disk", std::env::temp_dir()),
    ];
    for (label, k) in [("top5", Some(5u8)), ("no_logprobs", None)] {
        for (target, root) in &targets {
            if !root.is_dir() {
                continue;
            }
            let dir = tempfile::tempdir_in(root).expect("tempdir");
            let mut config = WriterConfig::new(dir.path());
            config.segment_bytes = 64 << 20;
            config.disk_budget_bytes = 256 << 20;
            let mut writer = SegmentWriter::new(config, ProcessIdentity::current());
            let records: Vec<Record> = (0..64)
                .map(|i| Record::Step(synth::step(i, batch, k)))
                .collect();
            let id = BenchmarkId::new(format!("write_{label}_{target}"), batch);
            group.bench_function(id, |b| {
                let mut i = 0usize;
                b.iter(|| {
                    writer.append(&records[i % records.len()]).expect("append");
                    i += 1;
                    if writer.pending_bytes() >= 4 << 20 {
                        writer.flush().expect("flush");
                    }
                })
            });
            writer.finish().expect("finish");
        }
    }
    group.finish();
}

criterion_group!(benches, record, drain);
criterion_main!(benches);
