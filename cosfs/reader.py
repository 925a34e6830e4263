"""Reading chunk blobs: cached, authenticated, with read-ahead for sequential readers.

:class:`ChunkReader` turns "bytes [lo, hi) of chunk ``idx`` stored in blob
``ch.blob``" into plaintext. Segments are fetched with one ranged read per
run of missing segments, opened by :mod:`cosfs.cipher` and kept in a bounded
LRU keyed by (blob, segment): blobs never change, so the cache is never
invalidated. A blob being read is marked *in use* so garbage collection does
not delete it under the reader.

Runs on the trio thread; small fetches are done inline (the thread hop costs more
than the work), larger ones in a worker thread behind the shared limiter. A small
fetch that would wait for the disk (``RWF_NOWAIT`` tells) also goes to a worker
when the store's disk has proved slow (:data:`SLOW_DISK`).
"""

import contextlib
import functools
import logging
import time

import trio

from . import metrics
from .chunkio import SEG, SegmentCache, fetch
from .cipher import TAG_SIZE
from .errors import CosfsError, IntegrityError

log = logging.getLogger(__name__)

#: Fetches up to this many plaintext bytes run on the trio thread (S3QL does the same).
INLINE_READ_LIMIT = 2 * SEG

#: A small read that misses the page cache still runs on the trio thread while such
#: reads of its store take less than this on average (an SSD: waiting costs less than
#: a thread hop); above it (a disk that seeks, a network file system) they run in a
#: worker so that other requests are not held up. Where the file system cannot tell a
#: miss (no ``RWF_NOWAIT``), every small read counts. The time includes opening the
#: segments, a few µs per 64 KiB.
SLOW_DISK = 0.001


