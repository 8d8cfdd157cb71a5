//! Request ids (Python strings) to the probe's small integer keys, and the
//! little the probe remembers per live request.
//!
//! This is the per-request part of every step, so it is built in three tiers:
//!
//! 1. A positional cache per call site: engines list mostly the same requests
//!    in the same order step after step, so position i usually holds the same
//!    string object as last time — a pointer compare, no hashing.
//! 2. A map from object address to key. It holds a reference to the one
//!    string object it remembers per request, so an address cannot be reused
//!    by another object while it is in the map (or in a positional cache).
//! 3. A map from the id's text to its key, for a string object seen for the
//!    first time (ids deserialized afresh each step land here every time).
//!
//! Each live request also owns a slot in a table (`Live`): its prompt length
//! and the outputs recorded so far, so a run's first output index, and a
//! batch entry's split into prefill and decode work, can be worked out here
//! rather than by every adapter. Slots are reused; keys never are.
//!
//! Keys are forgotten when the request finishes; if finishes never come, the
//! maps are cleared past a cap instead of growing without bound — between
//! calls (`trim`), never inside one, so no key or slot handed out during a
//! call (a step's batch and runs) goes stale before the call is done.

use crate::convert::{seq_item, seq_len};
use crate::layout;
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most requests remembered before the maps are cleared, by default.
pub const MAX_KEYS: usize = 1 << 20;

/// Call sites with their own positional cache.
#[derive(Clone, Copy)]
pub enum Site {
    /// The scheduled batch of a step.
    Batch = 0,
    /// The token runs of a step.
    Runs = 1,
    /// Everything else (preempted, finished, emits).
    Other = 2,
}

/// A multiplicative hash for object addresses (SipHash is several times slower here).
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_usize(n as usize);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// A request as the interner knows it: its key in the trace and its slot
/// in the table of live requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Id {
    pub key: u32,
    pub slot: u32,
}

struct Known {
    id: Id,
    /// The string object remembered for this request (kept alive here).
    object: Py<PyString>,
}

/// What the probe keeps per live request: a column per field, indexed by
/// slot. The per-step loops read one field of every request in the batch; a
/// column keeps that to a few cache lines, where a struct per request spread
/// it over one line per request.
#[derive(Default)]
pub struct Live {
    /// Outputs recorded so far (the next run's first output index).
    pub outputs: Vec<u32>,
    /// Prompt tokens, as the arrival record gave them.
    pub prompts: Vec<Option<u32>>,
    /// The id's text, to forget the request by its slot.
    texts: Vec<String>,
}

/// The interner of one process.
pub struct Interner {
    /// Requests remembered at most (checked by `trim`).
    cap: usize,
    by_addr: AddrMap<Id>,
    by_value: HashMap<String, Known>,
    recent: [Vec<(usize, Id)>; 3],
    next: u32,
    live: Live,
    free: Vec<u32>,
}

impl Default for Interner {
    fn default() -> Interner {
        Interner::with_cap(MAX_KEYS)
    }
}

impl Interner {
    /// An empty interner that remembers at most `cap` requests between calls.
    pub fn with_cap(cap: usize) -> Interner {
        Interner {
            cap: cap.max(1),
            by_addr: AddrMap::default(),
            by_value: HashMap::new(),
            recent: Default::default(),
            next: 0,
            live: Live::default(),
            free: Vec::new(),
        }
    }

    /// Forget every request if more than the cap are remembered (their
    /// finishes never came). Call it before a call's lookups, never between
    /// them.
    pub fn trim(&mut self) {
        if self.by_value.len() >= self.cap {
            self.clear();
        }
    }

