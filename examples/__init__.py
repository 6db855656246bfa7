"""Runnable examples (each exercised by a test)."""
