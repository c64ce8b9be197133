"""Helpers shared by the tests (plain functions and data; fixtures live in tests/conftest.py)."""
