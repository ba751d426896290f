"""Shared test helpers, importable as ``helpers.<module>`` from any test (tests/ is on sys.path:
its conftest.py lives outside a package)."""
