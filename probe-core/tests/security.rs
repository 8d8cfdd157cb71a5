//! Who can read what the probe writes, and what it refuses to write into.

mod common;

use probe_core::event::Record;
use probe_core::files::{foreign_owner, write_atomically};
use probe_core::synth;
use probe_core::Probe;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn one_step() -> Vec<Record> {
    vec![Record::Step(synth::step(0, 2, Some(1)))]
}

#[test]
fn directories_toktrace_makes_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a").join("traces");
    let (config, reports) = common::config(&root);
    let probe = common::record_all(config, &one_step());
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(probe.dir()), 0o700);
    assert!(reports.lock().unwrap().is_empty());
}

#[test]
fn a_root_writable_by_others_is_left_as_it_is_with_one_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("shared");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (config, reports) = common::config(&root);
    let mut probe = Probe::start(config).unwrap();
    for i in 0..3 {
        assert!(probe.record(Record::Step(synth::step(i, 2, Some(1)))));
        assert!(probe.flush(Duration::from_secs(30)));
    }
    assert!(probe.shutdown(Duration::from_secs(30)).clean);
    assert_eq!(mode(&root), 0o1777, "the user's directory was changed");
    assert_eq!(mode(probe.dir()), 0o700);
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains("writable by other users (mode 1777)"),
        "{reports:?}"
    );
}

/// A directory (or a symlink to one) already at the process directory's
/// predictable path: the probe writes nothing into it and counts its losses.
fn planted(make: impl FnOnce(&Path, &Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("traces");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let (config, reports) = common::config(&root);
    let mut probe = Probe::start(config).unwrap();
    // Nothing is on disk before the first record: plant now.
    make(probe.dir(), &elsewhere);
    assert!(probe.record(Record::Step(synth::step(0, 2, Some(1)))));
    let report = probe.shutdown(Duration::from_secs(30));
    assert!(report.clean);
    assert_eq!(report.drops.write_failed, 1, "{:?}", report.drops);
    for dir in [probe.dir(), elsewhere.as_path()] {
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "wrote into {dir:?}"
        );
    }
    let reports = reports.lock().unwrap();
    assert!(
        reports.iter().any(|r| r.contains("did not make it")),
        "{reports:?}"
    );
}

#[test]
fn a_planted_process_directory_is_never_written() {
    planted(|dir, _| std::fs::create_dir(dir).unwrap());
}

#[test]
fn a_symlink_planted_at_the_process_directory_is_never_followed() {
    planted(|dir, elsewhere| std::os::unix::fs::symlink(elsewhere, dir).unwrap());
}

#[test]
fn another_users_file_is_never_replaced() {
    let Some(other) = synth::second_user() else {
        eprintln!("skipped: needs root to make a second user (CI runs as root)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let theirs = tmp.path().join("index");
    std::fs::write(&theirs, b"theirs").unwrap();
    std::os::unix::fs::chown(&theirs, Some(other), None).unwrap();
    assert_eq!(foreign_owner(&theirs), Some(other));
    let err = write_atomically(&theirs, b"ours", 0o600).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains(&format!("uid {other}")), "{err}");
    assert_eq!(std::fs::read(&theirs).unwrap(), b"theirs");
    assert_eq!(std::fs::metadata(&theirs).unwrap().uid(), other);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "a file was left beside it"
    );
}
