"""The FUSE request loop's wait for the next request, without a hand-over per request.

pyfuse3 answers requests in up to ``max_tasks`` trio tasks that take turns on the FUSE
device: a task takes a ``trio.Lock``, waits for the device to be readable, lets the lock
go and answers the request it read, while the next task takes the lock and waits. A
program that sends one request at a time (``tar``, ``rsync``, ``rm -rf``, a 4 KiB
``pwrite`` loop) pays a hand-over between two tasks for every request: the lock passed
on, one task parked and another woken, a scheduler pass more.

:class:`RequestWait` replaces that wait (pyfuse3's module-level
``_wait_fuse_readable``, which its compiled loop looks up on each call). The task that
answered a request waits for the next one itself. Another task takes over the waiting
only when the trio thread is about to sleep, or to run other tasks, with nobody waiting
on the device: that is, when a handler blocks (on a worker thread, a lock, an event that
another request sets). A trio instrument (``before_io_wait``) sees that moment.

Contracts:

* At most one task waits on the device at a time (trio allows one waiter per
  descriptor); the others are parked. The task woken to take over is the one parked
  last among those that have answered a request before: each task reads requests into
  a buffer of its own (``max_write`` plus a header, 1 MiB), which stays allocated, so
  the daemon keeps as few of them in use as the requests answered side by side need.
  (pyfuse3 starts a new task after each request until it has ``max_tasks``, since it
  counts its waiting tasks in a field this wait cannot reach.) A task that has read
  requests leaves the loop, freeing its buffer, when :data:`KEEP` such tasks are parked
  already; pyfuse3 starts new ones as needed.
* Whenever the trio thread goes back to its event loop, a task is waiting on the device,
  unless every task is busy answering a request (``max_tasks`` of them, as with
  pyfuse3's own wait). So a request is never held up by a handler that blocks, which
  may be waiting for that very request.
* ``pyfuse3.terminate()`` (replaced by :meth:`RequestWait.terminate` while installed)
  ends the loop: the waiting task, the parked ones and those answering a request all
  leave it. After an
  unmount, the device reads as ended and each task leaves the loop in turn.
* Before the trio thread sleeps, with no request being answered, it polls for up to
  ``poll_limit`` for anything trio waits for (:class:`_Poll`): the next request of a
  program that sends one at a time then costs no wake-up of a sleeping thread.
* Installed only on a pyfuse3 whose loop calls ``_wait_fuse_readable``; on any other
  version :meth:`RequestWait.install` returns False and pyfuse3's own wait stays.
"""

import logging
import os
import select
import time

import pyfuse3
import trio

log = logging.getLogger(__name__)

#: Parked tasks that have read requests (each with its buffer) kept for later takeovers.
KEEP = 4

#: Longest poll before the trio thread sleeps, in seconds (see :class:`_Poll`).
POLL_MAX = 50e-6
#: Shortest poll worth making; a poll window that shrinks below it becomes 0.
POLL_MIN = 5e-6


def _trio_epoll():
    """The epoll descriptor of the running trio loop, or None (another backend, or a trio
    whose internals differ). Readable exactly when trio's next wait would not sleep."""
    try:
        from trio._core import _run
        return _run.GLOBAL_RUN_CONTEXT.runner.io_manager._epoll.fileno()
    except Exception:  # any change of trio's internals only costs the poll
        return None


def _trio_runner():
    """The running trio loop's runner (whose ``runq`` holds the tasks ready to run), or
    None if this trio's internals differ."""
    try:
        from trio._core import _run
        runner = _run.GLOBAL_RUN_CONTEXT.runner
        len(runner.runq)
        return runner
    except Exception:
        return None


