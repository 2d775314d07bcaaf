"""Fixtures: model folders for tests (owned by the models area)."""
