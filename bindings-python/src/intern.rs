//! Request ids (Python strings) to the probe's small integer keys.
//!
//! Engines name requests by strings and pass the same string objects step
//! after step, so the fast path looks the object up by address; the map holds
//! a reference to each string, so an address cannot be reused while it is a
//! key. A string object seen for the first time falls back to a lookup by
//! value. Keys are forgotten when the request finishes; if finishes never
//! come, the maps are cleared past a cap instead of growing without bound.

use pyo3::prelude::*;
use pyo3::types::PyString;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Most requests remembered before the maps are cleared.
const MAX_KEYS: usize = 1 << 20;

/// A multiplicative hash for object addresses (std's SipHash is 10× slower here).
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
        self.0 = (n as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// What a lookup found.
pub enum Key {
    /// A request seen before.
    Known(u32),
    /// A request seen for the first time: the caller records its arrival.
    New(u32, String),
}

impl Key {
    /// The key either way.
    pub fn key(&self) -> u32 {
        match self {
            Key::Known(k) | Key::New(k, _) => *k,
        }
    }
}

/// The interner of one process.
#[derive(Default)]
pub struct Interner {
    by_addr: AddrMap<(u32, Py<PyString>)>,
    by_value: HashMap<String, u32>,
    next: u32,
}

impl Interner {
    /// The key of a request id object (must be a `str`).
    pub fn key(&mut self, id: &Bound<'_, PyAny>) -> PyResult<Key> {
        let addr = id.as_ptr() as usize;
        if let Some((k, _)) = self.by_addr.get(&addr) {
            return Ok(Key::Known(*k));
        }
        let s = id.downcast::<PyString>()?;
        let text = s.to_str()?;
        let found = match self.by_value.get(text) {
            Some(&k) => Key::Known(k),
            None => {
                if self.by_value.len() >= MAX_KEYS {
                    self.by_value.clear();
                    self.by_addr.clear();
                }
                let k = self.next;
                self.next = self.next.wrapping_add(1);
                self.by_value.insert(text.to_owned(), k);
                Key::New(k, text.to_owned())
            }
        };
        self.by_addr.insert(addr, (found.key(), s.clone().unbind()));
        Ok(found)
    }

    /// Forget a finished request.
    pub fn forget(&mut self, key: u32) {
        self.by_value.retain(|_, k| *k != key);
        self.by_addr.retain(|_, (k, _)| *k != key);
    }

    /// Requests currently known.
    pub fn len(&self) -> usize {
        self.by_value.len()
    }
}
