//! The viewer's screens rendered into ratatui's TestBackend, on the real-vLLM
//! fixture traces (fixtures/traces/) and on edge cases: each test drives the
//! app with key actions and reads the screen as text.

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::path::PathBuf;
use toktrace_analyzer::data::{Process, Request, Slice, StepRow, TraceData};
use toktrace_analyzer::open::NoLoader;
use toktrace_analyzer::{Analysis, AnalyzeOptions, Detail, LoadOptions};
use toktrace_viewer::view::app::{App, Screen};
use toktrace_viewer::view::detok::Detokenizer;
use toktrace_viewer::view::keys::Action;
use toktrace_viewer::view::{prepare, ui, UnknownRequest, ViewArgs};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/traces")
        .join(name)
        .join("trace")
}

fn tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama")
}

/// The viewer as `toktrace view DIR [--request ID] --tokenizer tiny-llama` builds it.
fn open(trace: &str, request: Option<&str>) -> App {
    let dir = fixture(trace);
    let tok = tokenizer();
    prepare(&ViewArgs {
        dir: &dir,
        request,
        tokenizer: Some(&tok),
        use_index: true,
    })
    .expect("the fixture opens")
}

/// The screen as text, one line per row.
fn render(app: &mut App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
    terminal.draw(|frame| ui::draw(frame, app)).expect("draws");
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn has(screen: &str, text: &str) {
    assert!(screen.contains(text), "{text:?} not on screen:\n{screen}");
}

fn title(app: &mut App) -> String {
    render(app, 100, 30)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn requests_list_with_the_trace_strip() {
    let mut app = open("vllm-interference", None);
    let screen = render(&mut app, 80, 24);
    has(&screen, "toktrace view · requests · 5 requests, 46 steps");
    has(&screen, "batch");
    has(&screen, "step");
    has(&screen, "sorted by slowest token");
    // The decoders delayed by the long prompt come first, its name beside them.
    has(&screen, "decode-0");
    has(&screen, "long-prompt");
    has(&screen, "1663.9@17");
    let first_row = screen
        .lines()
        .find(|l| l.contains("@1"))
        .expect("a request row");
    assert!(first_row.contains("decode-"), "{first_row}");
}

#[test]
fn requests_sort_and_filter() {
    let mut app = open("vllm-interference", None);
    app.apply(Action::Sort); // slowest token -> interference
    has(&render(&mut app, 80, 24), "sorted by interference");
    // The filter matches ids, flags and culprits: every decoder names the
    // long prompt as its culprit.
    app.apply(Action::Filter);
    for c in "long".chars() {
        app.apply(Action::Type(c));
    }
    has(&render(&mut app, 80, 24), "5 of 5 shown");
    app.apply(Action::Cancel);
    app.apply(Action::Filter);
    for c in "special".chars() {
        app.apply(Action::Type(c));
    }
    let screen = render(&mut app, 80, 24);
    has(&screen, "filter: special");
    has(&screen, "1 of 5 shown");
    app.apply(Action::Done);
    app.apply(Action::Open);
    assert!(title(&mut app).contains("tokens of long-prompt"));
}

#[test]
fn opening_by_id_lands_on_the_slowest_token_and_names_the_culprit() {
    let mut app = open("vllm-interference", Some("decode-0"));
    let screen = render(&mut app, 80, 24);
    has(&screen, "tokens of decode-0");
    // Token 17 ran beside the long prompt's prefill: its verdict says so.
    has(&screen, "#17 ");
    has(&screen, "waited 1.7 s:");
    has(&screen, "long-prompt");
    has(&screen, "3\u{a0}858");
    has(&screen, "tokens, 100\u{a0}%");
    has(&screen, "co-scheduled prefill 3\u{a0}858 tok");
    // Its candidates, with the sampled one's rank.
    has(&screen, "top-K (sampled rank");
}

#[test]
fn slow_token_keys_move_between_slow_tokens() {
    let mut app = open("vllm-interference", Some("decode-0"));
    app.apply(Action::Top);
    has(&render(&mut app, 80, 24), "first token:");
    app.apply(Action::NextSlow);
    let Screen::Tokens(view) = app.screen() else {
        panic!("not on the tokens screen")
    };
    let first_slow = view.selected;
    assert!(view.tokens[first_slow].slow);
    app.apply(Action::Slowest);
    let Screen::Tokens(view) = app.screen() else {
        panic!("not on the tokens screen")
    };
    assert_eq!(view.tokens[view.selected].timing.index, 17);
    app.apply(Action::Bottom);
    app.apply(Action::NextSlow);
    has(&render(&mut app, 80, 24), "no slow token that way");
}

#[test]
fn culprit_key_opens_the_culprit_and_back_returns() {
    let mut app = open("vllm-interference", Some("decode-0"));
    app.apply(Action::Culprit);
    let screen = render(&mut app, 80, 24);
    has(&screen, "tokens of long-prompt");
    // Its answer is BOS tokens: shown as such, never as empty text.
    has(&screen, "⟨bos⟩");
    has(&screen, "id 0, special ⟨bos⟩");
    // Its tokens carry no candidates.
    has(&screen, "top-K");
    has(&screen, "not captured (logprobs not requested");
    app.apply(Action::Back);
    has(&render(&mut app, 80, 24), "tokens of decode-0");
    app.apply(Action::Back);
    app.apply(Action::Back);
    has(&render(&mut app, 80, 24), "· requests ·");
}

#[test]
fn concurrency_view_shows_the_culprit_in_the_stalled_step() {
    let mut app = open("vllm-interference", Some("decode-0"));
    app.apply(Action::Concurrency);
    let screen = render(&mut app, 100, 30);
    has(&screen, "concurrency around decode-0");
    has(&screen, "token 17 of decode-0");
    has(&screen, "▶");
    has(&screen, "long-prompt+3\u{a0}858");
    has(&screen, "step 17 took 1.7 s");
    // Moving along time changes the step under the cursor.
    app.apply(Action::Down);
    has(&render(&mut app, 100, 30), "step 18 took");
    app.apply(Action::Up);
    // Members: the prefill first, then the request examined; l moves along.
    app.apply(Action::Right);
    has(&render(&mut app, 100, 30), "selected decode-0: decode");
    app.apply(Action::Left);
    has(&render(&mut app, 100, 30), "selected long-prompt: prefill");
    // The first member of the stalled step is the prefill: Enter opens it.
    app.apply(Action::Open);
    assert!(title(&mut app).contains("tokens of long-prompt"));
    app.apply(Action::Back);
    app.apply(Action::Concurrency); // Tab: back to the tokens
    assert!(title(&mut app).contains("tokens of decode-0"));
}

#[test]
fn concurrency_at_80_by_24() {
    let mut app = open("vllm-preempt", None);
    app.apply(Action::Open);
    app.apply(Action::Concurrency);
    let screen = render(&mut app, 80, 24);
    has(&screen, "concurrency around");
    has(&screen, "step under the cursor");
}

#[test]
fn help_overlay_and_quit() {
    let mut app = open("vllm-interference", None);
    app.apply(Action::Help);
    let screen = render(&mut app, 80, 24);
    has(&screen, "keys (any key closes)");
    has(&screen, "the slowest token");
    has(&screen, "concurrency view around the token");
    app.apply(Action::Down); // closes the help, does not move
    assert!(!app.help);
    app.apply(Action::Quit);
    assert!(app.quit);
}

#[test]
fn small_terminal_says_so_and_resizing_recovers() {
    let mut app = open("vllm-interference", Some("decode-0"));
    has(&render(&mut app, 60, 20), "terminal too small");
    has(&render(&mut app, 79, 24), "needs 80×24");
    has(&render(&mut app, 1, 1), "t");
    has(&render(&mut app, 200, 60), "tokens of decode-0");
    has(&render(&mut app, 80, 24), "tokens of decode-0");
    app.apply(Action::Concurrency);
    for (w, h) in [(80, 24), (300, 100), (81, 25), (20, 5)] {
        render(&mut app, w, h);
    }
}

#[test]
fn unknown_request_is_an_unknown_request_error() {
    let dir = fixture("vllm-interference");
    let err = prepare(&ViewArgs {
        dir: &dir,
        request: Some("no-such-request"),
        tokenizer: None,
        use_index: true,
    })
    .err()
    .expect("an unknown id fails");
    assert!(err.downcast_ref::<UnknownRequest>().is_some(), "{err:#}");
    assert!(format!("{err:#}").contains("no-such-request"));
}

#[test]
fn a_missing_tokenizer_given_explicitly_is_an_error() {
    let dir = fixture("vllm-interference");
    let missing = PathBuf::from("/nonexistent/tokenizer.json");
    let err = prepare(&ViewArgs {
        dir: &dir,
        request: None,
        tokenizer: Some(&missing),
        use_index: true,
    })
    .err()
    .expect("fails");
    assert!(format!("{err:#}").contains("/nonexistent/tokenizer.json"));
}

/// A viewer on an already loaded trace.
fn app_of(data: TraceData) -> App {
    let detok = Detokenizer::resolve(None, &data).expect("no tokenizer asked for");
    App::new(
        Analysis::new(data, &AnalyzeOptions::default()),
        detok,
        Box::new(NoLoader),
    )
}

#[test]
fn empty_trace_says_so() {
    let mut app = app_of(TraceData::default());
    let screen = render(&mut app, 80, 24);
    has(&screen, "this trace holds no requests");
    has(&screen, "no engine steps in this trace");
    for a in [
        Action::Down,
        Action::Open,
        Action::Bottom,
        Action::Sort,
        Action::Concurrency,
        Action::Culprit,
    ] {
        app.apply(a);
        render(&mut app, 80, 24);
    }
}

#[test]
fn trace_without_ids_or_top_k() {
    // Loaded without detail and with nothing to fetch: as a trace recorded at
    // capture level metadata shows.
    let data = toktrace_analyzer::load(&fixture("vllm-interference"), &LoadOptions::default())
        .expect("loads");
    let mut app = app_of(data);
    app.apply(Action::Open);
    let screen = render(&mut app, 80, 24);
    has(&screen, "no token ids captured");
    has(&screen, "id not captured");
    has(&screen, "not captured (logprobs not requested");
    // The timing story does not need ids.
    has(&screen, "waited 1.7 s:");
}

#[test]
fn ids_without_a_tokenizer_show_as_ids() {
    let options = LoadOptions {
        detail: Detail::All,
        ..Default::default()
    };
    let mut data = toktrace_analyzer::load(&fixture("vllm-interference"), &options).expect("loads");
    // As if recorded on another machine: the model path does not exist here.
    for p in &mut data.processes {
        if let Some(info) = p.info.as_mut() {
            info.model_path = Some("/elsewhere/model".into());
        }
    }
    let mut app = app_of(data);
    app.apply(Action::Open);
    let screen = render(&mut app, 160, 30);
    has(
        &screen,
        "ids shown: no tokenizer.json at the recorded model path /elsewhere/model",
    );
    has(&screen, "#262");
}

#[test]
fn text_is_decoded_with_the_tokenizer() {
    let mut app = open("vllm-mixed", None);
    app.apply(Action::Open);
    let Screen::Tokens(view) = app.screen() else {
        panic!("not on the tokens screen")
    };
    let decoded = view
        .tokens
        .iter()
        .filter(|t| {
            matches!(&t.text, toktrace_viewer::view::detok::TokenText::Text(s) if !s.starts_with('#'))
        })
        .count();
    assert!(decoded > 0, "no token decoded to text");
}

/// A hand-made trace: one engine, three steps; "busy" prefills 500 tokens in
/// step 1 beside "victim"'s decode, "never" arrived but was never scheduled.
fn tiny_trace() -> TraceData {
    let ms = 1_000_000u64;
    let step = |i: u64, start: u64, end: u64, prefill: u32, decode: u32| StepRow {
        step_id: i,
        start_ns: start * ms,
        end_ns: end * ms,
        requests: 1 + u32::from(prefill > 0),
        prefill_tokens: prefill,
        decode_tokens: decode,
        sampled: 1,
        ..Default::default()
    };
    let mut data = TraceData {
        processes: vec![Process {
            name: "engine".into(),
            ..Default::default()
        }],
        steps: vec![
            step(0, 0, 10, 8, 0),
            step(1, 11, 200, 500, 1),
            step(2, 201, 210, 0, 1),
        ],
        slices: vec![
            Slice {
                step: 0,
                request: 0,
                prefill_tokens: 8,
                ..Default::default()
            },
            Slice {
                step: 1,
                request: 1,
                prefill_tokens: 500,
                ..Default::default()
            },
        ],
        requests: vec![
            Request {
                key: 0,
                internal_id: "victim".into(),
                engine_arrival_ns: Some(0),
                prompt_tokens: 8,
                token_index: vec![0, 1, 2],
                token_step: vec![0, 1, 2],
                first_scheduled: Some(0),
                ..Default::default()
            },
            Request {
                key: 1,
                internal_id: "busy".into(),
                engine_arrival_ns: Some(5 * ms),
                prompt_tokens: 500,
                token_index: vec![0],
                token_step: vec![1],
                first_scheduled: Some(1),
                ..Default::default()
            },
            Request {
                key: 2,
                internal_id: "never".into(),
                engine_arrival_ns: Some(6 * ms),
                prompt_tokens: 4,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    data.index_slices();
    data
}

#[test]
fn a_request_without_tokens_says_so() {
    let data = tiny_trace();
    let never = toktrace_analyzer::open::resolve(&data, "never").expect("found");
    let mut app = app_of(data);
    app.open_request(never);
    let screen = render(&mut app, 80, 24);
    has(&screen, "tokens of never");
    has(&screen, "no generated tokens recorded for this request");
    app.apply(Action::Concurrency);
    has(
        &render(&mut app, 80, 24),
        "this request never ran in a step",
    );
    for a in [
        Action::NextSlow,
        Action::Slowest,
        Action::Culprit,
        Action::Down,
    ] {
        app.apply(a);
        render(&mut app, 80, 24);
    }
}

#[test]
fn a_hand_made_trace_opens_in_every_screen() {
    let mut app = app_of(tiny_trace());
    has(&render(&mut app, 80, 24), "victim");
    app.apply(Action::Filter);
    for c in "victim".chars() {
        app.apply(Action::Type(c));
    }
    app.apply(Action::Done);
    app.apply(Action::Open);
    let screen = render(&mut app, 80, 24);
    has(&screen, "tokens of victim");
    // No ids at all: the timing story still shows.
    has(&screen, "no token ids captured");
    app.apply(Action::Concurrency);
    let screen = render(&mut app, 80, 24);
    has(&screen, "concurrency around victim");
    has(&screen, "busy+500");
    for a in [
        Action::Top,
        Action::Bottom,
        Action::PageUp,
        Action::PageDown,
        Action::Right,
    ] {
        app.apply(a);
        render(&mut app, 80, 24);
    }
}

/// A synthetic continuous-batching trace (thousands of steps, preemptions,
/// chunked prefill, frontend emits, a few special tokens) through every
/// screen and the slow-token, culprit and concurrency keys.
#[test]
fn a_synthetic_workload_through_every_screen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = toktrace_workload::WorkloadConfig {
        seed: 11,
        tokens: Some(40_000),
        requests: None,
        rate: 25.0,
        prompt_median: 300,
        output_median: 80,
        kv_blocks: 900,
        frontend: true,
        special_rate: 0.01,
        ..Default::default()
    };
    let truth = toktrace_workload::generate(&config, dir.path()).expect("generate");
    assert!(truth.ok(), "{truth}");
    let mut app = prepare(&ViewArgs {
        dir: dir.path(),
        request: None,
        tokenizer: None,
        use_index: true,
    })
    .expect("opens");
    has(&render(&mut app, 80, 24), "sorted by slowest token");
    app.apply(Action::Open);
    let screen = render(&mut app, 80, 24);
    has(&screen, "tokens of");
    has(&screen, "▶ waited");
    app.apply(Action::Culprit);
    render(&mut app, 120, 40);
    app.apply(Action::Back);
    app.apply(Action::Concurrency);
    has(&render(&mut app, 80, 24), "concurrency around");
    for a in [
        Action::PageDown,
        Action::PageDown,
        Action::Right,
        Action::Right,
        Action::Bottom,
        Action::Top,
        Action::Open,
        Action::NextSlow,
        Action::PageDown,
        Action::Concurrency,
        Action::Back,
        Action::Back,
        Action::Back,
        Action::Sort,
        Action::Reverse,
        Action::Interfered,
        Action::Bottom,
        Action::Open,
    ] {
        app.apply(a);
        render(&mut app, 80, 24);
        render(&mut app, 200, 60);
    }
}

/// Many small culprits are summed up rather than one named; a sampled token
/// outside the recorded candidates is pointed out.
#[test]
fn many_culprits_and_a_token_outside_the_top_k() {
    let mut app = open("vllm-mixed", Some("0-831f2a85"));
    let screen = render(&mut app, 80, 24);
    has(&screen, "prefill of 18 requests");
    has(&screen, "is not among them");
    has(&screen, "culprits (18)");
}

/// A loader that cannot read the trace any more (deleted, unreadable).
struct Gone;

impl toktrace_analyzer::open::DetailLoader for Gone {
    fn load(
        &self,
        _: &TraceData,
        _: toktrace_analyzer::data::RequestIx,
    ) -> Result<Option<toktrace_analyzer::data::TokenDetail>, toktrace_analyzer::open::OpenError>
    {
        Err(toktrace_analyzer::open::OpenError::Read {
            what: "the trace directory is gone".into(),
            source: probe_core::reader::ReadError::NotFound(PathBuf::from("/gone")),
        })
    }
}

#[test]
fn a_failed_detail_load_is_shown_not_fatal() {
    let data = toktrace_analyzer::load(&fixture("vllm-interference"), &LoadOptions::default())
        .expect("loads");
    let detok = Detokenizer::resolve(None, &data).expect("no tokenizer asked for");
    let mut app = App::new(
        Analysis::new(data, &AnalyzeOptions::default()),
        detok,
        Box::new(Gone),
    );
    app.apply(Action::Open);
    let screen = render(&mut app, 120, 30);
    has(
        &screen,
        "token detail not loaded: the trace directory is gone",
    );
    has(&screen, "▶ waited 1.7 s:");
}

/// A step with more requests than the row can hold scrolls sideways to the
/// one chosen with h/l, and says how many it scrolled past.
#[test]
fn a_full_step_scrolls_sideways_to_the_chosen_request() {
    let mut app = open("vllm-mixed", Some("0-831f2a85"));
    app.apply(Action::Concurrency);
    for _ in 0..40 {
        app.apply(Action::Right);
    }
    let screen = render(&mut app, 80, 24);
    let chosen = screen
        .lines()
        .find_map(|l| l.split("selected ").nth(1))
        .and_then(|rest| rest.split(':').next())
        .map(str::trim)
        .expect("the chosen request is named")
        .to_string();
    let row = screen
        .lines()
        .find(|l| l.contains('‹'))
        .unwrap_or_else(|| panic!("no row scrolled sideways:\n{screen}"));
    assert!(
        row.contains(&chosen),
        "{chosen} not in the row {row:?}\n{screen}"
    );
    // Back to the first member: nothing scrolled past any more.
    for _ in 0..40 {
        app.apply(Action::Left);
    }
    let screen = render(&mut app, 80, 24);
    assert!(!screen.contains('‹'), "{screen}");
}
