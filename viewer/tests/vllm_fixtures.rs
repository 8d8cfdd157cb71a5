//! The analysis commands on the real-vLLM fixture traces (fixtures/traces/,
//! recorded by fixtures/record_vllm_traces.sh), checked against what vLLM
//! itself returned in that run (outputs.json beside each trace).

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/traces")
        .join(name)
}

fn toktrace_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_toktrace"))
        .args(args)
        .arg("--json")
        .output()
        .expect("run toktrace");
    assert!(
        out.status.success(),
        "toktrace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn outputs(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("outputs.json")).expect("outputs.json");
    serde_json::from_str(&text).expect("outputs.json is JSON")
}

/// vLLM's requests, one entry per completion: (request id, completion index,
/// prompt length, cached tokens, completion object).
fn completions(out: &Value) -> Vec<(String, usize, usize, u64, Value)> {
    let mut v = Vec::new();
    for r in out["requests"].as_array().unwrap() {
        for o in r["outputs"].as_array().unwrap() {
            v.push((
                r["request_id"].as_str().unwrap().to_string(),
                o["index"].as_u64().unwrap() as usize,
                r["prompt_token_ids"].as_array().unwrap().len(),
                r["num_cached_tokens"].as_u64().unwrap_or(0),
                o.clone(),
            ));
        }
    }
    v
}

/// The analyzer's row of a vLLM completion: vLLM names the child requests of
/// an n > 1 request `{index}_{id}-…` inside the engine.
fn row_of<'a>(rows: &'a [Value], id: &str, index: usize, n: usize) -> &'a Value {
    let matching: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            let internal = r["internal_id"].as_str().unwrap();
            // The sequences of an n > 1 request are shown as ID#k.
            let shown = if n == 1 {
                id.to_string()
            } else {
                format!("{id}#{index}")
            };
            r["request_id"] == shown.as_str()
                && (n == 1 || internal.starts_with(&format!("{index}_{id}-")))
        })
        .collect();
    assert_eq!(matching.len(), 1, "{id}/{index}: {matching:?}");
    matching[0]
}

#[test]
fn mixed_metrics_and_tokens_agree_with_vllm() {
    let dir = fixture("vllm-mixed").join("trace");
    let dir = dir.to_str().unwrap();
    let out = outputs("vllm-mixed");
    let rows = toktrace_json(&["requests", dir]);
    let rows = rows.as_array().unwrap();
    let comps = completions(&out);
    assert_eq!(rows.len(), comps.len());
    for (id, index, prompt, cached, o) in &comps {
        let n = comps.iter().filter(|c| &c.0 == id).count();
        let row = row_of(rows, id, *index, n);
        let ids: Vec<u64> = o["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(row["output_tokens"], ids.len(), "{id}");
        assert_eq!(row["prompt_tokens"], *prompt, "{id}");
        if n == 1 {
            assert_eq!(row["cached_tokens"], *cached, "{id}");
        }
        assert_eq!(row["finish_reason"], o["finish_reason"], "{id}");
        let ttft = row["ttft_ms"].as_f64().unwrap();
        let ttft_emit = row["ttft_emit_ms"].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft_emit >= ttft, "{row}");
        if ids.len() > 1 {
            let max = row["max_itl_ms"].as_f64().unwrap();
            assert!(max >= row["itl_p50_ms"].as_f64().unwrap(), "{row}");
            let index = row["max_itl_index"].as_u64().unwrap() as usize;
            assert!(index >= 1 && index < ids.len(), "{row}");
        }

        // Token by token, by the internal id (the external one names both
        // children of the n = 2 request).
        let internal = row["internal_id"].as_str().unwrap();
        let tokens = toktrace_json(&["tokens", dir, "--request", internal]);
        let tokens = tokens.as_array().unwrap();
        assert_eq!(tokens.len(), ids.len());
        let logprobs = o["logprobs"].as_array().unwrap();
        let mut prev_exit = 0;
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(t["index"], i);
            assert_eq!(t["token_id"], ids[i], "{id} token {i}");
            // outputs.json keeps vLLM's dict {token_id: [logprob, rank]}.
            let mine = &logprobs[i][ids[i].to_string()];
            let lp = t["logprob"].as_f64().unwrap();
            assert!((lp - mine[0].as_f64().unwrap()).abs() < 1e-5, "{id} {i}");
            assert_eq!(t["rank"], mine[1], "{id} {i}");
            let top = t["top"].as_array().unwrap();
            assert_eq!(top.len(), 5);
            for c in top {
                let key = c["token_id"].to_string();
                let theirs = &logprobs[i][&key];
                assert!(theirs.is_array(), "{id} {i}: candidate {key} not in vLLM's");
                assert!(
                    (c["logprob"].as_f64().unwrap() - theirs[0].as_f64().unwrap()).abs() < 1e-5
                );
            }
            let enter = t["enter_unix_ns"].as_u64().unwrap();
            let exit = t["exit_unix_ns"].as_u64().unwrap();
            let emit = t["emit_unix_ns"].as_u64().expect("offline runs emit too");
            assert!(enter <= exit && exit <= emit, "{t}");
            assert!(exit > prev_exit);
            prev_exit = exit;
            assert!(t["batch_requests"].as_u64().unwrap() >= 1);
        }
    }
}

