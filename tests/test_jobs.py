"""The shared stop mechanism of the batch commands (opama_tools.jobs)."""

import os
import signal
import time

import pytest

from opama_tools.jobs import Terminated, check_stop, stop_raises


def _sigterm_self():
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # the Python-level handler runs at the next bytecode boundary
        time.sleep(0.001)


def test_deferred_sigterm_raises_only_at_check_stop():
    """SIGTERM under deferred=True never raises inside the work (e.g. a library constructor)."""
    reached = []
    before = signal.getsignal(signal.SIGTERM)
    with stop_raises(deferred=True):
        _sigterm_self()
        reached.append("after the signal")  # no exception was raised in the middle of the work
        with pytest.raises(Terminated, match="SIGTERM"):
            check_stop()
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    with stop_raises(deferred=True):
        check_stop()  # a new batch starts with no stop pending


def test_immediate_sigterm_raises_in_place():
    with stop_raises():
        with pytest.raises(Terminated):
            _sigterm_self()
