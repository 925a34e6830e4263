"""The poll before the request loop sleeps (:class:`cosfs.fuse.loop._Poll`), on a pipe.

It must end as soon as the descriptor is readable, never run longer than its window or
the scheduler's timeout, and adapt its window: double it (from ``POLL_MIN``) after an idle
spell of at most twice the limit, halve it (down to nothing) after a longer one.
"""

import os
import time

import pytest

from cosfs.fuse.loop import POLL_MIN, _Poll


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_a_readable_descriptor_ends_the_poll_at_once(pipe):
    r, w = pipe
    os.write(w, b"x")
    poll = _Poll(r, 1.0)
    assert _timed(poll.before_sleep, 10) < 0.5
    poll.after_sleep()  # the poll caught it: nothing to adapt
    assert poll.window == 1.0


def test_the_poll_lasts_its_window_or_the_timeout(pipe):
    r, _ = pipe
    poll = _Poll(r, 0.02)
    assert 0.02 <= _timed(poll.before_sleep, 10) < 1
    poll = _Poll(r, 1.0)
    assert 0.002 <= _timed(poll.before_sleep, 0.002) < 0.5


def test_short_sleeps_grow_the_window_to_the_limit(pipe):
    r, _ = pipe
    poll = _Poll(r, 0.05)
    poll.window = 0
    windows = []
    for _ in range(20):
        poll.before_sleep(10)  # nothing to read: polls its window, then "sleeps"
        poll.after_sleep()     # woken at once: well within the limit
        windows.append(poll.window)
    assert windows[:3] == [POLL_MIN, 2 * POLL_MIN, 4 * POLL_MIN]
    assert windows[-1] == 0.05


def test_long_sleeps_shrink_the_window_to_nothing(pipe):
    r, _ = pipe
    poll = _Poll(r, 0.001)
    windows = []
    for _ in range(12):
        poll.before_sleep(10)
        time.sleep(0.005)  # idle longer than twice the limit: the poll was spent for nothing
        poll.after_sleep()
        windows.append(poll.window)
    assert windows[:2] == [0.0005, 0.00025]
    assert windows[-1] == 0
    assert _timed(poll.before_sleep, 10) < 0.001  # no poll at all


def test_no_sleep_no_change(pipe):
    r, _ = pipe
    poll = _Poll(r, 0.001)
    poll.after_sleep()  # an I/O check without a poll before it (timeout 0)
    assert poll.window == 0.001
