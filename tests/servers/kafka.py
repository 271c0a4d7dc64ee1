"""Pytest fixtures for the kafka test server (filled in by the adapter work)."""
