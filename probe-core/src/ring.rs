//! The bounded, lock-free ring between the engine's threads and the drain.
//!
//! Loss policy first: the ring has a fixed number of slots and a byte budget
//! for the heap data its records own. A record that does not fit is dropped on
//! the spot and counted by cause; recording never blocks and never allocates
//! beyond what the record itself already holds. The drain writes the counters
//! into the trace as soon as it sees them move, so a reader reports the gap
//! even if the process is killed a moment later.
//!
//! The slots are a `crossbeam_queue::ArrayQueue` (preallocated, lock-free for
//! any number of producers). The byte budget bounds memory when steps are
//! large: slots × biggest step would not be a useful bound.
//!
//! Step buffers are recycled: the drain hands written steps back through a
//! small spare queue ([`Ring::recycle`]) and producers take them with
//! [`Ring::take_step`], so in steady state recording a step copies the
//! engine's columns into warm, already-allocated memory and calls no allocator
//! on either thread.

use crate::event::{DropCounts, Held, Record, Step};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Recycled step buffers kept at most.
const SPARE_STEPS: usize = 256;
/// Largest step buffer worth keeping (a 4096-token step with top-20 fits).
const MAX_SPARE_STEP_BYTES: usize = 1 << 20;

/// Why a record was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No free slot, or the byte budget is spent.
    Full,
    /// The record alone is larger than the whole byte budget.
    TooBig,
}

/// The ring. Shared by producers (`try_push`) and the one drain (`pop`).
pub struct Ring {
    slots: ArrayQueue<(Record, usize)>,
    spare_steps: ArrayQueue<Step>,
    byte_cap: usize,
    bytes_used: AtomicUsize,
    ring_full: AtomicU64,
    too_big: AtomicU64,
    tokens_dropped: AtomicU64,
}

/// Heap bytes a record owns, estimated cheaply (no traversal of strings in
/// hot records). Used only against the byte budget.
pub fn heap_bytes(record: &Record) -> usize {
    const SMALL: usize = 64;
    match record {
        Record::Step(s) => s.heap_bytes(Held::Used),
        Record::Emit(e) => e.emits.len() * std::mem::size_of::<crate::event::Emit>(),
        Record::Arrival(a) => {
            SMALL + a.internal_id.len() + a.external_id.as_ref().map_or(0, |s| s.len())
        }
        _ => SMALL,
    }
}

impl Ring {
    /// A ring of `slots` records owning at most `byte_cap` heap bytes.
    pub fn new(slots: usize, byte_cap: usize) -> Ring {
        Ring {
            slots: ArrayQueue::new(slots.max(1)),
            spare_steps: ArrayQueue::new(SPARE_STEPS),
            byte_cap,
            bytes_used: AtomicUsize::new(0),
            ring_full: AtomicU64::new(0),
            too_big: AtomicU64::new(0),
            tokens_dropped: AtomicU64::new(0),
        }
    }

    /// Queue a record, or drop and count it. Never blocks.
    #[inline]
    pub fn try_push(&self, record: Record) -> Result<(), Dropped> {
        let bytes = heap_bytes(&record);
        if bytes > self.byte_cap {
            let why = self.count_drop(&record, Dropped::TooBig);
            self.recycle(record);
            return Err(why);
        }
        // Observable side-effect: the reservation is visible to other producers,
        // which may now see the budget spent and drop. Relaxed is enough: the
        // counter only bounds memory, it orders nothing.
        let before = self.bytes_used.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > self.byte_cap {
            self.bytes_used.fetch_sub(bytes, Ordering::Relaxed);
            let why = self.count_drop(&record, Dropped::Full);
            self.recycle(record);
            return Err(why);
        }
        match self.slots.push((record, bytes)) {
            Ok(()) => Ok(()),
            Err((record, bytes)) => {
                self.bytes_used.fetch_sub(bytes, Ordering::Relaxed);
                let why = self.count_drop(&record, Dropped::Full);
                self.recycle(record);
                Err(why)
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn count_drop(&self, record: &Record, why: Dropped) -> Dropped {
        let counter = match why {
            Dropped::Full => &self.ring_full,
            Dropped::TooBig => &self.too_big,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.tokens_dropped
            .fetch_add(record.token_count(), Ordering::Relaxed);
        why
    }

    /// An empty step to fill: a recycled one when available.
    #[inline]
    pub fn take_step(&self) -> Step {
        self.spare_steps.pop().unwrap_or_default()
    }

    /// Give a written record's buffers back for reuse (drain side). Oversized
    /// steps are freed instead, so one huge step does not pin its memory.
    pub fn recycle(&self, record: Record) {
        if let Record::Step(mut step) = record {
            if step.heap_bytes(Held::Reserved) <= MAX_SPARE_STEP_BYTES {
                step.clear();
                let _ = self.spare_steps.push(step);
            }
        }
    }

    /// Take the oldest record (drain side).
    pub fn pop(&self) -> Option<Record> {
        let (record, bytes) = self.slots.pop()?;
        self.bytes_used.fetch_sub(bytes, Ordering::Relaxed);
        Some(record)
    }

    /// Records currently queued.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Loss counters of the ring (the writer adds its own `write_failed`).
    pub fn drops(&self) -> DropCounts {
        DropCounts {
            ring_full: self.ring_full.load(Ordering::Relaxed),
            too_big: self.too_big.load(Ordering::Relaxed),
            write_failed: 0,
            tokens: self.tokens_dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Step, TokenRun};

    fn step(id: u64, tokens: u32) -> Record {
        let mut s = Step {
            step_id: id,
            ..Default::default()
        };
        s.tokens.runs.push(TokenRun {
            req: 1,
            first_index: 0,
            count: tokens,
            top_k: None,
        });
        s.tokens.ids.0 = vec![7; tokens as usize];
        Record::Step(s)
    }

    #[test]
    fn full_ring_drops_and_counts() {
        let ring = Ring::new(4, 1 << 20);
        for i in 0..10 {
            let _ = ring.try_push(step(i, 2));
        }
        assert_eq!(ring.len(), 4);
        let d = ring.drops();
        assert_eq!(d.ring_full, 6);
        assert_eq!(d.tokens, 12);
        let ids: Vec<u64> = std::iter::from_fn(|| ring.pop())
            .map(|r| match r {
                Record::Step(s) => s.step_id,
                _ => u64::MAX,
            })
            .collect();
        assert_eq!(ids, vec![0, 1, 2, 3]);
    }

    #[test]
    fn byte_budget_bounds_memory() {
        let ring = Ring::new(1000, 1000);
        assert_eq!(ring.try_push(step(0, 1000)), Err(Dropped::TooBig));
        assert!(ring.try_push(step(1, 100)).is_ok());
        assert!(ring.try_push(step(2, 100)).is_ok());
        assert_eq!(ring.try_push(step(3, 200)), Err(Dropped::Full));
        ring.pop();
        assert!(ring.try_push(step(4, 100)).is_ok());
        let d = ring.drops();
        assert_eq!((d.too_big, d.ring_full), (1, 1));
    }
}
