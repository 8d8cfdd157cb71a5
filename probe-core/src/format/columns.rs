//! Packed numeric columns for the per-token data of a step.
//!
//! Token data dominates a trace, so its columns do not go through serde one
//! element at a time: a [`U32Column`] is written as one byte string of LEB128
//! varints (a 128k-vocabulary token id takes 3 bytes, not bincode's 5), and an
//! [`F32Column`] as one byte string of little-endian floats. Either is a single
//! length-prefixed copy for the encoder, which keeps the writer far above its
//! 10 M tokens/s budget.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A column of `u32` values, stored as LEB128 varints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct U32Column(pub Vec<u32>);

/// A column of `f32` values, stored as little-endian IEEE-754 bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct F32Column(pub Vec<f32>);

impl U32Column {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when the column holds no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl F32Column {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when the column holds no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u32>> for U32Column {
    fn from(v: Vec<u32>) -> Self {
        U32Column(v)
    }
}

impl From<Vec<f32>> for F32Column {
    fn from(v: Vec<f32>) -> Self {
        F32Column(v)
    }
}

fn encode_leb128_into(values: &[u32], out: &mut Vec<u8>) {
    out.clear();
    push_leb128(values.iter().copied(), out);
}

/// Append LEB128 varints. Writes into reserved capacity without a bounds check
/// per byte: this loop is the drain's hottest code.
pub(crate) fn push_leb128(values: impl ExactSizeIterator<Item = u32>, out: &mut Vec<u8>) {
    out.reserve(values.len() * 5);
    let spare = out.spare_capacity_mut();
    let mut n = 0usize;
    for v in values {
        let mut v = v;
        while v >= 0x80 {
            spare[n].write((v as u8) | 0x80);
            n += 1;
            v >>= 7;
        }
        spare[n].write(v as u8);
        n += 1;
    }
    // SAFETY: the first `n` bytes of the spare capacity were written above, and
    // `n` never exceeds the 5 bytes per value reserved (a u32 takes at most 5).
    unsafe { out.set_len(out.len() + n) };
}

#[cfg(test)]
fn encode_leb128(values: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_leb128_into(values, &mut out);
    out
}

thread_local! {
    // Scratch space for encoding a column: serde wants the bytes as one slice,
    // and the drain encodes millions of columns, so the buffer is reused.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        // Re-entered (cannot happen with the types here): use a fresh buffer.
        Err(_) => f(&mut Vec::new()),
    })
}

pub(crate) fn decode_leb128(bytes: &[u8]) -> Result<Vec<u32>, &'static str> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut acc: u32 = 0;
    let mut shift = 0u32;
    for &b in bytes {
        if shift == 28 && (b & 0x70) != 0 {
            return Err("varint overflows u32");
        }
        acc |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            out.push(acc);
            acc = 0;
            shift = 0;
        } else {
            shift += 7;
            if shift > 28 {
                return Err("varint longer than 5 bytes");
            }
        }
    }
    if shift != 0 {
        return Err("truncated varint");
    }
    Ok(out)
}

impl Serialize for U32Column {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            // JSON dumps show numbers, not the packed bytes.
            return s.collect_seq(&self.0);
        }
        with_scratch(|buf| {
            encode_leb128_into(&self.0, buf);
            s.serialize_bytes(buf)
        })
    }
}

impl Serialize for F32Column {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_seq(&self.0);
        }
        with_scratch(|buf| {
            buf.clear();
            if cfg!(target_endian = "little") {
                // SAFETY: f32 has no padding and every bit pattern is a valid
                // u8; on a little-endian target its in-memory bytes are exactly
                // the little-endian encoding the format stores.
                let bytes = unsafe {
                    std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 4)
                };
                buf.extend_from_slice(bytes);
            } else {
                for v in &self.0 {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            s.serialize_bytes(buf)
        })
    }
}

pub(crate) struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        Ok(v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Self-describing formats (JSON in tests) hand bytes over as a sequence.
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for U32Column {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Vec::<u32>::deserialize(d).map(U32Column);
        }
        let bytes = d.deserialize_bytes(BytesVisitor)?;
        decode_leb128(&bytes)
            .map(U32Column)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for F32Column {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            return Vec::<f32>::deserialize(d).map(F32Column);
        }
        let bytes = d.deserialize_bytes(BytesVisitor)?;
        if bytes.len() % 4 != 0 {
            return Err(de::Error::custom(
                "f32 column length is not a multiple of 4",
            ));
        }
        Ok(F32Column(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_round_trips_edges() {
        let v = vec![0, 1, 127, 128, 16_383, 16_384, 151_935, u32::MAX];
        assert_eq!(decode_leb128(&encode_leb128(&v)).unwrap(), v);
        assert_eq!(encode_leb128(&[151_935]).len(), 3);
    }

    #[test]
    fn leb128_rejects_garbage() {
        assert!(decode_leb128(&[0x80]).is_err());
        assert!(decode_leb128(&[0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
        assert!(decode_leb128(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }
}
