"""Settings from the environment: good values, bad values, the TLLM_ spelling."""

import pytest

from toktrace.config import Config, ConfigError, from_env, parse_size


def test_off_without_dir():
    assert from_env({}) is None
    assert from_env({"TOKTRACE_DIR": ""}) is None


def test_defaults_and_values():
    assert from_env({"TOKTRACE_DIR": "/t"}) == Config(dir="/t")
    cfg = from_env(
        {
            "TOKTRACE_DIR": "/t",
            "TOKTRACE_CAPTURE": "Metadata",
            "TOKTRACE_TOPK": "5",
            "TOKTRACE_RING_SLOTS": "1024",
            "TOKTRACE_RING_BYTES": "64M",
            "TOKTRACE_SEGMENT_BYTES": "1MiB",
            "TOKTRACE_DISK_BUDGET": "2G",
            "TOKTRACE_FSYNC": "100ms",
            "TOKTRACE_FLUSH_MS": "50",
            "TOKTRACE_ROLE": "frontend",
        }
    )
    assert cfg == Config(
        dir="/t", capture="metadata", top_k_cap=5, ring_slots=1024, ring_bytes=64 << 20,
        segment_bytes=1 << 20, disk_budget_bytes=2 << 30, fsync="100ms", flush_ms=50, role="frontend",
    )


def test_tensorrt_llm_spelling_reaches_mpi_workers():
    cfg = from_env({"TLLM_TOKTRACE_DIR": "/w", "TLLM_TOKTRACE_CAPTURE": "text"})
    assert cfg is not None and cfg.dir == "/w" and cfg.capture == "text"
    # The plain spelling wins when both are set.
    assert from_env({"TOKTRACE_DIR": "/a", "TLLM_TOKTRACE_DIR": "/b"}).dir == "/a"


@pytest.mark.parametrize(
    "name,value",
    [
        ("TOKTRACE_CAPTURE", "everything"),
        ("TOKTRACE_TOPK", "many"),
        ("TOKTRACE_TOPK", "300"),
        ("TOKTRACE_RING_BYTES", "lots"),
        ("TOKTRACE_RING_SLOTS", "0"),
        ("TOKTRACE_FSYNC", "sometimes"),
        ("TOKTRACE_FLUSH_MS", "0"),
        ("TOKTRACE_FLUSH_MS", "soon"),
        ("TOKTRACE_FLUSH_MS", "60001"),
        ("TOKTRACE_TOPK_SAMPLE", "some"),
        ("TOKTRACE_TOPK_SAMPLE", "1.5"),
        ("TOKTRACE_TOPK_SAMPLE", "-0.1"),
        ("TOKTRACE_TOPK_SAMPLE", "nan"),
    ],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as err:
        from_env({"TOKTRACE_DIR": "/t", name: value})
    assert name in str(err.value)


def test_topk_sample_and_its_k():
    cfg = from_env({"TOKTRACE_DIR": "/t", "TOKTRACE_TOPK_SAMPLE": "0.01"})
    assert (cfg.topk_sample, cfg.sample_top_k, cfg.top_k_cap) == (0.01, 5, 20)
    # TOKTRACE_TOPK sets both the stored cap and the K the trace asks for.
    cfg = from_env({"TOKTRACE_DIR": "/t", "TOKTRACE_TOPK_SAMPLE": "1", "TOKTRACE_TOPK": "3"})
    assert (cfg.topk_sample, cfg.sample_top_k, cfg.top_k_cap) == (1.0, 3, 3)
    assert from_env({"TOKTRACE_DIR": "/t"}).topk_sample == 0.0


def test_sizes():
    assert parse_size("X", "4096") == 4096
    assert parse_size("X", "4k") == 4096
    assert parse_size("X", "3 GiB") == 3 << 30


def test_flush_interval_reaches_the_probe(tmp_path):
    """A long interval does not hold records back from an explicit flush
    (which wakes the drain), and an interval out of range is refused."""
    from toktrace._native import NativeProbe

    probe = NativeProbe(str(tmp_path), flush_ms=60_000)
    probe.record_arrivals([("r1", None, None, 3, None, None, None, None, None, None, None)])
    assert probe.flush(30.0)
    segments = list(tmp_path.rglob("*.tt*")) or [p for p in tmp_path.rglob("*") if p.is_file()]
    assert segments and sum(p.stat().st_size for p in segments) > 0
    assert probe.shutdown(30.0)
    with pytest.raises(ValueError, match="flush_ms"):
        NativeProbe(str(tmp_path), flush_ms=0)
