"""`toktrace export --format otlp`: request spans received by a real OTLP
receiver built from the official `opentelemetry-proto` package (gRPC through
grpcio, HTTP/protobuf through the standard library's HTTP server)."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import cli_json, run_cli

grpc = pytest.importorskip("grpc")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "traces"
INTERFERENCE = FIXTURES / "vllm-interference" / "trace"
# SGLang HTTP-server fixture: one request was sent with a W3C traceparent.
TRACED = FIXTURES / "sglang-mixed" / "trace"


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's name)
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def grpc_receiver() -> Iterator[tuple[str, GrpcReceiver]]:
    receiver = GrpcReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"http://127.0.0.1:{port}", receiver
    server.stop(grace=None)


@pytest.fixture(scope="module")
def http_receiver() -> Iterator[tuple[str, list[Any], list[str]]]:
    received: list[Any] = []
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            paths.append(self.path)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            received.append(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received, paths
    server.shutdown()


def spans_of(requests: list[Any]) -> list[tuple[Any, Any]]:
    """(resource, span) of every span received."""
    out = []
    for req in requests:
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.append((rs.resource, span))
    return out


def value(attr: Any) -> Any:
    v = attr.value
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return value_of(v)


def value_of(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def attrs(span: Any) -> dict[str, Any]:
    return {a.key: value(a) for a in span.attributes}


def test_grpc_spans_carry_genai_and_token_level_attributes(grpc_receiver: tuple[str, GrpcReceiver]) -> None:
    endpoint, receiver = grpc_receiver
    receiver.requests.clear()
    proc = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", endpoint, "--protocol", "grpc")
    assert proc.returncode == 0, proc.stderr
    rows = {r["request_id"]: r for r in cli_json("requests", str(INTERFERENCE))}
    spans = spans_of(receiver.requests)
    assert len(spans) == len(rows)
    resource = {a.key: value(a) for a in spans[0][0].attributes}
    assert resource["service.name"] == "vllm"
    for _, span in spans:
        a = attrs(span)
        row = rows[a["gen_ai.response.id"]]
        assert a["gen_ai.operation.name"] == "text_completion"
        assert a["gen_ai.provider.name"] == "vllm"
        assert a["gen_ai.request.model"].endswith("tiny-llama")
        assert a["gen_ai.usage.input_tokens"] == row["prompt_tokens"]
        assert a["gen_ai.usage.output_tokens"] == row["output_tokens"]
        assert a["gen_ai.response.finish_reasons"] == [row["finish_reason"]]
        assert a["gen_ai.response.time_to_first_token"] == round(row["ttft_ms"] * 1000)
        # Token level: one value per output token, times from the span start.
        n = row["output_tokens"]
        generate = a["gen_ai.response.per_token_time_to_generate"]
        schedule = a["gen_ai.response.per_token_time_to_schedule"]
        assert len(generate) == len(schedule) == n
        assert generate == sorted(generate)
        assert all(s <= g for s, g in zip(schedule, generate))
        assert generate[0] * 1000 == pytest.approx(row["ttft_ms"], abs=0.01)
        assert len(a["gen_ai.iteration.per_token_batch_size"]) == n
        assert min(a["gen_ai.iteration.per_token_batch_size"]) >= 1
        ids = json.loads(a["gen_ai.response.candidate.per_position_token_ids"])
        assert len(ids) == n
        # toktrace's findings.
        assert a["toktrace.interference_ms"] == pytest.approx(row["interference_ms"], abs=0.01)
        assert span.end_time_unix_nano - span.start_time_unix_nano == pytest.approx(row["e2e_ms"] * 1e6, rel=0.01)
    # The stalled decoders carry a stall event naming the long prompt.
    decode0 = next(s for _, s in spans if attrs(s)["gen_ai.response.id"] == "decode-0")
    stalls = [e for e in decode0.events if e.name == "toktrace.stall"]
    assert stalls
    worst = max(stalls, key=lambda e: {a.key: value(a) for a in e.attributes}["toktrace.token.gap_ms"])
    assert {a.key: value(a) for a in worst.attributes}["toktrace.culprit.request_id"] == "long-prompt"


def test_candidates_put_the_emitted_token_first(grpc_receiver: tuple[str, GrpcReceiver]) -> None:
    endpoint, receiver = grpc_receiver
    receiver.requests.clear()
    proc = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", endpoint, "--request", "decode-1")
    assert proc.returncode == 0, proc.stderr
    (_, span), = spans_of(receiver.requests)
    a = attrs(span)
    tokens = cli_json("tokens", str(INTERFERENCE), "--request", "decode-1")
    ids = json.loads(a["gen_ai.response.candidate.per_position_token_ids"])
    logprobs = json.loads(a["gen_ai.response.candidate.per_position_logprobs"])
    for t, pos_ids, pos_lps in zip(tokens, ids, logprobs):
        assert pos_ids[0] == t["token_id"]
        assert pos_lps[0] == pytest.approx(t["logprob"], abs=1e-5)
        others = [c["token_id"] for c in t["top"] if c["token_id"] != t["token_id"]]
        assert pos_ids[1:] == others


def test_spans_join_the_callers_trace(http_receiver: tuple[str, list[Any], list[str]]) -> None:
    endpoint, received, paths = http_receiver
    received.clear()
    proc = run_cli("export", str(TRACED), "--format", "otlp", "--endpoint", endpoint, "--protocol", "http")
    assert proc.returncode == 0, proc.stderr
    assert set(paths) == {"/v1/traces"}
    rows = cli_json("requests", str(TRACED))
    with_trace = [r for r in rows if r["trace_id"]]
    assert with_trace, "the fixture has a request sent with a traceparent"
    spans = [s for _, s in spans_of(received)]
    assert len(spans) == len(rows)
    by_trace = {s.trace_id.hex(): s for s in spans}
    for r in with_trace:
        span = by_trace[r["trace_id"]]
        # Parented under the caller's span, marked remote.
        assert len(span.parent_span_id) == 8 and span.parent_span_id != bytes(8)
    # Requests without a caller's trace are roots with ids of their own.
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == len(rows) - len(with_trace)
    assert len({s.span_id for s in spans}) == len(spans)


def test_an_unreachable_collector_is_a_clear_error() -> None:
    proc = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", "http://127.0.0.1:9", "--protocol", "http")
    assert proc.returncode == 1
    assert "127.0.0.1:9" in proc.stderr
    bad = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", "localhost:4317")
    assert bad.returncode == 2 or bad.returncode == 1
    assert "not a URL" in bad.stderr
    missing = run_cli("export", str(INTERFERENCE), "--format", "otlp")
    assert missing.returncode == 2 and "--endpoint" in missing.stderr


def test_plain_http_goes_off_the_machine_only_when_asked() -> None:
    # 192.0.2.0/24 is reserved for documentation: nothing answers there.
    remote = "http://192.0.2.1:4318"
    refused = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", remote, "--protocol", "http")
    assert refused.returncode == 1 and "--allow-remote-http" in refused.stderr, refused.stderr
    assert "sent" not in refused.stderr
    # With the flag it is tried (and fails to connect, since nothing is there).
    tried = run_cli("export", str(INTERFERENCE), "--format", "otlp", "--endpoint", "http://127.0.0.1:9",
                    "--protocol", "http", "--allow-remote-http")
    assert tried.returncode == 1 and "--allow-remote-http" not in tried.stderr