    /// Key of every id in `ids` (a list, or any iterable of `str`), appended to
    /// `out` (and its slot to `slots`); ids never seen before are also
    /// appended to `new` with their text.
    pub fn keys(
        &mut self,
        site: Site,
        ids: &Bound<'_, PyAny>,
        out: &mut Vec<u32>,
        slots: &mut Vec<u32>,
        new: &mut Vec<(u32, String)>,
    ) -> PyResult<()> {
        let list = ids.as_ptr();
        // SAFETY: `ids` is held.
        let direct = unsafe { layout::is_direct_list(list) };
        // SAFETY: type check on a live object.
        if !direct && unsafe { ffi::PyList_Check(list) } == 0 {
            for item in ids.try_iter()? {
                let id = self.key_slow(&item?, new)?;
                out.push(id.key);
                slots.push(id.slot);
            }
            return Ok(());
        }
        let n = seq_len(ids);
        out.reserve(n);
        slots.reserve(n);
        let mut cache = std::mem::take(&mut self.recent[site as usize]);
        // Tier 1 in bulk first: the leading ids that are the objects cached at
        // their positions (usually all of them) need no lookup, and nothing
        // runs Python code meanwhile, so the items are one slice and the keys
        // are copied out in passes that keep nothing in memory between items.
        let mut hits = 0;
        if direct {
            // SAFETY: `list` passed `is_direct_list`; no Python code runs below
            // until the slice is dropped.
            let items = unsafe { layout::list_items(list) };
            hits = items
                .iter()
                .zip(&cache)
                .take_while(|(&item, &(addr, _))| item as usize == addr)
                .count();
            out.extend(cache[..hits].iter().map(|&(_, id)| id.key));
            slots.extend(cache[..hits].iter().map(|&(_, id)| id.slot));
        }
        for i in hits..n {
            // Read afresh item by item: `key_slow` may drop a string it
            // remembered, and a dropped object may run Python code.
            let item = seq_item(ids, i);
            if item.is_null() {
                self.recent[site as usize] = cache;
                return Err(PyTypeError::new_err(
                    "request id list changed while being read",
                ));
            }
            let addr = item as usize;
            let id = match cache.get(i) {
                // Tier 1: same object at the same position as last time. Every
                // cached address is held alive by `by_value`, so it is the same string.
                Some(&(a, id)) if a == addr => id,
                _ => {
                    let k = match self.by_addr.get(&addr) {
                        Some(&id) => id,
                        None => {
                            // SAFETY: `item` is a live borrowed reference.
                            let bound = unsafe { Bound::from_borrowed_ptr(ids.py(), item) };
                            self.key_slow(&bound, new)?
                        }
                    };
                    if i < cache.len() {
                        cache[i] = (addr, k);
                    } else {
                        cache.push((addr, k));
                    }
                    k
                }
            };
            out.push(id.key);
            slots.push(id.slot);
        }
        cache.truncate(n);
        self.recent[site as usize] = cache;
        Ok(())
    }

    /// Key and slot of one id object.
    pub fn key(&mut self, id: &Bound<'_, PyAny>, new: &mut Vec<(u32, String)>) -> PyResult<Id> {
        match self.by_addr.get(&(id.as_ptr() as usize)) {
            Some(&k) => Ok(k),
            None => self.key_slow(id, new),
        }
    }

    #[cold]
    fn key_slow(&mut self, id: &Bound<'_, PyAny>, new: &mut Vec<(u32, String)>) -> PyResult<Id> {
        if let Some(&k) = self.by_addr.get(&(id.as_ptr() as usize)) {
            return Ok(k);
        }
        let s = id.downcast::<PyString>()?;
        let text = s.to_str()?;
        if let Some(known) = self.by_value.get_mut(text) {
            // Same id, another string object: remember the new one instead.
            let found = known.id;
            let old = known.object.as_ptr() as usize;
            known.object = s.clone().unbind();
            self.by_addr.remove(&old);
            self.by_addr.insert(id.as_ptr() as usize, found);
            self.invalidate_cached(old);
            return Ok(found);
        }
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        let live = &mut self.live;
        let slot = match self.free.pop() {
            Some(slot) => {
                let i = slot as usize;
                live.outputs[i] = 0;
                live.prompts[i] = None;
                live.texts[i] = text.to_owned();
                slot
            }
            None => {
                live.outputs.push(0);
                live.prompts.push(None);
                live.texts.push(text.to_owned());
                (live.texts.len() - 1) as u32
            }
        };
        let found = Id { key, slot };
        self.by_value.insert(
            text.to_owned(),
            Known {
                id: found,
                object: s.clone().unbind(),
            },
        );
        self.by_addr.insert(id.as_ptr() as usize, found);
        new.push((key, text.to_owned()));
        Ok(found)
    }

    /// The live requests' columns, indexed by the slots `keys` and `key`
    /// give (a slot is out of range only if the maps were cleared meanwhile).
    pub fn live(&mut self) -> &mut Live {
        &mut self.live
    }

    /// Forget a finished request.
    pub fn forget(&mut self, id: Id) {
        let Some(text) = self.live.texts.get_mut(id.slot as usize) else {
            return;
        };
        // A stale id (the maps were cleared since) names someone else's slot.
        if self.by_value.get(text.as_str()).map(|k| k.id) != Some(id) {
            return;
        }
        let text = std::mem::take(text);
        let Some(known) = self.by_value.remove(&text) else {
            return;
        };
        self.free.push(id.slot);
        let addr = known.object.as_ptr() as usize;
        self.by_addr.remove(&addr);
        self.invalidate_cached(addr);
    }

    /// An address is no longer held: no cache may vouch for it any more.
    fn invalidate_cached(&mut self, addr: usize) {
        for cache in &mut self.recent {
            for entry in cache.iter_mut().filter(|(a, _)| *a == addr) {
                entry.0 = 0;
            }
        }
    }

    fn clear(&mut self) {
        self.by_addr.clear();
        self.by_value.clear();
        self.live = Live::default();
        self.free.clear();
        for cache in &mut self.recent {
            cache.clear();
        }
    }

    /// Requests currently known.
    pub fn len(&self) -> usize {
        self.by_value.len()
    }
}
