//! End to end: the real `toktrace` binary in a real terminal (tmux), on the
//! real-vLLM interference fixture. Opens a request by id, moves to its
//! slowest token, reads the culprit's name in the verdict, switches to the
//! concurrency view and quits. Skipped, saying so, when tmux is missing.
//!
//! The test polls the screen until the expected text appears; it bounds the
//! number of polls, not the time a build machine takes.

use std::path::PathBuf;
use std::process::Command;

/// A tmux server of our own (its socket in a temporary directory), killed
/// when the test ends.
struct Tmux {
    socket: tempfile::TempDir,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(self.socket.path().join("tmux"))
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "view"]).stdout)
            .into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "view"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "send-keys {keys:?}");
    }

    /// Poll until every one of `texts` is on the screen.
    fn wait_for(&self, texts: &[&str]) -> String {
        let mut screen = String::new();
        for _ in 0..600 {
            screen = self.screen();
            if texts.iter().all(|t| screen.contains(t)) {
                return screen;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{texts:?} never appeared; the screen:\n{screen}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[test]
fn view_in_tmux_finds_the_culprit() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED view_in_tmux_finds_the_culprit: tmux is not installed");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let trace = root.join("fixtures/traces/vllm-interference/trace");
    let tokenizer = root.join("fixtures/tiny-llama");
    let tmux = Tmux {
        socket: tempfile::tempdir().expect("temp dir"),
    };
    // The shell stays after the viewer exits so its exit status can be read.
    let command = format!(
        "'{}' view '{}' --request decode-0 --tokenizer '{}'; echo \"viewer exited $?\"; sleep 600",
        env!("CARGO_BIN_EXE_toktrace"),
        trace.display(),
        tokenizer.display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "view",
        "-x",
        "100",
        "-y",
        "30",
        "sh",
        "-c",
        &command,
    ]);
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Opened by id, on its tokens.
    tmux.wait_for(&["tokens of decode-0", "latency"]);
    // Back to the first token, then to the slowest: token 17, stalled by
    // the long prompt's prefill in the same step.
    tmux.keys(&["g"]);
    tmux.wait_for(&["first token:"]);
    tmux.keys(&["w"]);
    let screen = tmux.wait_for(&["#17 ", "waited 1.7 s:"]);
    assert!(screen.contains("long-prompt"), "{screen}");

    // The concurrency view: the stalled step and the culprit's prefill.
    tmux.keys(&["Tab"]);
    tmux.wait_for(&["concurrency around decode-0", "long-prompt+3\u{a0}858", "▶"]);

    // Help, then quit cleanly.
    tmux.keys(&["?"]);
    tmux.wait_for(&["keys (any key closes)"]);
    tmux.keys(&["q"]);
    tmux.wait_for(&["viewer exited 0"]);
}

/// An unknown id fails before the screen opens: a plain message and exit
/// code 3, like the other commands that take --request.
#[test]
fn unknown_id_exits_3_without_opening_the_screen() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let trace = root.join("fixtures/traces/vllm-interference/trace");
    let out = Command::new(env!("CARGO_BIN_EXE_toktrace"))
        .arg("view")
        .arg(&trace)
        .args(["--request", "no-such-request"])
        .output()
        .expect("run toktrace");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no request with id or trace id \"no-such-request\""),
        "{err}"
    );
}
