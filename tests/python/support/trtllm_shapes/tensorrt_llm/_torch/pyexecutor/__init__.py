"""Test scaffolding (see tensorrt_llm/__init__.py). Like the real package, it
does not import py_executor eagerly: the adapter must patch it when it is
imported later."""
