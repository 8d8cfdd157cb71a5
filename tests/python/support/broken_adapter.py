"""Test adapter that fails the way a real one does on an unknown engine layout."""


def apply(engine) -> None:
    raise AttributeError(f"fakeengine {engine.__version__} has no attribute 'Scheduler'")
