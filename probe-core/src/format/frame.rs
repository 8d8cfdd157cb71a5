//! The segment file format: a preamble, then frames.
//!
//! ```text
//! preamble  "TOKTRACE" | format version: u16 LE | reserved: u16 LE
//! frame     payload length: u32 LE | CRC32C(length bytes ++ payload): u32 LE | payload
//! payload   one bincode-encoded `Record` (varint integers)
//! ```
//!
//! The CRC covers the length too, so a corrupt length is caught as surely as a
//! corrupt payload, and a reader can resynchronise by scanning for the next
//! offset where a plausible length and a matching CRC meet.

use crate::event::Record;

/// Magic bytes at the start of every segment file.
pub const MAGIC: &[u8; 8] = b"TOKTRACE";
/// Preamble length in bytes.
pub const PREAMBLE_LEN: usize = 12;
/// Frame header length in bytes.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may hold; a larger length is corruption.
pub const MAX_FRAME_LEN: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ MAX_FRAME_LEN }>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<{ MAX_FRAME_LEN }>()
}

/// The preamble for a given format version.
pub fn preamble(version: u16) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..10].copy_from_slice(&version.to_le_bytes());
    p
}

/// Parse a preamble: `None` when the magic is wrong, else the format version.
pub fn parse_preamble(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < PREAMBLE_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    Some(u16::from_le_bytes([bytes[8], bytes[9]]))
}

/// CRC of a frame: over the length bytes, then the payload.
pub fn frame_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Append one framed record to `out`. Returns the number of bytes appended.
pub fn encode_frame(
    record: &Record,
    out: &mut Vec<u8>,
) -> Result<usize, bincode::error::EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    if let Err(e) = bincode::serde::encode_into_std_write(record, out, config()) {
        out.truncate(start);
        return Err(e);
    }
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    if payload_len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(bincode::error::EncodeError::OtherString(format!(
            "record of {payload_len} bytes exceeds the frame limit"
        )));
    }
    let len_bytes = (payload_len as u32).to_le_bytes();
    let crc = frame_crc(len_bytes, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// Decode one record from a frame's payload (already CRC-checked) of a
/// segment of format `version` (one the reader accepts).
pub fn decode_payload(payload: &[u8], version: u16) -> Result<Record, bincode::error::DecodeError> {
    let (record, used): (Record, usize) = if version == 1 {
        let (r, used): (super::v1::RecordV1, usize) =
            bincode::serde::decode_from_slice(payload, config())?;
        (r.into(), used)
    } else {
        bincode::serde::decode_from_slice(payload, config())?
    };
    if used != payload.len() {
        return Err(bincode::error::DecodeError::OtherString(format!(
            "{} trailing bytes after the record",
            payload.len() - used
        )));
    }
    Ok(record)
}
