"""Helpers shared by the test suites (importable as ``support`` once tests/ is on sys.path)."""
