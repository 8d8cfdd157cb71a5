//! What a user or another process hands the analyzer never panics it: the
//! index file (it sits beside the trace, where anyone who can write there can
//! change it), and the command line's time and request-id arguments. Bounded
//! proptest runs, part of every test run.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use toktrace_analyzer::analysis::find_request;
use toktrace_analyzer::data::TraceData;
use toktrace_analyzer::index::{self, INDEX_FILE};
use toktrace_analyzer::select::TimeSpec;
use toktrace_analyzer::{load, LoadOptions};
use toktrace_workload::{generate, WorkloadConfig};

/// A small synthetic trace, its data, and the bytes of its valid index.
struct Fixture {
    dir: PathBuf,
    data: TraceData,
    index: Vec<u8>,
    _keep: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keep = tempfile::tempdir().unwrap();
        let dir = keep.path().to_path_buf();
        let config = WorkloadConfig {
            tokens: Some(5_000),
            ..Default::default()
        };
        assert!(generate(&config, &dir).expect("generate").ok());
        let (ix, _) = index::build(&dir, None).expect("build");
        let path = index::save(&dir, &ix).expect("save");
        let index = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let data = load(&dir, &LoadOptions::default()).expect("load");
        Fixture {
            dir,
            data,
            index,
            _keep: keep,
        }
    })
}

/// Open `bytes` as the index of a copy of the fixture trace (each case its
/// own directory: proptest cases may run while others still hold theirs).
fn open_as_index(bytes: &[u8]) {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&f.dir).unwrap() {
        let entry = entry.unwrap();
        copy_tree(&entry.path(), &tmp.path().join(entry.file_name()));
    }
    std::fs::write(tmp.path().join(INDEX_FILE), bytes).unwrap();
    // Trusted or not, it must not panic; a trusted one must be the real one.
    if let Some(ix) = index::open(tmp.path()) {
        assert!(ix.is_current(tmp.path()));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

fn near_rfc3339() -> impl Strategy<Value = String> {
    (
        any::<i64>(),
        any::<i64>(),
        any::<i64>(),
        -100i64..100,
        -100i64..100,
        -100i64..100,
        "[0-9]{0,30}",
        prop_oneof![Just("Z".to_string()), "[+-][0-9]{1,3}:[0-9]{1,3}", ".{0,4}"],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, tz)| format!("{y}-{mo}-{d}T{h}:{mi}:{s}.{frac}{tz}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_index_is_never_trusted_and_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = fixture().index.clone();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        open_as_index(&bytes);
    }

    #[test]
    fn arbitrary_bytes_as_an_index_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        with_header in any::<bool>(),
    ) {
        let mut bytes = if with_header { fixture().index[..12].to_vec() } else { Vec::new() };
        bytes.extend(body);
        open_as_index(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_time_argument_parses_or_is_refused(s in ".{0,40}") {
        let _ = s.parse::<TimeSpec>();
    }

    #[test]
    fn any_near_rfc3339_time_parses_or_is_refused(s in near_rfc3339()) {
        let _ = s.parse::<TimeSpec>();
    }

    #[test]
    fn any_numeric_time_parses_or_is_refused(v in any::<f64>(), unit in prop_oneof!["", "s", "ms", " s"]) {
        let _ = format!("{v}{unit}").parse::<TimeSpec>();
        let _ = format!("{v:e}{unit}").parse::<TimeSpec>();
    }

    #[test]
    fn any_request_id_is_found_or_not(id in "(?s).{0,40}") {
        let _ = find_request(&fixture().data, &id);
    }
}
