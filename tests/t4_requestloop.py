"""The request loop's wait (:mod:`cosfs.fuse.loop`) on a real mount of ``tests/gatefs.py``.

The task that answered a request waits for the next one itself; another task takes over
only when a handler blocks. These tests block handlers in the ways that matter: on an
event that only a later request sets (without a takeover it would never come), and on
worker threads while other requests keep coming. And they end the loop both ways, by
SIGTERM and by an unmount, with tasks parked. And the poll before the daemon sleeps
follows the gaps between requests: it shrinks to nothing while they come seldom and grows
back while they come one after another.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import needs_fuse

from cosfs.fuse.loop import KEEP, POLL_MAX, POLL_MIN

pytestmark = [needs_fuse, pytest.mark.timeout(60)]

GATEFS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gatefs.py")


@pytest.fixture
def gatefs(tmp_path, request):
    """(mount point, process) of a running gatefs (its arguments after the mount point
    from the test's parameter, if any); unmounted and killed afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = [str(a) for a in getattr(request, "param", ())]
    proc = subprocess.Popen([sys.executable, GATEFS, str(mnt)] + args, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = _line_within(proc, 15)
        assert line == "installed", "the request wait was not installed: %r" % line
        yield mnt, proc
    finally:
        # killed first: a request nobody answers (a test failing) then fails at once,
        # instead of holding up the unmount (or a child's close of an inherited file)
        proc.kill()
        proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)


def _line_within(proc, seconds):
    found = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline().strip()),
                              daemon=True)
    reader.start()
    reader.join(seconds)
    assert found, "gatefs did not come up within %d s" % seconds
    return found[0]


def _all_tasks_started(mnt):
    """Send enough requests for pyfuse3 to have started all its tasks (it starts one after
    each request until it has ``max_tasks``, 99): from then on, only a takeover lets a
    request in while a handler blocks."""
    for _ in range(300):
        os.stat(mnt)  # attributes are not cached: a GETATTR each


def _in_thread(fn):
    """Run ``fn`` in a daemon thread; returns (thread, results list)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def test_a_handler_waiting_for_a_later_request_gets_it(gatefs):
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    reader, out = _in_thread(lambda: _read(mnt / "gate"))
    time.sleep(0.3)
    assert reader.is_alive()  # blocked in the daemon, on the event
    lookup, exists = _in_thread(lambda: os.path.exists(mnt / "key"))
    lookup.join(10)
    assert exists == [False]  # the lookup that sets it is answered...
    reader.join(10)
    assert out == [b"open"]  # ...and so is the read that waited for it
    os.stat(mnt)  # and the loop goes on


def test_requests_go_on_while_handlers_wait_on_threads(gatefs):
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    readers = [_in_thread(lambda: _read(mnt / "held")) for _ in range(8)]
    time.sleep(0.2)
    stats, _ = _in_thread(lambda: [os.stat(p) for _ in range(200) for p in (mnt, mnt / "gate")])
    stats.join(10)
    assert not stats.is_alive(), "stats held up behind reads blocked on threads"
    assert all(t.is_alive() for t, _ in readers)  # still blocked: nothing let them go
    lookup, exists = _in_thread(lambda: os.path.exists(mnt / "release"))
    lookup.join(10)
    assert exists == [False]
    for t, _ in readers:
        t.join(10)
    assert [out for _, out in readers] == [[b"held"]] * 8
    # the burst took a task (and a buffer) per blocked read; back to a few once it is over
    for _ in range(20):
        os.stat(mnt)
    used = int(_read(mnt / "used"))
    assert used <= KEEP + 2, "%d tasks still hold buffers" % used


def test_handlers_that_yield_to_other_tasks(gatefs):
    """A handler that lets other ready tasks run (the scheduler does not sleep): the
    waiting is handed over in the same pass, and handed back."""
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    for _ in range(50):
        assert _read(mnt / "yield") == b"yield"
        os.stat(mnt)
    assert int(_read(mnt / "used")) <= 3


def test_blocked_handlers_hand_over_to_tasks_already_used(gatefs):
    """Each task reading requests keeps a 1 MiB buffer: a takeover must not walk through
    all 99 of pyfuse3's tasks (that cost 95 MiB of resident memory writing 1 GiB)."""
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    for _ in range(20):  # each read blocks on a thread: a takeover, then a hand back
        assert _read(mnt / "brief") == b"brief"
        for _ in range(5):
            os.stat(mnt)
    used = int(_read(mnt / "used"))
    assert used <= 3, "%d tasks have read requests" % used


@pytest.mark.parametrize("end", ["sigterm", "unmount"])
def test_the_loop_ends_with_tasks_parked(gatefs, end):
    mnt, proc = gatefs
    _all_tasks_started(mnt)
    readers = [_in_thread(lambda: _read(mnt / "slow")) for _ in range(4)]
    for t, _ in readers:  # each read took a task; they are parked again now
        t.join(10)
    for _ in range(20):
        os.stat(mnt)
    if end == "sigterm":
        proc.terminate()
    else:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
    assert proc.wait(timeout=15) == 0
    assert not os.path.ismount(mnt)


def _poll_us(mnt):
    """The window of gatefs's poll in microseconds (None: no poll), in one GETATTR."""
    size = os.stat(mnt).st_size
    return None if size == 0 else size - 1


@pytest.mark.parametrize("gatefs", [(1000,)], indirect=True)
def test_the_poll_follows_the_gaps_between_requests(gatefs):
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    # a request every 20 ms: each idle spell of the daemon is longer than twice the limit
    # (1 ms), so each halves the window, down to nothing
    for _ in range(15):
        time.sleep(0.02)
        os.stat(mnt)
    time.sleep(0.02)
    assert _poll_us(mnt) == 0
    # a request every 0.2 ms: polls shorter than that miss it and the idle spell is short,
    # so each doubles the window, until the poll catches the next request (or a long gap
    # on a loaded machine halves it once)
    for _ in range(100):
        time.sleep(0.0002)
        os.stat(mnt)
    assert _poll_us(mnt) >= 16 * POLL_MIN * 1e6


@pytest.mark.parametrize("gatefs", [(0,)], indirect=True)
def test_no_poll_with_a_limit_of_0(gatefs):
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    assert _poll_us(mnt) is None
    _read(mnt / "brief")  # a handler waiting for a thread still gets its result


def test_the_default_poll_is_on_and_bounded(gatefs):
    mnt, _ = gatefs
    _all_tasks_started(mnt)
    assert 0 <= _poll_us(mnt) <= round(POLL_MAX * 1e6)
