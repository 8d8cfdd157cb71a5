//! An indexed trace answers as the unindexed one: `toktrace index`, then the
//! per-request commands and the viewer on the real-vLLM and SGLang fixture
//! traces read only a request's window and say the same things.

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::path::{Path, PathBuf};
use std::process::Command;
use toktrace_viewer::view::app::App;
use toktrace_viewer::view::{prepare, ui, ViewArgs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/traces")
        .join(name)
        .join("trace")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of a fixture trace with its index built by `toktrace index`.
fn indexed(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(name), dir.path());
    let out = toktrace(&["index", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("indexed "), "{said}");
    assert!(dir.path().join(".toktrace-index").is_file());
    dir
}

fn toktrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_toktrace"))
        .args(args)
        .output()
        .expect("run toktrace")
}

fn stdout(args: &[&str]) -> String {
    let out = toktrace(args);
    assert!(
        out.status.success(),
        "toktrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn request_ids(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&["requests", dir.to_str().unwrap(), "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn per_request_commands_answer_the_same_through_the_index() {
    for name in ["vllm-interference", "vllm-preempt", "sglang-interference"] {
        let plain = fixture(name);
        let copy = indexed(name);
        let ids = request_ids(&plain);
        assert!(ids.len() >= 4, "{name}: {ids:?}");
        for id in &ids {
            for command in ["tokens", "interference"] {
                let want = stdout(&[command, plain.to_str().unwrap(), "--request", id, "--json"]);
                let got = stdout(&[
                    command,
                    copy.path().to_str().unwrap(),
                    "--request",
                    id,
                    "--json",
                ]);
                assert_eq!(got, want, "{name} {command} {id}");
            }
        }
        // Unknown ids keep their exit code through the index.
        let out = toktrace(&[
            "tokens",
            copy.path().to_str().unwrap(),
            "--request",
            "nope",
            "--json",
        ]);
        assert_eq!(out.status.code(), Some(3));
        // A second `index` finds it current.
        let again = stdout(&["index", copy.path().to_str().unwrap()]);
        assert!(again.contains("index is current"), "{again}");
    }
}

fn render(app: &mut App) -> Vec<String> {
    let (width, height) = (120, 30);
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| ui::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect())
        .collect()
}

#[test]
fn the_viewer_opens_a_request_on_its_window() {
    let copy = indexed("vllm-interference");
    let tokenizer = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
    for id in request_ids(&fixture("vllm-interference")) {
        let open = |dir: &Path, use_index: bool| {
            prepare(&ViewArgs {
                dir,
                request: Some(&id),
                tokenizer: Some(&tokenizer),
                use_index,
            })
            .expect("opens")
        };
        let mut through_index = open(copy.path(), true);
        let mut whole = open(copy.path(), false);
        assert!(
            through_index.status.contains("window of"),
            "{}",
            through_index.status
        );
        // Same tokens, texts, verdicts and detail; only the title and the
        // status line (which say how it was opened) differ.
        let (a, b) = (render(&mut through_index), render(&mut whole));
        assert!(a[0].contains(&format!("window of {id}")), "{}", a[0]);
        assert_eq!(a[1..a.len() - 1], b[1..b.len() - 1], "{id}");
    }
}