def _fuse_fds():
    """The descriptors of this process open on ``/dev/fuse``."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + name) == "/dev/fuse":
                found.add(int(name))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return found


def init(*args, poll_limit=POLL_MAX):
    """``pyfuse3.init(*args)``; returns a :class:`RequestWait` for the device it opened
    (polling for up to ``poll_limit`` seconds before sleeping, see :class:`_Poll`), or
    None (logged) if that descriptor cannot be told among others. Raises what
    ``pyfuse3.init`` raises."""
    before = _fuse_fds()
    pyfuse3.init(*args)
    opened = _fuse_fds() - before
    if len(opened) != 1:
        log.info("cannot tell the FUSE device among %s: pyfuse3's own request loop is used",
                 sorted(opened))
        return None
    return RequestWait(opened.pop(), poll_limit)


class _Poll:
    """A short busy poll before the trio thread sleeps, sized like the kernel's halt
    polling of idle virtual CPUs.

    A program that sends one request at a time sends the next a few microseconds after
    the reply. If the daemon has gone to sleep by then, waking it costs more than the
    request (measured on a virtual machine: 70-80 µs per request of an empty file
    system against 30-37 µs with the poll). So before sleeping, the trio thread polls
    trio's epoll descriptor (readable when any descriptor or worker-thread result trio
    waits for is there) for up to ``window`` seconds. The window adapts to the thread's
    idle time, from going idle to running again, which includes the wake-up it is meant
    to save: it grows (doubling, from :data:`POLL_MIN`, up to ``limit``) when that is at
    most twice ``limit``, so a longer poll would likely have saved the sleep; it shrinks
    (halving, to 0 below :data:`POLL_MIN`) when it is longer, so the poll was spent for
    nothing. The CPU spent polling is at most ``limit`` per wait; a deadline trio waits
    for can fire up to ``limit`` late; ``limit`` 0 turns polling off.
    """

    def __init__(self, fd, limit):
        self.limit = limit
        self.window = limit
        self._epoll = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._idle_since = None  # when the thread went idle, if it went to sleep
        self._device = None      # (fd, select.poll of it and of trio's epoll descriptor)
        self._polled_since = None  # poll_device() polled a whole window from then

    def poll_device(self, fd):
        """Poll the device ``fd`` and trio's epoll descriptor for up to the window: True
        if a request is there and trio has nothing to do. If the window passes, the next
        :meth:`before_sleep` polls no more (it has been done) and counts the thread idle
        from the start of this poll."""
        if not self.window:
            return False
        if self._device is None or self._device[0] != fd:
            device = select.poll()
            device.register(fd, select.POLLIN)
            device.register(self._epoll, select.POLLIN)
            self._device = (fd, device)
        poll = self._device[1].poll
        start = time.perf_counter()
        end = start + self.window
        while True:
            ready = poll(0)
            if ready:
                return all(f == fd for f, _ in ready)
            if time.perf_counter() >= end:
                self._polled_since = start
                return False

    def before_sleep(self, timeout):
        """Poll for up to the window (and at most ``timeout``); returns at once if trio
        has something to do."""
        start = time.perf_counter()
        if self._polled_since is not None:  # poll_device() has just polled
            self._idle_since, self._polled_since = self._polled_since, None
            return
        if self.window:
            end = start + min(self.window, timeout)
            poll = self._poll.poll
            while True:
                if poll(0):
                    return
                if time.perf_counter() >= end:
                    break
        self._idle_since = start

    def after_sleep(self):
        """Adapt the window to how long the thread was idle."""
        self._polled_since = None  # (a poll_device() that no sleep followed)
        if self._idle_since is None:
            return
        idle = time.perf_counter() - self._idle_since
        self._idle_since = None
        if idle > 2 * self.limit:
            self.window = self.window / 2 if self.window >= 2 * POLL_MIN else 0
        elif self.window < self.limit:
            self.window = min(self.limit, max(2 * self.window, POLL_MIN))


class _Watch(trio.abc.Instrument):
    """Calls :meth:`RequestWait._idle` each time trio's scheduler checks for I/O."""

    poll = None

    def __init__(self, owner):
        self.owner = owner

    def before_io_wait(self, timeout):
        try:
            self.owner._idle(timeout)
        except Exception:  # trio would drop the instrument, and with it every takeover
            log.exception("request loop: the takeover check failed")


class _PollingWatch(_Watch):
    """A :class:`_Watch` that also polls (``poll``, a :class:`_Poll`) before trio sleeps."""

    def __init__(self, owner, poll):
        super().__init__(owner)
        self.poll = poll

    def before_io_wait(self, timeout):
        super().before_io_wait(timeout)
        # poll only while no request is being answered: a handler that waits for a
        # worker thread would only have it slowed down by a poll that holds the GIL
        if timeout and not self.owner._answering:
            try:
                self.poll.before_sleep(timeout)
            except Exception:
                log.exception("request loop: the poll failed")

    def after_io_wait(self, timeout):
        try:
            self.poll.after_sleep()
        except Exception:
            log.exception("request loop: the poll failed")


