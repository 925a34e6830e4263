"""Filling the kernel's page cache with the segments that random readers come back to.

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
* A store runs in threads of its own (:data:`STORE_THREADS`), after the READ's reply:
  the kernel locks each page it fills, and a page may be locked by a request (a read of
  another page of the segment) that this daemon's trio thread has still to answer. It stores the whole segment, the READ's pages too (the reply has filled them
  with the same bytes): one system call instead of two.
* Whatever changes an object through the kernel waits first for its stores
  (:meth:`PageFiller.settle`): an open that may write and a truncate. So a store never
  lands after pages the kernel wrote or cut, and once they go on, the object is no
  longer quiet and no new store starts.
* At most :data:`MAX_INFLIGHT` stores are queued or under way; beyond that a chance is
  skipped. A failed store changes nothing the kernel serves (it only misses pages)
  and is logged at debug level: the kernel drops an inode it forgot (ENOENT).
"""

import errno
import logging
import queue
import threading

import trio

from .. import metrics

log = logging.getLogger(__name__)

#: Stores queued or under way at once (each holds one segment, 64 KiB).
MAX_INFLIGHT = 16

#: Threads that make the stores. Each store is mostly kernel time, with the GIL released;
#: one thread kept half the chances waiting (measured: 4,800 stores in 5 s of fio
#: randread against 6,500-8,400 with four).
STORE_THREADS = 4

#: A READ larger than this is a sequential reader's, whose pages the kernel's
#: read-ahead asks for anyway: it starts no store.
MAX_READ = 32 * 1024


class PageFiller:
    """Kernel page-cache stores for one mount.

    ``store(inode, offset, data)`` is the kernel call (``pyfuse3.notify_store``);
    ``page_size`` the kernel's page size. :meth:`start` and :meth:`stop` bracket the
    stores; the other methods run on the trio thread. The store threads take their work
    from a queue and count it done under a lock: a trio thread hop per store
    (``trio.to_thread``) cost more than the store (measured: 14,100-14,900 against
    15,200-26,900 IOPS of fio randread, alternating).
    """

    def __init__(self, objects, store, *, page_size, enabled=True):
        self.objects = objects
        self._store = store
        self.page = page_size
        self.enabled = enabled
        self._queue = None   # of (serial, inode, start, data) while started; None: no stores
        self._threads = []
        self._lock = threading.Lock()  # guards the two below
        self._pending = {}   # inode -> serials of its stores queued or under way
        self._segments = set()  # (inode, start) of those stores
        self._serial = 0
        #: segments stored so far (for tests and the curious; the metric counts them too)
        self.stored = 0

    @property
    def busy(self):
        """Whether any store is queued or under way."""
        return bool(self._pending)

    def start(self):
        """Start the store threads."""
        if self._queue is not None:
            return
        self._queue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                          name="cosfs-pages-%d" % i)
                         for i in range(STORE_THREADS)]
        for t in self._threads:
            t.start()

    async def stop(self, timeout=5.0):
        """Start no more stores and wait, at most ``timeout`` seconds, for those queued or
        under way; True if none is left. Called while the request loop still answers
        (a store may wait for a page that a READ holds locked), and again once the kernel
        has gone (its connection closed: what is left ends at once)."""
        q, self._queue = self._queue, None
        if q is not None:
            for _ in self._threads:
                q.put(None)
            self._threads = []
        with trio.move_on_after(timeout):
            while self._pending:
                await trio.sleep(0.005)
        return not self._pending

    async def read(self, ino, offset, size, answer):
        """``await answer()``, the data path's answer to a READ of ``[offset, offset+size)``
        of ``ino``; when the READ came back to a cached segment, a store of that segment
        follows the reply."""
        back = self.was_cached(ino, offset, size)
        data = await answer()
        if back:
            try:
                self.after_read(ino, offset, size)
            except Exception as exc:  # the READ has its data: a store is only a bonus
                log.warning("no page store for inode %d: %s", ino, exc)
        return data

    def was_cached(self, ino, offset, size):
        """Before a READ: whether it comes back to a cached segment of a quiet object, so
        that :meth:`after_read` should store that segment."""
        if self._queue is None or not self.enabled or size > MAX_READ \
                or offset % self.page or len(self._segments) >= MAX_INFLIGHT:
            return False
        try:
            return self.objects.cached_segment(ino, offset) is not None
        except Exception:
            return False  # the READ itself will say what is wrong

    def after_read(self, ino, offset, size):
        """After a READ that :meth:`was_cached` chose, with no await since the data path
        answered it: store the segment in the kernel's page cache, if the object is still
        quiet, the READ did not cover the segment and fewer than :data:`MAX_INFLIGHT`
        stores are queued or under way."""
        if self._queue is None or len(self._segments) >= MAX_INFLIGHT:
            return
        seg = self.objects.cached_segment(ino, offset)
        if seg is None:
            return
        start, data = seg
        if (ino, start) in self._segments or len(data) <= size:
            return
        self._serial += 1
        with self._lock:
            self._segments.add((ino, start))
            self._pending.setdefault(ino, set()).add(self._serial)
        self._queue.put((self._serial, ino, start, data))

    def _work(self, q):
        """A store thread: the queue's stores, until its None."""
        while True:
            item = q.get()
            if item is None:
                return
            serial, ino, start, data = item
            ok = False
            try:
                if self.enabled:
                    self._store(ino, start, data)
                    ok = True
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    self.enabled = False
                    log.info("the kernel cannot store pages (FUSE notify_store): random "
                             "readers get no segments in its page cache")
                elif exc.errno not in (errno.ENOENT, errno.ENODEV):
                    log.debug("could not store pages of inode %d at %d: %s", ino, start,
                              exc.strerror)
            except Exception:
                log.exception("store of the pages of inode %d at %d failed", ino, start)
            with self._lock:
                self.stored += ok
                self._segments.discard((ino, start))
                mine = self._pending[ino]
                mine.discard(serial)
                if not mine:
                    del self._pending[ino]
            if ok:
                metrics.page_store()

    async def settle(self, ino):
        """Wait until the stores of ``ino`` queued or under way when called have ended
        (before it changes through the kernel; later ones, started once the change was
        made, carry the new content). Returns at once when there are none; otherwise
        looks again every millisecond (a store takes about a tenth of that, and this
        wait is rare)."""
        mine = set(self._pending.get(ino, ()))
        while mine:
            await trio.sleep(0.001)
            mine &= self._pending.get(ino, set())

    async def forget(self, inodes):
        """The kernel forgot ``inodes``: wait for their stores (which end at once, the
        kernel knowing the inode no more), so that none can reach an inode that is later
        given one of their numbers."""
        for ino in inodes:
            if ino in self._pending:
                await self.settle(ino)
