"""Logging and metrics, configured once per process."""
