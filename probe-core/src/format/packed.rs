//! Packed encodings of the per-request lists of a step ([`BatchEntry`] and
//! [`TokenRun`]), used through `#[serde(with = …)]`.
//!
//! Both lists have one element per scheduled request, so at batch 256 they are
//! thousands of small integers per step. Encoded field by field through serde
//! they cost more than the token columns; packed as one LEB128 byte string
//! they are a single copy. Request keys are stored as zigzag deltas from the
//! previous element (batches list requests in near-sorted order, so a key
//! usually takes one byte). Human-readable formats (JSON dumps) get plain
//! lists of objects instead.

use crate::columns::{decode_leb128, push_leb128, with_scratch, BytesVisitor};
use crate::event::{BatchEntry, TokenRun};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

// Deltas wrap in u32 arithmetic, so every pair of keys round-trips exactly
// and small steps either way stay small.
fn zigzag(delta: i32) -> u32 {
    ((delta << 1) ^ (delta >> 31)) as u32
}

fn unzigzag(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

fn key_deltas(keys: impl Iterator<Item = u32>) -> impl Iterator<Item = u32> {
    let mut prev = 0u32;
    keys.map(move |k| {
        let d = k.wrapping_sub(prev) as i32;
        prev = k;
        zigzag(d)
    })
}

fn key_from_delta(prev: &mut u32, v: u32) -> u32 {
    *prev = prev.wrapping_add(unzigzag(v) as u32);
    *prev
}

/// An element packed as a request key plus three more unsigned fields.
trait Quad: Sized + serde::Serialize + for<'de> Deserialize<'de> {
    /// What the element is called in error messages.
    const NAME: &'static str;
    fn req(&self) -> u32;
    fn fields(&self) -> [u32; 3];
    fn build(req: u32, fields: [u32; 3]) -> Result<Self, &'static str>;
}

impl Quad for BatchEntry {
    const NAME: &'static str = "batch list";
    fn req(&self) -> u32 {
        self.req
    }
    fn fields(&self) -> [u32; 3] {
        [self.prefill_tokens, self.cached_tokens, self.decode_tokens]
    }
    fn build(
        req: u32,
        [prefill_tokens, cached_tokens, decode_tokens]: [u32; 3],
    ) -> Result<Self, &'static str> {
        Ok(BatchEntry {
            req,
            prefill_tokens,
            cached_tokens,
            decode_tokens,
        })
    }
}

impl Quad for TokenRun {
    const NAME: &'static str = "run list";
    fn req(&self) -> u32 {
        self.req
    }
    /// `top_k` is stored as 0 for `None`, `k + 1` for `Some(k)`.
    fn fields(&self) -> [u32; 3] {
        [
            self.first_index,
            self.count,
            self.top_k.map_or(0, |k| u32::from(k) + 1),
        ]
    }
    fn build(req: u32, [first_index, count, k]: [u32; 3]) -> Result<Self, &'static str> {
        let top_k = match k {
            0 => None,
            k @ 1..=256 => Some((k - 1) as u8),
            _ => return Err("top_k out of range"),
        };
        Ok(TokenRun {
            req,
            first_index,
            count,
            top_k,
        })
    }
}

fn serialize_quads<T: Quad, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        return s.collect_seq(v);
    }
    with_scratch(|buf| {
        buf.clear();
        push_leb128(std::iter::once(v.len() as u32), buf);
        for (e, d) in v.iter().zip(key_deltas(v.iter().map(T::req))) {
            let [a, b, c] = e.fields();
            push_leb128([d, a, b, c].into_iter(), buf);
        }
        s.serialize_bytes(buf)
    })
}

fn deserialize_quads<'de, T: Quad, D: Deserializer<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    if d.is_human_readable() {
        return Vec::<T>::deserialize(d);
    }
    let bytes = d.deserialize_bytes(BytesVisitor)?;
    let values = decode_leb128(&bytes).map_err(D::Error::custom)?;
    let (n, rest) = values
        .split_first()
        .ok_or_else(|| D::Error::custom(format!("empty {}", T::NAME)))?;
    if rest.len() != *n as usize * 4 {
        return Err(D::Error::custom(format!("{} length mismatch", T::NAME)));
    }
    let mut prev = 0u32;
    rest.chunks_exact(4)
        .map(|c| {
            T::build(key_from_delta(&mut prev, c[0]), [c[1], c[2], c[3]]).map_err(D::Error::custom)
        })
        .collect()
}

/// `#[serde(with)]` module for `Vec<BatchEntry>`.
pub mod batch {
    use super::*;

    /// Encode.
    pub fn serialize<S: Serializer>(v: &[BatchEntry], s: S) -> Result<S::Ok, S::Error> {
        serialize_quads(v, s)
    }

    /// Decode.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BatchEntry>, D::Error> {
        deserialize_quads(d)
    }
}

/// `#[serde(with)]` module for `Vec<TokenRun>`.
pub mod runs {
    use super::*;

    /// Encode.
    pub fn serialize<S: Serializer>(v: &[TokenRun], s: S) -> Result<S::Ok, S::Error> {
        serialize_quads(v, s)
    }

    /// Decode.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenRun>, D::Error> {
        deserialize_quads(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_deltas_round_trip() {
        let keys = [0u32, 1, 0, 5, u32::MAX, 3, u32::MAX, u32::MAX - 1, 7];
        let mut prev = 0;
        let back: Vec<u32> = key_deltas(keys.iter().copied())
            .map(|d| key_from_delta(&mut prev, d))
            .collect();
        assert_eq!(back, keys);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(-1), 1);
    }
}
