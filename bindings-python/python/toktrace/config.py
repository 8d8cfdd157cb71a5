"""Settings from the environment.

Every setting is read as ``TOKTRACE_<NAME>``, or as ``TLLM_TOKTRACE_<NAME>``
(TensorRT-LLM forwards only ``TLLM_``/``TRTLLM_`` variables to its MPI
workers). A bad value raises ``ConfigError`` with a message naming the
variable; callers turn that into one warning and tracing off.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

PREFIXES = ("TOKTRACE_", "TLLM_TOKTRACE_")
CAPTURE_LEVELS = ("metadata", "tokens", "text")


class ConfigError(ValueError):
    """A setting has a value toktrace cannot use."""


@dataclass(frozen=True)
class Config:
    """What the probe of this process is told."""

    dir: str
    capture: str = "tokens"
    top_k_cap: int = 20
    ring_slots: int = 65536
    ring_bytes: int = 256 << 20
    segment_bytes: int = 64 << 20
    disk_budget_bytes: int = 4 << 30
    fsync: str = "close"
    flush_ms: int = 50
    role: str | None = None
    adapters: str = ""
    # TOKTRACE_TOPK_SAMPLE: the fraction of requests (chosen by their
    # prompt's hash) for which the engine computes top-K candidates for the
    # trace alone, whatever the client asked; 0 is off.
    topk_sample: float = 0.0
    # How many candidates those requests get: TOKTRACE_TOPK when given,
    # else 5 (adapters clamp it to the engine's own limit).
    sample_top_k: int = 5


def _get(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for prefix in PREFIXES:
        key = prefix + name
        value = env.get(key)
        if value is not None and value != "":
            return key, value
    return None


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(key: str, value: str) -> int:
    """Bytes from '4096', '64M', '4GiB', … (binary units)."""
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"{key}={value!r}: expected a size such as 65536, 64M or 4G")
    n = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ConfigError(f"{key}={value!r}: must be positive")
    return n


def from_env(env: Mapping[str, str] | None = None) -> Config | None:
    """The configuration, or None when tracing is off. Raises ConfigError."""
    env = os.environ if env is None else env
    found = _get(env, "DIR")
    if found is None:
        return None
    kwargs: dict[str, object] = {"dir": found[1]}
    if (v := _get(env, "CAPTURE")) is not None:
        level = v[1].strip().lower()
        if level not in CAPTURE_LEVELS:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected one of {', '.join(CAPTURE_LEVELS)}")
        kwargs["capture"] = level
    if (v := _get(env, "TOPK")) is not None:
        try:
            k = int(v[1])
        except ValueError:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected a whole number of candidates (0-255)") from None
        if not 0 <= k <= 255:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected 0-255")
        kwargs["top_k_cap"] = k
        kwargs["sample_top_k"] = k
    if (v := _get(env, "TOPK_SAMPLE")) is not None:
        try:
            rate = float(v[1])
        except ValueError:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected a fraction of requests from 0 to 1, such as 0.01") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected a fraction of requests from 0 to 1, such as 0.01")
        kwargs["topk_sample"] = rate
    if (v := _get(env, "RING_SLOTS")) is not None:
        kwargs["ring_slots"] = parse_size(*v)
    for name, field in (
        ("RING_BYTES", "ring_bytes"),
        ("SEGMENT_BYTES", "segment_bytes"),
        ("DISK_BUDGET", "disk_budget_bytes"),
    ):
        if (v := _get(env, name)) is not None:
            kwargs[field] = parse_size(*v)
    if (v := _get(env, "FSYNC")) is not None:
        policy = v[1].strip().lower()
        if policy not in ("never", "close", "always") and not re.fullmatch(r"\d+ms", policy):
            raise ConfigError(f"{v[0]}={v[1]!r}: expected never, close, always or <N>ms")
        kwargs["fsync"] = policy
    if (v := _get(env, "FLUSH_MS")) is not None:
        try:
            ms = int(v[1])
        except ValueError:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected whole milliseconds (1-60000)") from None
        if not 1 <= ms <= 60_000:
            raise ConfigError(f"{v[0]}={v[1]!r}: expected 1-60000")
        kwargs["flush_ms"] = ms
    if (v := _get(env, "ROLE")) is not None:
        kwargs["role"] = v[1]
    if (v := _get(env, "ADAPTERS")) is not None:
        kwargs["adapters"] = v[1]
    return Config(**kwargs)  # type: ignore[arg-type]
