"""The per-process recorder that adapters call.

``get_recorder()`` builds the process's recorder from the environment the
first time it is asked (None when tracing is off or the configuration is bad).
The native probe starts its drain thread on the first record. The recorder:

- never raises into the engine: every call catches, counts (``errors``, by
  where it happened) and warns once; the counts go into the trace as they
  move (``record_adapter_errors``: in-band, like drops, so every reader
  reports them), and after ``MAX_ERRORS`` the recorder turns itself off and
  says so there too;
- follows forks: a forked child resets the native probe and starts its own
  writer and directory on its next record (threads do not survive fork);
- flushes at exit (``atexit``) and on SIGTERM (chaining to the handler that
  was there before, or to the default action), waiting a bounded time.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import Any

from toktrace import config as _config

MAX_ERRORS = 100  # past this many errors in tracing code the recorder stops trying
MAX_ERROR_TEXT = 500  # characters kept of each hook's first error

_lock = threading.Lock()
_recorder: "Recorder | None" = None
_resolved = False


class Recorder:
    """Thin, exception-proof front of ``toktrace._native.NativeProbe``."""

    def __init__(self, cfg: _config.Config, role: str | None = None) -> None:
        from toktrace._native import NativeProbe

        self.config = cfg
        self.role = cfg.role or role or "main"
        self.native = NativeProbe(
            cfg.dir,
            role=self.role,
            capture=cfg.capture,
            top_k_cap=cfg.top_k_cap,
            ring_slots=cfg.ring_slots,
            ring_bytes=cfg.ring_bytes,
            segment_bytes=cfg.segment_bytes,
            disk_budget_bytes=cfg.disk_budget_bytes,
            fsync=cfg.fsync,
            flush_ms=cfg.flush_ms,
        )
        self.errors = 0
        # where -> [count, first error]: what the trace's error record holds.
        self._errors_by_hook: dict[str, list] = {}
        self.enabled = True
        self._warned = False

    @property
    def capture(self) -> str:
        return self.config.capture

    def failed(self, what: str, exc: BaseException) -> None:
        """Count an exception caught in tracing code — a native call (the
        wrappers below, an adapter's per-step call made directly) or an
        adapter's hook (``Guard``) — by `what`; warn once; write the counts
        into the trace; switch tracing off after MAX_ERRORS."""
        self.errors += 1
        entry = self._errors_by_hook.get(what)
        if entry is None:
            entry = self._errors_by_hook[what] = [0, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]]
        entry[0] += 1
        if not self._warned:
            self._warned = True
            print(f"toktrace: {what} failed: {type(exc).__name__}: {exc} (the engine goes on; further errors "
                  "counted in the trace)", file=sys.stderr, flush=True)
        if self.errors >= MAX_ERRORS and self.enabled:
            self.enabled = False
            print(f"toktrace: {self.errors} errors in tracing code: tracing is off for this process "
                  "(the engine goes on untraced)", file=sys.stderr, flush=True)
        try:
            self.native.record_adapter_errors(
                [(hook, count, first) for hook, (count, first) in self._errors_by_hook.items()],
                not self.enabled)
        except Exception:  # noqa: BLE001 - the error record is best effort
            pass

    def _call(self, what: str, fn: Any, failed: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into the native probe; an exception is counted, never raised."""
        if not self.enabled:
            return failed
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.failed(what, exc)
            return failed

    def step(self, *args: Any, **kwargs: Any) -> bool:
        """One engine iteration; see ``NativeProbe.record_step``."""
        # ``_call`` inlined: this runs once per engine step, and each level of
        # argument forwarding repacks a dozen keywords.
        if not self.enabled:
            return False
        try:
            return self.native.record_step(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            self.failed("record_step", exc)
            return False

    def arrivals(self, arrivals: list[tuple]) -> int:
        """Request arrivals; see ``NativeProbe.record_arrivals``."""
        return self._call("record_arrivals", self.native.record_arrivals, 0, arrivals)

    def finishes(self, finishes: list[tuple]) -> int:
        """Finished requests; see ``NativeProbe.record_finishes``."""
        return self._call("record_finishes", self.native.record_finishes, 0, finishes)

    def emits(self, req_ids: Any, first_index: Any, counts: Any = None) -> bool:
        """Tokens handed to client streams now; see ``NativeProbe.record_emits``."""
        return self._call("record_emits", self.native.record_emits, False, req_ids, first_index, counts)

    def process(self, **info: Any) -> bool:
        """What the adapter knows of the process; see ``NativeProbe.record_process``.
        How activation traces the engine (its layout, whether the release was
        tested) is added to the record's extra fields."""
        try:
            from toktrace.adapters._common import verdicts

            verdict = verdicts.get(str(info.get("engine")))
            if verdict:
                info["extra"] = [*(info.get("extra") or []), *verdict.items()]
        except Exception:  # noqa: BLE001 - the record goes out without it
            pass
        return self._call("record_process", self.native.record_process, False, **info)

    def flush(self, timeout_s: float = 2.0) -> bool:
        """Wait (bounded) until everything recorded so far reached the kernel."""
        try:
            return self.native.flush(timeout_s)
        except Exception:  # noqa: BLE001
            return False

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Write everything and stop the drain thread (bounded wait)."""
        try:
            return self.native.shutdown(timeout_s)
        except Exception:  # noqa: BLE001
            return False


def get_recorder(role: str | None = None) -> Recorder | None:
    """This process's recorder, created on first use; None when tracing is off."""
    global _recorder, _resolved
    if _resolved:
        return _recorder
    with _lock:
        if _resolved:
            return _recorder
        try:
            cfg = _config.from_env()
            if cfg is not None:
                _recorder = Recorder(cfg, role)
                _install_process_hooks()
        except _config.ConfigError as exc:
            from toktrace.activate import warn

            warn(f"{exc}; tracing is off", key="config")  # the same one warning as activation
            _recorder = None
        except Exception as exc:  # noqa: BLE001 - tracing off, engine untouched
            print(f"toktrace: tracing off: {exc}", file=sys.stderr, flush=True)
            _recorder = None
        _resolved = True
    return _recorder


def _after_fork_in_child() -> None:
    rec = _recorder
    if rec is not None:
        try:
            rec.native.reset_after_fork()
        except Exception:  # noqa: BLE001
            rec.enabled = False


def _at_exit() -> None:
    rec = _recorder
    if rec is not None:
        rec.shutdown(5.0)


def _mp_child_started(_rec: Recorder) -> None:
    # multiprocessing's fork children leave through os._exit, which skips
    # atexit; its own finalizers do run, so flush through one of those.
    import multiprocessing.util as mp_util

    mp_util.Finalize(None, _at_exit, exitpriority=100)


def _install_process_hooks() -> None:
    os.register_at_fork(after_in_child=_after_fork_in_child)
    atexit.register(_at_exit)
    try:
        import multiprocessing.util as mp_util

        mp_util.register_after_fork(_recorder, _mp_child_started)
    except Exception:  # noqa: BLE001
        pass
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        return
    if previous is signal.SIG_IGN or previous is None:
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        rec = _recorder
        if rec is not None:
            rec.flush(2.0)
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL: die as the process would have, after the flush
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):
        pass
