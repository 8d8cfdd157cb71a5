//! The analyzer on a synthetic continuous-batching trace (toktrace-workload,
//! written through the real probe): counts, joins and the step model hold up
//! against the generator's own ground truth, whose step-time law is not the
//! analyzer's linear form.

use toktrace_analyzer::{load, Analysis, AnalyzeOptions, LoadOptions};
use toktrace_workload::{generate, WorkloadConfig};

fn workload(dir: &std::path::Path) -> toktrace_workload::Summary {
    let config = WorkloadConfig {
        seed: 7,
        tokens: Some(60_000),
        requests: None,
        rate: 25.0,
        prompt_median: 300,
        output_median: 80,
        kv_blocks: 900,
        frontend: true,
        ..Default::default()
    };
    let summary = generate(&config, dir).expect("generate");
    assert!(summary.ok(), "{summary}");
    summary
}

#[test]
fn synthetic_trace_counts_joins_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let truth = workload(dir.path());
    assert!(
        truth.preemptions > 0,
        "the workload should preempt: {truth}"
    );
    let data = load(dir.path(), &LoadOptions::default()).expect("load");
    assert!(data.warnings.is_empty(), "{:?}", data.warnings);
    let a = Analysis::new(data, &AnalyzeOptions::default());
    let s = a.summary();
    assert_eq!(s.tokens, truth.tokens);
    assert_eq!(s.steps as u64, truth.steps);
    assert_eq!(s.requests as u64, truth.requests);
    assert_eq!(s.preemptions, truth.preemptions);
    assert_eq!(s.unmatched_frontend_requests, 0);

    for r in 0..a.data.requests.len() as u32 {
        let row = a.request_row(r);
        assert!(!row.flags.contains(&"missing_tokens"), "{row:?}");
        // The frontend's emits are joined: the client sees each first token
        // after the engine produced it.
        if row.output_tokens > 0 {
            let (t, e) = (row.ttft_ms.unwrap(), row.ttft_emit_ms.unwrap());
            assert!(e >= t, "{row:?}");
        }
        // Attribution never hands out more than a token's excess.
        for t in a.timings(r) {
            assert!(t.attributed_ns() <= t.excess_ns + 1.0, "{t:?}");
        }
    }

    // The fitted linear model tracks the non-linear law: the median relative
    // error of its predictions stays small.
    let model = a.models[0].model.expect("a model for the engine");
    let mut err: Vec<f64> = a
        .data
        .steps
        .iter()
        .filter(|s| s.process == 0)
        .map(|s| (model.predict_step(s) - s.duration_ns() as f64).abs() / s.duration_ns() as f64)
        .collect();
    err.sort_by(|x, y| x.total_cmp(y));
    let median = err[err.len() / 2];
    assert!(median < 0.10, "median relative error {median}");

    // Long prompts do the delaying: the worst offender's prompt is longer than
    // the median request's.
    let mut prompts: Vec<u32> = a.data.requests.iter().map(|r| r.prompt_tokens).collect();
    prompts.sort_unstable();
    let top = &a.offenders[0];
    assert!(
        a.data.requests[top.request as usize].prompt_tokens > prompts[prompts.len() / 2],
        "{top:?}"
    );
}
