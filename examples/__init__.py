"""Runnable examples; each has a test run by the default suite."""
