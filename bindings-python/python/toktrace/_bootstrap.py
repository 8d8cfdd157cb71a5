"""Imported by ``toktrace.pth`` at interpreter start-up, only when TOKTRACE_DIR is set.

Whatever goes wrong here must not stop the interpreter: one line on stderr,
and the program runs untraced.
"""

try:
    from toktrace import activate as _activate

    _activate.install_from_env()
except Exception as _exc:  # noqa: BLE001 - a guest never breaks its host's start-up
    import sys as _sys

    print(f"toktrace: start-up hook failed, tracing off: {_exc!r}", file=_sys.stderr)