class RequestWait:
    """The wait of pyfuse3's request loop for the FUSE device ``fd`` (see the module)."""

    def __init__(self, fd, poll_limit=POLL_MAX):
        self.fd = fd
        self.poll_limit = poll_limit  # longest poll before sleeping (see _Poll), seconds
        self._waiting = False     # a task is in wait_readable(fd)
        self._closed = False      # terminate() was called or the device was closed
        self._handover = False    # a task is being woken to take over the waiting
        self._parked = []         # parked tasks; the next to wake last
        self._served = set()      # tasks that have read a request (and have a buffer)
        self._answering = set()   # tasks answering the request they read
        self._token = None
        self._watch = _Watch(self)
        self._original = None     # pyfuse3's (wait, terminate) while installed
        self._attached = False    # the instrument watches the trio loop
        self._runner = None       # trio's runner (its run queue), if it can be found
        self._close = pyfuse3.terminate  # what terminate() ends the device's wait with

    def install(self):
        """Replace pyfuse3's wait and ``terminate``; in ``trio.run``, right before
        ``pyfuse3.main()``, with :meth:`uninstall` once it returns. True if done."""
        wait = getattr(pyfuse3, "_wait_fuse_readable", None)
        if wait is None:
            log.info("pyfuse3 %s has no _wait_fuse_readable: its own request loop is used",
                     getattr(pyfuse3, "__version__", "?"))
            return False
        self.attach(pyfuse3.terminate)
        self._original = (wait, pyfuse3.terminate)
        pyfuse3._wait_fuse_readable = self.wait
        pyfuse3.terminate = self.terminate
        return True

    def uninstall(self):
        """Put pyfuse3's wait and ``terminate`` back."""
        if self._original is None:
            return
        pyfuse3._wait_fuse_readable, pyfuse3.terminate = self._original
        self._original = None
        self.detach()

    def attach(self, close):
        """Start watching the trio loop (in ``trio.run``) for a request loop that calls
        :meth:`wait` itself; :meth:`terminate` then calls ``close()``, which must make the
        task waiting on the device leave ``trio.lowlevel.wait_readable`` (with
        ``trio.ClosedResourceError``). Undone by :meth:`detach`."""
        self._close = close
        self._token = trio.lowlevel.current_trio_token()
        self._runner = _trio_runner()
        epoll = _trio_epoll() if self.poll_limit else None
        self._watch = (_PollingWatch(self, _Poll(epoll, self.poll_limit))
                       if epoll is not None else _Watch(self))
        if self.poll_limit and epoll is None:
            log.info("trio %s: no epoll descriptor found, the request loop does not poll",
                     trio.__version__)
        trio.lowlevel.add_instrument(self._watch)
        self._attached = True

    def detach(self):
        """Stop watching the trio loop."""
        if not self._attached:
            return
        self._attached = False
        self._served.clear()
        self._answering.clear()
        try:
            trio.lowlevel.remove_instrument(self._watch)
        except KeyError:
            pass

    @property
    def poll_window(self):
        """The poll's current window in seconds (see :class:`_Poll`), or None while it
        does not poll (not installed, ``poll_limit`` 0, or no epoll descriptor found)."""
        poll = self._watch.poll
        return None if poll is None or not self._attached else poll.window

    @property
    def tasks_used(self):
        """How many tasks that have read a request are in the loop (each keeps a buffer)."""
        return len(self._served)

    def poll_next(self):
        """Whether the calling task, which has just answered a request, may read the next
        request at once, without going back to trio's scheduler (and its two system
        calls, to wait on the device and to wait for events): polls the device for up to
        the poll window (see :class:`_Poll`). False when not polling, when trio has tasks
        to run or events to process, or another task is answering a request (a poll would
        hold the GIL against the worker thread it may wait for). The caller bounds how
        many requests it reads in a row this way: tasks already picked to run in the
        scheduler's current batch are not seen here."""
        poll = self._watch.poll
        if poll is None or self._closed or len(self._answering) > 1:
            return False
        runner = self._runner
        if runner is None or runner.runq:
            return False
        return poll.poll_device(self.fd)

    @property
    def tasks_parked(self):
        """How many tasks are parked, ready to take over the waiting."""
        return len(self._parked)

    def terminate(self):
        """``pyfuse3.terminate()`` for a loop that waits here. Trio thread only."""
        self._closed = True
        self._wake_all()
        self._close()

    async def wait(self):
        """True once the device is readable for this task; False if it must leave the loop."""
        task = trio.lowlevel.current_task()
        self._answering.discard(task)
        # a task that has not read a request yet (no buffer) lets the others go first
        fresh = task not in self._served
        while not self._closed:
            if self._waiting or fresh:
                if not fresh and self._parked_served() >= KEEP:
                    self._served.discard(task)
                    return False  # pyfuse3 ends this task and frees its buffer
                fresh = False
                await self._park(task)
                self._handover = False  # woken: the takeover (if any) has happened
                continue
            self._waiting = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:  # terminate(): pyfuse3 closes the device
                self._closed = True
                self._wake_all()
                return False
            finally:
                self._waiting = False
            self._served.add(task)
            self._answering.add(task)
            return True
        self._served.discard(task)
        return False

    def _parked_served(self):
        return sum(1 for t in self._parked if t in self._served)

    async def _park(self, task):
        if task in self._served:
            self._parked.append(task)
        else:
            self._parked.insert(0, task)

        def abort(_):
            self._parked.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED
        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake_one(self):
        trio.lowlevel.reschedule(self._parked.pop())

    def _wake_all(self):
        parked, self._parked = self._parked, []
        for task in parked:
            trio.lowlevel.reschedule(task)

    def _idle(self, timeout):
        # Nobody waits on the device while the scheduler checks for I/O: the task that
        # read the last request is blocked in its handler (or between two steps of it).
        # Hand the waiting to a parked task, once: until it runs, nobody else is woken.
        # With tasks ready to run (timeout 0) it runs in this pass; otherwise the
        # scheduler would sleep first, so wake it up.
        if self._waiting or self._closed or self._handover or not self._parked:
            return  # (no task parked: all are answering requests)
        self._handover = True
        if not timeout:
            self._wake_one()
        else:
            self._token.run_sync_soon(self._takeover)

    def _takeover(self):
        if self._waiting or self._closed or not self._parked:
            self._handover = False
            return
        self._wake_one()


