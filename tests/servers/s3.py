"""Pytest fixtures for the s3 test server (filled in by the adapter work)."""