#[test]
fn interference_names_the_long_prompt() {
    let dir = fixture("vllm-interference").join("trace");
    let dir = dir.to_str().unwrap();
    let rows = toktrace_json(&["requests", dir]);
    let rows = rows.as_array().unwrap();
    let decoders: Vec<&Value> = rows
        .iter()
        .filter(|r| r["request_id"].as_str().unwrap().starts_with("decode-"))
        .collect();
    assert_eq!(decoders.len(), 4);
    for d in &decoders {
        let id = d["request_id"].as_str().unwrap();
        assert_eq!(d["top_culprits"][0]["request_id"], "long-prompt", "{d}");
        assert!(d["interference_ms"].as_f64().unwrap() > 0.0);
        assert!(
            d["flags"].as_array().unwrap().is_empty()
                || !d["flags"].to_string().contains("preempted")
        );
        let report = toktrace_json(&["interference", dir, "--request", id]);
        assert_eq!(report["request_id"], id);
        let slowest = &report["slow_tokens"][0];
        // The slowest token is the one computed beside the long prefill, and
        // the long prompt carries most of its excess.
        assert_eq!(
            slowest["index"].as_u64(),
            d["max_itl_index"].as_u64(),
            "{report}"
        );
        let culprit = &slowest["culprits"][0];
        assert_eq!(culprit["request_id"], "long-prompt", "{report}");
        assert!(culprit["share"].as_f64().unwrap() >= 0.9, "{report}");
    }
    let trace = toktrace_json(&["interference", dir]);
    assert_eq!(trace["offenders"][0]["request_id"], "long-prompt");
    assert_eq!(trace["offenders"][0]["victims"], 4);
    let summary = toktrace_json(&["summary", dir]);
    assert_eq!(summary["top_offenders"][0]["request_id"], "long-prompt");
    assert!(summary["stalls"].as_u64().unwrap() >= 4);
}

#[test]
fn preemptions_are_counted_and_tokens_still_complete() {
    let dir = fixture("vllm-preempt").join("trace");
    let dir = dir.to_str().unwrap();
    let out = outputs("vllm-preempt");
    let rows = toktrace_json(&["requests", dir]);
    let rows = rows.as_array().unwrap();
    for (id, index, _, _, o) in completions(&out) {
        let row = row_of(rows, &id, index, 1);
        assert_eq!(
            row["output_tokens"],
            o["token_ids"].as_array().unwrap().len()
        );
    }
    let preempted: Vec<&Value> = rows
        .iter()
        .filter(|r| r["preemptions"].as_u64().unwrap() > 0)
        .collect();
    assert!(!preempted.is_empty());
    for r in preempted {
        assert!(r["flags"].to_string().contains("preempted"), "{r}");
    }
    let summary = toktrace_json(&["summary", dir]);
    assert!(summary["preemptions"].as_u64().unwrap() > 0);
}

/// `|ours - theirs| <= abs_ms + rel * theirs`.
fn close(ours: f64, theirs: f64, abs_ms: f64, rel: f64) -> bool {
    (ours - theirs).abs() <= abs_ms + rel * theirs.abs()
}

/// The analyzer's figures against what vLLM measured itself in the same run
/// (RequestOutput.metrics, kept in outputs.json by the scenario script):
/// engine-side TPOT and prefill from vLLM's engine-core stamps, the frontend's
/// first-token latency, preemptions and token counts.
#[test]
fn metrics_agree_with_vllms_own_measurements() {
    for scenario in ["vllm-mixed", "vllm-preempt"] {
        let dir = fixture(scenario).join("trace");
        let dir = dir.to_str().unwrap();
        let out = outputs(scenario);
        let rows = toktrace_json(&["requests", dir]);
        let rows = rows.as_array().unwrap();
        let mut compared = 0;
        for r in out["requests"].as_array().unwrap() {
            let outs = r["outputs"].as_array().unwrap();
            if outs.len() != 1 {
                continue; // vLLM's metrics of an n > 1 request cover all its children
            }
            let m = &r["metrics"];
            assert!(
                m.is_object(),
                "{scenario}: outputs.json has no vLLM metrics"
            );
            let id = r["request_id"].as_str().unwrap();
            let row = row_of(rows, id, 0, 1);
            let n = outs[0]["token_ids"].as_array().unwrap().len();
            assert_eq!(row["output_tokens"], m["num_generation_tokens"], "{id}");
            assert_eq!(row["preemptions"], m["num_preemptions"], "{id}");
            let s = |k: &str| m[k].as_f64().unwrap();
            let prefill = (s("first_token_ts") - s("scheduled_ts")) * 1e3;
            let ours = row["prefill_ms"].as_f64().unwrap();
            assert!(
                close(ours, prefill, 2.0, 0.05),
                "{scenario} {id}: prefill {ours} vs vLLM {prefill}"
            );
            let ttft = s("first_token_latency") * 1e3;
            let ours = row["ttft_emit_ms"].as_f64().unwrap();
            assert!(
                close(ours, ttft, 2.0, 0.05),
                "{scenario} {id}: TTFT {ours} vs vLLM {ttft}"
            );
            if n > 1 {
                let tpot = (s("last_token_ts") - s("first_token_ts")) * 1e3 / (n - 1) as f64;
                let ours = row["tpot_ms"].as_f64().unwrap();
                assert!(
                    close(ours, tpot, 0.5, 0.05),
                    "{scenario} {id}: TPOT {ours} vs vLLM {tpot}"
                );
            }
            compared += 1;
        }
        assert!(compared >= 10, "{scenario}: {compared} requests compared");
    }
}
