//! An unwritable trace directory, or another user's, keeps its index in the
//! user's cache. One test alone in its test binary: it sets XDG_CACHE_HOME,
//! which no other thread of the process may be reading meanwhile.

use toktrace_analyzer::index::{self, INDEX_FILE};
use toktrace_workload::{generate, WorkloadConfig};

#[test]
fn an_unwritable_or_foreign_trace_keeps_its_index_in_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = WorkloadConfig {
        tokens: Some(20_000),
        ..Default::default()
    };
    assert!(generate(&config, dir.path()).expect("generate").ok());
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("XDG_CACHE_HOME", cache.path());
    // A directory where the index file would go: no write can replace it,
    // whoever runs the test (root ignores permission bits).
    std::fs::create_dir(dir.path().join(INDEX_FILE)).unwrap();
    let (ix, _) = index::build(dir.path(), None).expect("build");
    let saved = index::save(dir.path(), &ix).expect("save somewhere");
    assert!(saved.starts_with(cache.path()), "{}", saved.display());
    assert!(index::open(dir.path()).is_some());

    // Another user's trace: read, never written, even by root, who could.
    let Some(other) = probe_core::synth::second_user() else {
        eprintln!(
            "skipped the other-user half: needs root to make a second user (CI runs as root)"
        );
        return;
    };
    let theirs = tempfile::tempdir().unwrap();
    assert!(generate(&config, theirs.path()).expect("generate").ok());
    std::os::unix::fs::chown(theirs.path(), Some(other), None).unwrap();
    let (ix, _) = index::build(theirs.path(), None).expect("build");
    let saved = index::save(theirs.path(), &ix).expect("save somewhere");
    assert!(saved.starts_with(cache.path()), "{}", saved.display());
    assert!(!theirs.path().join(INDEX_FILE).exists());
    assert!(index::open(theirs.path()).is_some());
}
