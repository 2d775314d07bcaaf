"""Fixtures: running runners shared per test session (owned by the runner area)."""
