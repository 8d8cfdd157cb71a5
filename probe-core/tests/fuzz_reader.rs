//! The reader never panics, whatever the bytes: arbitrary input, and valid
//! segments with random damage. Bounded proptest runs, part of every test run.

mod common;

use probe_core::event::Record;
use probe_core::frame::{self, PREAMBLE_LEN};
use probe_core::reader::decode_segment;
use probe_core::synth;
use probe_core::FORMAT_VERSION;
use proptest::prelude::*;
use std::path::Path;

fn valid_segment() -> Vec<u8> {
    let mut bytes = frame::preamble(FORMAT_VERSION).to_vec();
    frame::encode_frame(&Record::Process(synth::process_info()), &mut bytes).unwrap();
    frame::encode_frame(&synth::arrival(3), &mut bytes).unwrap();
    for i in 0..6 {
        frame::encode_frame(&Record::Step(synth::step(i, 3, Some(2))), &mut bytes).unwrap();
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_segment(Path::new("fuzz"), &bytes);
    }

    #[test]
    fn arbitrary_frames_behind_a_valid_preamble_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        let mut bytes = frame::preamble(FORMAT_VERSION).to_vec();
        bytes.extend(body);
        let seg = decode_segment(Path::new("fuzz"), &bytes).expect("valid preamble reads");
        for r in &seg.records {
            if let Record::Step(s) = &r.record {
                prop_assert!(s.tokens.check().is_ok());
            }
        }
    }

    #[test]
    fn arbitrary_payloads_in_valid_frames_never_panic(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..512), 1..8)
    ) {
        // Valid length and CRC, so the record decoder itself meets the garbage.
        let mut bytes = frame::preamble(FORMAT_VERSION).to_vec();
        for p in &payloads {
            let len = (p.len() as u32).to_le_bytes();
            bytes.extend_from_slice(&len);
            bytes.extend_from_slice(&frame::frame_crc(len, p).to_le_bytes());
            bytes.extend_from_slice(p);
        }
        let seg = decode_segment(Path::new("fuzz"), &bytes).expect("valid preamble reads");
        prop_assert_eq!(seg.records.len() + seg.warnings.len(), payloads.len());
    }

    #[test]
    fn damaged_valid_segments_give_only_original_records(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let original = valid_segment();
        let clean = decode_segment(Path::new("clean"), &original).unwrap();
        let mut bytes = original.clone();
        for (at, x) in flips {
            let i = PREAMBLE_LEN + at.index(bytes.len() - PREAMBLE_LEN);
            bytes[i] ^= x | 1;
        }
        bytes.truncate(PREAMBLE_LEN + cut.index(bytes.len() - PREAMBLE_LEN + 1));
        let seg = decode_segment(Path::new("damaged"), &bytes).unwrap();
        for r in &seg.records {
            // A CRC32C collision on random damage would be a 2^-32 event.
            prop_assert!(clean.records.contains(r), "invented record at {}", r.offset);
        }
    }
}
