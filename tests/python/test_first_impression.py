"""What a new user sees first, on real vLLM traces: the engine's warm-up
reported apart (not folded into every request's TTFT), and the sequences of
an `n > 1` request told apart wherever an id is shown."""

from __future__ import annotations

from pathlib import Path

from conftest import cli_json, run_cli

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"
# 19 requests submitted at once; vLLM's first step (one prompt of 81 tokens)
# took 4.7 s on the CPU, the next ones tens of milliseconds.
MIXED = str(FIXTURES / "vllm-mixed" / "trace")


def test_the_warm_up_is_reported_apart_and_left_out_of_the_statistics() -> None:
    s = cli_json("summary", MIXED)
    [w] = s["warmup"]
    assert w["steps"] == 1 and w["duration_ms"] > 1000, w
    assert w["requests"] == s["requests"] == 19
    assert s["warmup_included"] is False
    # Served from the warm-up's end, the requests waited tens of milliseconds.
    assert s["ttft_ms"]["p50"] < 0.1 * w["duration_ms"], s["ttft_ms"]
    whole = cli_json("summary", MIXED, "--include-warmup")
    assert whole["warmup_included"] is True
    assert whole["ttft_ms"]["p50"] > w["duration_ms"], whole["ttft_ms"]
    assert whole["duration_s"] > s["duration_s"]
    text = run_cli("summary", MIXED).stdout
    assert "warm-up:" in text and "--include-warmup" in text
    # The lists keep every request, as it happened, and say which waited.
    rows = cli_json("requests", MIXED)
    assert all(r["warmup"] for r in rows)
    assert min(r["ttft_ms"] for r in rows) > w["duration_ms"] * 0.9


def test_the_html_report_charts_serving_not_start_up(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert run_cli("export", MIXED, "--format", "html", "--out", str(out)).returncode == 0
    page = out.read_text()
    assert 'id="warmup"' in page
    whole = tmp_path / "whole.html"
    assert run_cli("export", MIXED, "--format", "html", "--out", str(whole), "--include-warmup").returncode == 0
    assert 'id="warmup"' not in whole.read_text()


def test_the_sequences_of_an_n2_request_are_told_apart() -> None:
    rows = cli_json("requests", MIXED)
    ids = [r["request_id"] for r in rows]
    assert len(set(ids)) == len(ids), sorted(ids)
    pair = sorted((r for r in rows if r["request_id"].startswith("5#")), key=lambda r: r["request_id"])
    assert [r["request_id"] for r in pair] == ["5#0", "5#1"]
    # vLLM names its sequences k_ID: #k is the choice's index.
    assert all(r["internal_id"].startswith(r["request_id"][-1] + "_5-") for r in pair)
    for r in pair:
        toks = cli_json("tokens", MIXED, "--request", r["request_id"])
        assert len(toks) == r["output_tokens"] > 0
    # The shared id still finds both, and says so.
    both = run_cli("tokens", MIXED, "--request", "5")
    assert both.returncode != 0 and "5#0" in both.stderr + both.stdout
