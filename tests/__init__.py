"""The test suite, laid out like tl_cli/: tests/<stage>/test_*.py, shared helpers in tests/helpers/."""
