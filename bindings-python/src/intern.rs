//! Request ids (Python strings) to the probe's small integer keys.
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
//! Keys are forgotten when the request finishes; if finishes never come, the
//! maps are cleared past a cap instead of growing without bound.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most requests remembered before the maps are cleared.
const MAX_KEYS: usize = 1 << 20;

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
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(26);
    }
}

type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

struct Known {
    key: u32,
    /// The string object remembered for this request (kept alive here).
    object: Py<PyString>,
}

/// The interner of one process.
#[derive(Default)]
pub struct Interner {
    by_addr: AddrMap<u32>,
    by_value: HashMap<String, Known>,
    recent: [Vec<(usize, u32)>; 3],
    next: u32,
}

impl Interner {
    /// Key of every id in `ids` (a list, or any iterable of `str`), appended to
    /// `out`; ids never seen before are also appended to `new` with their text.
    pub fn keys(
        &mut self,
        site: Site,
        ids: &Bound<'_, PyAny>,
        out: &mut Vec<u32>,
        new: &mut Vec<(u32, String)>,
    ) -> PyResult<()> {
        let list = ids.as_ptr();
        // SAFETY: type check on a live object.
        if unsafe { ffi::PyList_Check(list) } == 0 {
            for item in ids.try_iter()? {
                let item = item?;
                out.push(self.key_slow(&item, new)?);
            }
            return Ok(());
        }
        // SAFETY: `list` is a live list held by the caller.
        let n = unsafe { ffi::PyList_Size(list) }.max(0) as usize;
        out.reserve(n);
        let mut cache = std::mem::take(&mut self.recent[site as usize]);
        for i in 0..n {
            // SAFETY: borrowed reference to an item of a list the caller holds.
            let item = unsafe { ffi::PyList_GetItem(list, i as isize) };
            if item.is_null() {
                self.recent[site as usize] = cache;
                return Err(PyErr::fetch(ids.py()));
            }
            let addr = item as usize;
            let key = match cache.get(i) {
                // Tier 1: same object at the same position as last time. Every
                // cached address is held alive by `by_value`, so it is the same string.
                Some(&(a, k)) if a == addr => k,
                _ => {
                    let k = match self.by_addr.get(&addr) {
                        Some(&k) => k,
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
            out.push(key);
        }
        cache.truncate(n);
        self.recent[site as usize] = cache;
        Ok(())
    }

    /// Key of one id object.
    pub fn key(&mut self, id: &Bound<'_, PyAny>, new: &mut Vec<(u32, String)>) -> PyResult<u32> {
        match self.by_addr.get(&(id.as_ptr() as usize)) {
            Some(&k) => Ok(k),
            None => self.key_slow(id, new),
        }
    }

    #[cold]
    fn key_slow(&mut self, id: &Bound<'_, PyAny>, new: &mut Vec<(u32, String)>) -> PyResult<u32> {
        if let Some(&k) = self.by_addr.get(&(id.as_ptr() as usize)) {
            return Ok(k);
        }
        let s = id.downcast::<PyString>()?;
        let text = s.to_str()?;
        if let Some(known) = self.by_value.get_mut(text) {
            // Same id, another string object: remember the new one instead.
            let key = known.key;
            let old = known.object.as_ptr() as usize;
            known.object = s.clone().unbind();
            self.by_addr.remove(&old);
            self.by_addr.insert(id.as_ptr() as usize, key);
            self.invalidate_cached(old);
            return Ok(key);
        }
        if self.by_value.len() >= MAX_KEYS {
            self.clear();
        }
        let key = self.next;
        self.next = self.next.wrapping_add(1);
        self.by_value.insert(
            text.to_owned(),
            Known {
                key,
                object: s.clone().unbind(),
            },
        );
        self.by_addr.insert(id.as_ptr() as usize, key);
        new.push((key, text.to_owned()));
        Ok(key)
    }

    /// Forget a finished request.
    pub fn forget(&mut self, key: u32) {
        let mut freed = Vec::new();
        self.by_value.retain(|_, known| {
            if known.key == key {
                freed.push(known.object.as_ptr() as usize);
                false
            } else {
                true
            }
        });
        for addr in freed {
            self.by_addr.remove(&addr);
            self.invalidate_cached(addr);
        }
    }

    /// An address is no longer held: no cache may vouch for it any more.
    fn invalidate_cached(&mut self, addr: usize) {
        for cache in &mut self.recent {
            for entry in cache.iter_mut().filter(|(a, _)| *a == addr) {
                *entry = (0, 0);
            }
        }
    }

    fn clear(&mut self) {
        self.by_addr.clear();
        self.by_value.clear();
        for cache in &mut self.recent {
            cache.clear();
        }
    }

    /// Requests currently known.
    pub fn len(&self) -> usize {
        self.by_value.len()
    }
}
