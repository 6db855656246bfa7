"""Run a process on a skewed clock: ``IMMORTAL_TEST_CLOCK_SKEW_MS`` added to the wall clock.

Put this directory on ``PYTHONPATH`` of a hub or worker process in a test; Python imports
``sitecustomize`` at startup, before any Immortal code reads the time. Only the wall clock
moves (``time.time``, ``time.time_ns``), as on a host whose clock is off; the monotonic
clock, which measures durations, does not.
"""

import os
import time

_skew_ns = int(float(os.environ.get("IMMORTAL_TEST_CLOCK_SKEW_MS", "0")) * 1_000_000)
_time_ns = time.time_ns


def _skewed_ns() -> int:
    return _time_ns() + _skew_ns


def _skewed() -> float:
    return _skewed_ns() / 1e9


if _skew_ns:
    time.time_ns = _skewed_ns
    time.time = _skewed
