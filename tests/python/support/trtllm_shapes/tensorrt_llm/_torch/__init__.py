"""Test scaffolding (see tensorrt_llm/__init__.py)."""
