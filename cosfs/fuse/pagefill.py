"""Filling the kernel's page cache with the rest of a segment that random reads come back to.

The data path opens whole 64 KiB segments, and the kernel asks for 4 KiB pages: a
random reader sends one READ per page and the daemon answers most of them from its
segment cache, at the full cost of a request each. When a READ finds its segment
cached already (the reader is back in a segment it read before), :class:`PageFiller`
hands the whole segment to the kernel (FUSE's "store" notification), so
that further reads there are page-cache hits that reach no daemon at all. A segment
read once costs no more than before: purely random reads over a file far larger than
the segment cache see no stores.

Contracts:

* Only the content of a quiet object is stored (``ObjectStore.cached_segment``: no
  handle that may write is open, nothing awaits a commit), and only up to its size.
  Never with ``writeback_cache``, where the kernel may hold written pages it has not
  sent yet.
* A store runs in worker threads of its own (:data:`STORE_THREADS`), after the READ's
  reply: the kernel locks each page it fills, and a page may be locked by a request (a
  read of another page of the segment) that this daemon's trio thread has still to
  answer. It stores the whole segment, the READ's pages too (the reply has filled them
  with the same bytes): one system call instead of two.
* Whatever changes an object through the kernel waits first for its stores
  (:meth:`PageFiller.settle`): an open that may write and a truncate. So a store never
  lands after pages the kernel wrote or cut, and once they go on, the object is no
  longer quiet and no new store starts.
* At most :data:`MAX_INFLIGHT` stores are under way; beyond that a chance is skipped,
  not queued. A failed store changes nothing the kernel serves (it only misses pages)
  and is logged at debug level: the kernel drops an inode it forgot (ENOENT).
"""

import errno
import logging

import trio

from .. import metrics

log = logging.getLogger(__name__)

#: Stores under way at once (each holds one segment, 64 KiB).
MAX_INFLIGHT = 16

#: Worker threads that make the stores. Each store is mostly kernel time, with the GIL
#: released; one thread kept half the chances waiting (measured: 4,800 stores in 5 s of
#: fio randread against 6,500-8,400 with four).
STORE_THREADS = 4

#: A READ larger than this is a sequential reader's, whose pages the kernel's
#: read-ahead asks for anyway: it starts no store.
MAX_READ = 32 * 1024


class PageFiller:
    """Kernel page-cache stores for one mount. Trio thread only, except the store itself.

    ``store(inode, offset, data)`` is the kernel call (``pyfuse3.notify_store``);
    ``page_size`` the kernel's page size.
    """

    def __init__(self, objects, store, *, page_size, enabled=True):
        self.objects = objects
        self._store = store
        self.page = page_size
        self.enabled = enabled
        self._nursery = None
        self._limiter = trio.CapacityLimiter(STORE_THREADS)
        self._busy = {}      # inode -> stores under way
        self._settled = {}   # inode -> Event set when its last store ends
        self._segments = set()  # (inode, start) of the stores under way
        #: segments stored so far (for tests and the curious; not a metric)
        self.stored = 0

    def attach(self, nursery):
        """Start storing (the mount's nursery runs the stores)."""
        self._nursery = nursery

    async def detach(self, timeout=5.0):
        """Stop starting stores (the kernel is going away) and wait, at most ``timeout``
        seconds, for those under way: they end at once when the kernel has gone (its
        connection is closed) and must not be left running into the session's end."""
        self._nursery = None
        with trio.move_on_after(timeout):
            while self._busy:
                await self.settle(next(iter(self._busy)))

    async def read(self, ino, offset, size, answer):
        """``await answer()``, the data path's answer to a READ of ``[offset, offset+size)``
        of ``ino``; when the READ came back to a cached segment, a store of that segment
        follows the reply."""
        back = self.was_cached(ino, offset, size)
        data = await answer()
        if back:
            self.after_read(ino, offset, size)
        return data

    def was_cached(self, ino, offset, size):
        """Before a READ: whether it comes back to a cached segment of a quiet object, so
        that :meth:`after_read` should store the rest of that segment."""
        if self._nursery is None or not self.enabled or size > MAX_READ \
                or offset % self.page or len(self._segments) >= MAX_INFLIGHT:
            return False
        return self.objects.cached_segment(ino, offset) is not None

    def after_read(self, ino, offset, size):
        """After a READ that :meth:`was_cached` chose, with no await since the data path
        answered it: store the segment in the kernel's page cache, if the object is still
        quiet and the READ did not cover it."""
        if self._nursery is None:
            return
        seg = self.objects.cached_segment(ino, offset)
        if seg is None:
            return
        start, data = seg
        if (ino, start) in self._segments or len(data) <= size:
            return
        self._segments.add((ino, start))
        self._busy[ino] = self._busy.get(ino, 0) + 1
        self._nursery.start_soon(self._run, ino, start, data)

    async def _run(self, ino, start, data):
        def kernel():
            try:
                self._store(ino, start, data)
                return True
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    log.debug("could not store pages of inode %d at %d: %s", ino, start,
                              exc.strerror)
                return False

        try:
            # abandoned on cancel: at a stop, the kernel may wait for a page that a
            # request nobody answers any more holds locked
            if await trio.to_thread.run_sync(kernel, limiter=self._limiter,
                                             abandon_on_cancel=True):
                self.stored += 1
                metrics.page_store()
        finally:
            self._segments.discard((ino, start))
            n = self._busy[ino] - 1
            if n:
                self._busy[ino] = n
            else:
                del self._busy[ino]
                ev = self._settled.pop(ino, None)
                if ev is not None:
                    ev.set()

    async def settle(self, ino):
        """Wait until no store of ``ino`` is under way (before it changes through the
        kernel). Returns at once when none is."""
        while self._busy.get(ino):
            ev = self._settled.get(ino)
            if ev is None:
                ev = self._settled[ino] = trio.Event()
            await ev.wait()
