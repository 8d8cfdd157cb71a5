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

struct Packer<'a> {
    buf: &'a mut Vec<u8>,
}

impl Packer<'_> {
    fn values(&mut self, v: impl ExactSizeIterator<Item = u32>) {
        push_leb128(v, self.buf);
    }
}

/// `#[serde(with)]` module for `Vec<BatchEntry>`.
pub mod batch {
    use super::*;

    /// Encode.
    pub fn serialize<S: Serializer>(v: &[BatchEntry], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_seq(v);
        }
        with_scratch(|buf| {
            buf.clear();
            let mut p = Packer { buf };
            p.values(std::iter::once(v.len() as u32));
            for (e, d) in v.iter().zip(key_deltas(v.iter().map(|e| e.req))) {
                p.values([d, e.prefill_tokens, e.cached_tokens, e.decode_tokens].into_iter());
            }
            s.serialize_bytes(p.buf)
        })
    }

    /// Decode.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<BatchEntry>, D::Error> {
        if d.is_human_readable() {
            return Vec::<BatchEntry>::deserialize(d);
        }
        let bytes = d.deserialize_bytes(BytesVisitor)?;
        let values = decode_leb128(&bytes).map_err(D::Error::custom)?;
        let (n, rest) = values
            .split_first()
            .ok_or_else(|| D::Error::custom("empty batch list"))?;
        if rest.len() != *n as usize * 4 {
            return Err(D::Error::custom("batch list length mismatch"));
        }
        let mut prev = 0u32;
        rest.chunks_exact(4)
            .map(|c| {
                Ok(BatchEntry {
                    req: key_from_delta(&mut prev, c[0]),
                    prefill_tokens: c[1],
                    cached_tokens: c[2],
                    decode_tokens: c[3],
                })
            })
            .collect()
    }
}

/// `#[serde(with)]` module for `Vec<TokenRun>`.
pub mod runs {
    use super::*;

    /// Encode. `top_k` is stored as 0 for `None`, `k + 1` for `Some(k)`.
    pub fn serialize<S: Serializer>(v: &[TokenRun], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_seq(v);
        }
        with_scratch(|buf| {
            buf.clear();
            let mut p = Packer { buf };
            p.values(std::iter::once(v.len() as u32));
            for (r, d) in v.iter().zip(key_deltas(v.iter().map(|r| r.req))) {
                let k = r.top_k.map_or(0, |k| u32::from(k) + 1);
                p.values([d, r.first_index, r.count, k].into_iter());
            }
            s.serialize_bytes(p.buf)
        })
    }

    /// Decode.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TokenRun>, D::Error> {
        if d.is_human_readable() {
            return Vec::<TokenRun>::deserialize(d);
        }
        let bytes = d.deserialize_bytes(BytesVisitor)?;
        let values = decode_leb128(&bytes).map_err(D::Error::custom)?;
        let (n, rest) = values
            .split_first()
            .ok_or_else(|| D::Error::custom("empty run list"))?;
        if rest.len() != *n as usize * 4 {
            return Err(D::Error::custom("run list length mismatch"));
        }
        let mut prev = 0u32;
        rest.chunks_exact(4)
            .map(|c| {
                let top_k = match c[3] {
                    0 => None,
                    k @ 1..=256 => Some((k - 1) as u8),
                    _ => return Err(D::Error::custom("top_k out of range")),
                };
                Ok(TokenRun {
                    req: key_from_delta(&mut prev, c[0]),
                    first_index: c[1],
                    count: c[2],
                    top_k,
                })
            })
            .collect()
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
