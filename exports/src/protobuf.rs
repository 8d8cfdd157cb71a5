//! Just enough protocol-buffers encoding to write Perfetto traces: varints,
//! doubles, strings and nested messages, appended field by field.
//!
//! Hand-written rather than generated: the Perfetto messages we write are a
//! handful of fields, and the field numbers are facts of the public format
//! (noted beside each use in `perfetto.rs`), so a code generator and its
//! build step would cost more than they save.

/// A message being built: its encoded fields, in order.
#[derive(Debug, Default, Clone)]
pub struct Message {
    bytes: Vec<u8>,
}

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;

impl Message {
    /// An empty message.
    pub fn new() -> Message {
        Message::default()
    }

    /// The encoded fields.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Forget the fields, keep the allocation.
    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    fn key(&mut self, field: u32, wire_type: u64) {
        put_varint(&mut self.bytes, (u64::from(field) << 3) | wire_type);
    }

    /// An unsigned integer, enum or non-negative signed field.
    pub fn uint(&mut self, field: u32, value: u64) -> &mut Message {
        self.key(field, VARINT);
        put_varint(&mut self.bytes, value);
        self
    }

    /// A signed (`int64`, `int32`) field: two's complement, as protobuf does.
    pub fn int(&mut self, field: u32, value: i64) -> &mut Message {
        self.uint(field, value as u64)
    }

    /// A `bool` field.
    pub fn boolean(&mut self, field: u32, value: bool) -> &mut Message {
        self.uint(field, u64::from(value))
    }

    /// A `double` field.
    pub fn double(&mut self, field: u32, value: f64) -> &mut Message {
        self.key(field, FIXED64);
        self.bytes.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A `string` or `bytes` field.
    pub fn bytes_field(&mut self, field: u32, value: &[u8]) -> &mut Message {
        self.key(field, LENGTH_DELIMITED);
        put_varint(&mut self.bytes, value.len() as u64);
        self.bytes.extend_from_slice(value);
        self
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, value: &str) -> &mut Message {
        self.bytes_field(field, value.as_bytes())
    }

    /// A nested message field.
    pub fn message(&mut self, field: u32, value: &Message) -> &mut Message {
        self.bytes_field(field, &value.bytes)
    }
}

/// Append a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_wire_format() {
        // Examples from the protobuf encoding documentation: field 1 = 150 is
        // 08 96 01; field 2 = "testing" is 12 07 74 65 73 74 69 6e 67.
        let mut m = Message::new();
        m.uint(1, 150);
        assert_eq!(m.bytes(), [0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.string(2, "testing");
        assert_eq!(m.bytes(), b"\x12\x07testing");
        // Nested: field 3 holding the first message.
        let mut inner = Message::new();
        inner.uint(1, 150);
        let mut outer = Message::new();
        outer.message(3, &inner);
        assert_eq!(outer.bytes(), [0x1a, 0x03, 0x08, 0x96, 0x01]);
        let mut m = Message::new();
        m.int(1, -1).double(2, 1.5).boolean(3, true);
        assert_eq!(
            m.bytes(),
            [
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x11, 0, 0, 0, 0,
                0, 0, 0xf8, 0x3f, 0x18, 0x01
            ]
        );
    }
}