class ChunkReader:
    """Read path of the data path; one per mount."""

    def __init__(self, *, cache_size, limiter):
        self.cache = SegmentCache(cache_size)
        self.headers = SegmentCache(4 * 1024 * 1024)
        self.limiter = limiter
        self._store_limiters = {}  # id(store) -> its own limiter (remote stores)
        self.reading = {}   # blob -> number of reads under way (kept from collection)
        self.inflight = {}  # blob -> Event of a worker fetch under way (others wait for it)
        #: id(store) -> running average of the seconds a small read that missed the page
        #: cache took: see SLOW_DISK
        self._cold_latency = {}

    def _timed(self, store, fn, *args):
        """``fn(*args)``, a small read that had to wait for the disk: its time feeds the
        store's running average (any thread; a lost update is harmless)."""
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            old = self._cold_latency.get(id(store), 0.0)
            self._cold_latency[id(store)] = old + (time.perf_counter() - started - old) / 8

    def in_use(self, blob):
        return blob in self.reading

    def limiter_for(self, store):
        """The worker slots for I/O with ``store``: a store whose calls mostly wait on the
        network (``parallel`` > 0, an S3 store) gets as many of its own; a local one
        shares the data path's (cores + 1)."""
        parallel = getattr(store, "parallel", 0)
        if not parallel:
            return self.limiter
        lim = self._store_limiters.get(id(store))
        if lim is None:
            lim = self._store_limiters[id(store)] = trio.CapacityLimiter(parallel)
        return lim

    @staticmethod
    def inline_ok(store, ch):
        """Whether a small fetch may run on the trio thread: never one that waits on the
        network (a remote store's blob; a packed chunk is in its catalog row)."""
        return ch.data is not None or not getattr(store, "remote", False)

    @contextlib.contextmanager
    def holding(self, blob):
        """Keep ``blob`` from garbage collection while the block runs."""
        self.reading[blob] = self.reading.get(blob, 0) + 1
        try:
            yield
        finally:
            n = self.reading[blob] - 1
            if n:
                self.reading[blob] = n
            else:
                del self.reading[blob]

    def cached_start(self, blob):
        """True if the first segment of ``blob`` is cached or being fetched."""
        return blob in self.inflight or self.cache.get((blob, 0)) is not None

    async def read(self, store, crypt, ino, idx, ch, lo, hi, ahead=False) -> bytes:
        """Bytes [lo, hi) of a chunk's stored content (shorter if the chunk is: a hole).

        ``ahead``: also fetch the rest of the chunk into the cache (sequential
        reader). Raises StoreError/IntegrityError (logged with inode and chunk).
        """
        hi = min(hi, ch.length)
        if lo >= hi:
            return b""
        s0, s1 = lo // SEG, (hi - 1) // SEG
        while True:
            segs = {}
            missing = []
            for s in range(s0, s1 + 1):
                data = self.cache.get((ch.blob, s))
                if data is None:
                    missing.append(s)
                else:
                    segs[s] = data
            ev = self.inflight.get(ch.blob) if missing else None
            if ev is None:
                break
            await ev.wait()  # a fetch of this blob is under way: use its result
        metrics.cache_lookups(len(segs), len(missing))
        if missing:
            await self._fill(store, crypt, ino, idx, ch, missing[0], missing[-1], ahead, segs)
        base = s0 * SEG
        if s0 == s1:
            return segs[s0][lo - base:hi - base]
        whole = b"".join(segs[s] for s in range(s0, s1 + 1))
        return whole[lo - base:hi - base]

    async def _fill(self, store, crypt, ino, idx, ch, first, last, ahead, segs):
        """Fetch segments [first, last] (to the chunk's end if ``ahead``) into cache and segs."""
        final = (ch.length - 1) // SEG
        if ahead:
            last = final
        plain = await self._fetch(store, crypt, ino, idx, ch, first, last, shared=True)
        view = memoryview(plain)
        for s in range(first, min(last, final) + 1):
            data = bytes(view[(s - first) * SEG:(s - first + 1) * SEG])
            segs[s] = data
            self.cache.put((ch.blob, s), data)

    async def load(self, store, crypt, ino, idx, ch, length, first=0) -> bytearray:
        """A new mutable copy of bytes ``[first * SEG, length)`` of a chunk (``length``
        at most ``ch.length``), for a writer about to change them.

        Cached segments are used when all of them are there; otherwise the range
        is fetched in one read and not cached, since the writer's buffer now
        holds it and its blob is about to be replaced. Raises as :meth:`read`.
        """
        last = (length - 1) // SEG
        cached = [self.cache.get((ch.blob, s)) for s in range(first, last + 1)]
        if all(c is not None for c in cached):
            metrics.cache_lookups(len(cached), 0)
            out = bytearray().join(cached)
        else:
            metrics.cache_lookups(0, len(cached))
            # Opened into a buffer made here, on the trio thread: a buffer that outlives
            # the worker call, made in the worker's own malloc arena, leaves that arena
            # holding its memory once freed (measured: twice the write buffer resident
            # under random writes).
            out = None if crypt is None else bytearray(
                min((last + 1) * SEG, ch.length) - first * SEG + TAG_SIZE)
            got = await self._fetch(store, crypt, ino, idx, ch, first, last, shared=False,
                                    out=out)
            out = got if crypt is not None else bytearray(got)  # a plain chunk as read
        del out[length - first * SEG:]
        return out

    async def _fetch(self, store, crypt, ino, idx, ch, first, last, *, shared, out=None):
        """Read and open segments [first, last] of a chunk: inline when small and the
        disk allows, else in a worker. ``shared``: other readers of the blob wait for
        a worker fetch (it fills the cache) instead of starting their own. ``out``:
        see ``chunkio.fetch``."""
        header = None if crypt is None else self.headers.get((ch.blob, 0))
        ev = None
        read = fetch if out is None else functools.partial(fetch, out=out)
        with self.holding(ch.blob):
            try:
                args = (store, crypt, idx, ch, first, last, header)
                got = None
                cold = False
                if ch.data is not None:
                    got = read(*args)  # packed: in the catalog row, no I/O
                elif (last - first + 1) * SEG <= INLINE_READ_LIMIT and self.inline_ok(store, ch):
                    slow = self._cold_latency.get(id(store), 0.0) >= SLOW_DISK
                    if getattr(store, "tells_cold", False):
                        got = read(*args, nowait=True)  # None: it would wait for the disk
                        cold = got is None
                        if cold and not slow:
                            got = self._timed(store, read, *args)
                    else:
                        # the file system cannot tell: every small read counts as cold
                        cold = True
                        if not slow:
                            got = self._timed(store, read, *args)
                if got is None:
                    if shared:
                        ev = self.inflight[ch.blob] = trio.Event()
                    fn = functools.partial(self._timed, store, read) if cold else read
                    got = await trio.to_thread.run_sync(
                        fn, *args, limiter=self.limiter_for(store))
                header, plain = got
            except CosfsError as exc:
                if isinstance(exc, IntegrityError):
                    metrics.authentication_failed()
                log.error("cannot read inode %d chunk %d (blob %s): %s",
                          ino, idx, ch.blob.hex(), exc)
                raise
            finally:
                if ev is not None:
                    del self.inflight[ch.blob]
                    ev.set()
        if header is not None:
            self.headers.put((ch.blob, 0), header)
        metrics.opened(None if crypt is None else crypt.label, len(plain))
        return plain

    def prefetch(self, nursery, store, crypt, ino, idx, ch):
        """Start reading a whole chunk into the cache in the background."""
        if self.cached_start(ch.blob):
            return

        async def run():
            try:
                await self.read(store, crypt, ino, idx, ch, 0, ch.length)
            except CosfsError:
                pass  # the reader that needs it will meet (and report) the error
        nursery.start_soon(run)