class Pyfuse3Session:
    """pyfuse3's FUSE session behind the interface of :class:`cosfs.fuse.session.Session`
    (``mount``, ``main``, ``terminate``, ``close`` and the adapter's kernel calls), with
    :class:`RequestWait` as its wait for the next request when pyfuse3 allows it."""

    readdir_reply = staticmethod(pyfuse3.readdir_reply)
    invalidate_inode = staticmethod(pyfuse3.invalidate_inode)
    invalidate_entry = staticmethod(pyfuse3.invalidate_entry)
    invalidate_entry_async = staticmethod(pyfuse3.invalidate_entry_async)
    notify_store = staticmethod(pyfuse3.notify_store)

    def __init__(self, ops, mountpoint, options, *, poll_limit=POLL_MAX):
        self.ops = ops
        self.mountpoint = mountpoint
        self.options = set(options)
        self.poll_limit = poll_limit
        self.request_wait = None

    def mount(self):
        """``pyfuse3.init``: mount. Raises RuntimeError (nothing mounted)."""
        self.request_wait = init(self.ops, self.mountpoint, self.options,
                                 poll_limit=self.poll_limit)

    async def main(self):
        """``pyfuse3.main()`` with :class:`RequestWait` installed while it runs."""
        wait = self.request_wait
        try:
            if wait is not None:
                wait.install()  # pyfuse3.terminate() becomes its terminate()
            await pyfuse3.main()
        finally:
            if wait is not None:
                wait.uninstall()

    def terminate(self):
        """End :meth:`main`; trio thread only."""
        pyfuse3.terminate()

    def close(self, unmount=True):
        """``pyfuse3.close``."""
        pyfuse3.close(unmount=unmount)
