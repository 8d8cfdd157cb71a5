"""Test adapter for `fakeengine`: records a few steps when applied, and counts
how often it was applied (idempotency) through a marker file."""

import os

import toktrace


def apply(engine) -> None:
    marker = os.environ.get("FAKE_ADAPTER_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    rec = toktrace.recorder("fake-engine")
    if rec is None:
        return
    rec.process(engine="fakeengine", engine_version=engine.__version__, model_name="none",
                bos=1, eos=[2], special=[(1, "<s>"), (2, "</s>")])


def record_steps(n: int, first: int = 0) -> None:
    """What a patched engine loop would do: one call per step."""
    rec = toktrace.recorder()
    if rec is None:
        return
    for i in range(first, first + n):
        t0 = toktrace.monotonic_ns()
        rec.step(i, t0, ["r0", "r1"], [0, 0], [1, 1], ["r0", "r1"], [i, i], token_ids=[i, i + 1])
