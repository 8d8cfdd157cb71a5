"""A stand-in engine module for activation tests: importing it is what the
post-import hook waits for. It does no work of its own."""

__version__ = "9.9.9"


def generate(n: int) -> list[int]:
    return list(range(n))
