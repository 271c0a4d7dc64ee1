"""Pytest fixtures for the postgres test server (filled in by the adapter work)."""
