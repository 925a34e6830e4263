"""Durability points and garbage collection of released blobs.

Two rules meet here:
  - a durable catalog must never point at a blob a power loss could take
    away: the blobs are synced before the catalog is (:meth:`Collector.sync_catalog`);
  - a released blob is deleted only after the commit that released it is
    durable: otherwise a power loss could bring the catalog back at the old
    version, pointing at a deleted blob (:meth:`Collector.collect_garbage`);
    on an S3 store, only once a catalog snapshot in the store no longer
    references it (:mod:`cosfs.snapshots`), for the same reason after the loss
    of the machine.

A blob that no commit ever named (a chunk sealed, then replaced or cut before its
object's commit: :meth:`Collector.discard`) is under neither rule: no catalog, durable
or not, can point at it. It is deleted at the next pass without a sync and without a
catalog row; a crash before that leaves it an orphan, like every uncommitted blob,
which the next start removes (``mount.remove_orphans``).

The collector runs in the background (``run``): at most one pass per
``GC_MIN_INTERVAL``, plus a WAL checkpoint every ~10 s or when the WAL grows
past ``WAL_CHECKPOINT_BYTES``. Catalog calls run on the trio thread; store
syncs and deletions in worker threads.
"""

import logging
import time

import trio

from .chunkio import delete_blobs
from .errors import CosfsError

log = logging.getLogger(__name__)

#: Seconds between garbage collection passes (each pass makes the catalog durable).
GC_MIN_INTERVAL = 1.0

#: A catalog WAL larger than this is checkpointed at the next collection pass.
WAL_CHECKPOINT_BYTES = 4 * 1024 * 1024

#: Blobs deleted per catalog round trip.
BATCH = 500


class Collector:
    """Background collection and durability for one mount's catalog and stores.

    ``in_use(blob)`` tells which blobs a read is using (never deleted then).
    The data path counts its blob-publishing commits in :attr:`commits`.
    """

    def __init__(self, catalog, stores, limiter, in_use):
        self.catalog = catalog
        self.stores = stores
        self.limiter = limiter
        self.in_use = in_use
        self.commits = 0
        #: the catalog snapshotter (cosfs.snapshots) when some region is on an S3 store:
        #: set by the composition root; the blobs it has not yet seen released stay
        self.snapshots = None
        #: blob id -> region of blobs no commit named (see discard)
        self.unreferenced = {}
        self._unreferenced_lock = trio.Lock()  # a second pass waits for the first's deletes
        self.wakeup = trio.Event()
        self._last_checkpoint = time.monotonic()

    def poke(self):
        """Ask for a collection pass soon (after a commit released blobs)."""
        self.wakeup.set()

    def discard(self, blob, region):
        """Delete soon a blob that no commit named and none will (no catalog sync first).

        A random writer that re-seals its chunks before committing would otherwise
        make every pass fdatasync blobs only to delete them, and write a catalog row
        for each (measured: most of the disk writes of fio randwrite on a file four
        times ``write_buffer``).
        """
        self.unreferenced[blob] = region
        self.poke()

    async def run(self):
        while True:
            with trio.move_on_after(5):
                await self.wakeup.wait()
            self.wakeup = trio.Event()
            try:
                await self.collect_garbage()
                await trio.sleep(GC_MIN_INTERVAL)  # at most one durable point per interval
                # a burst of commits must not grow the WAL without bound: it takes space
                # that even deletions need, and a checkpoint needs room to fold it in
                if time.monotonic() - self._last_checkpoint > 10 or \
                        self.catalog.wal_size() > WAL_CHECKPOINT_BYTES:
                    await self.checkpoint()
            except CosfsError as exc:
                log.warning("background garbage collection: %s; will retry", exc)
            except Exception:
                log.exception("background garbage collection failed; will retry")

    async def sync_stores(self):
        for store in self.stores.values():
            await trio.to_thread.run_sync(store.sync_all, limiter=self.limiter)

    async def sync_stores_settled(self, st=None):
        """Sync the stores so that a catalog sync may follow at once (with no await between).

        A catalog sync makes every earlier commit durable, including commits that
        other tasks made while the stores were being synced, whose blobs that sync
        may have missed; likewise chunks of ``st`` (an ObjectState) stored meanwhile
        would be recorded unsynced. So sync again until a round saw neither. After
        a few busy rounds the last sync runs on the trio thread, where nothing can
        overtake it (it blocks other requests, but only under such contention).
        """
        for _ in range(4):
            commits = self.commits
            pending = dict(st.pending) if st is not None else None
            await self.sync_stores()
            if self.commits == commits and (st is None or st.pending == pending):
                return
        for store in self.stores.values():
            store.sync_all()

    async def sync_catalog(self):
        """Everything committed so far survives a machine crash after this returns."""
        await self.sync_stores_settled()
        self.catalog.sync()

    async def collect_garbage(self):
        """Delete blobs listed in ``garbage`` that no read is using.

        Each pass first makes the catalog durable (blobs synced, then the WAL
        fsynced: nothing is written, so this works on a full disk too) and then
        deletes what it saw before. Blobs that no commit named go first, unsynced.
        """
        await self._delete_unreferenced()
        while True:
            rows = [(b, r) for b, r in self.catalog.garbage(BATCH)
                    if not self.in_use(b) and self._may_delete(b, r)]
            if not rows:
                return
            await self.sync_catalog()
            by_region = {}
            for blob, region in rows:
                if region in self.stores:
                    by_region.setdefault(region, []).append(blob)
            done = []
            for region, blobs in by_region.items():
                # one worker call per batch: a thread hop per blob cost ~1 ms each
                done += await trio.to_thread.run_sync(delete_blobs, self.stores[region], blobs,
                                                      limiter=self.limiter)
            self.catalog.forget_garbage(done)
            if len(rows) < BATCH:
                return

    async def _delete_unreferenced(self):
        async with self._unreferenced_lock:
            by_region = {}
            for blob, region in list(self.unreferenced.items()):
                if self.in_use(blob):
                    continue
                del self.unreferenced[blob]
                if region in self.stores:
                    by_region.setdefault(region, []).append(blob)
            for region, blobs in by_region.items():
                done = await trio.to_thread.run_sync(delete_blobs, self.stores[region], blobs,
                                                     limiter=self.limiter)
                if len(done) < len(blobs):
                    left = set(blobs).difference(done)
                    self.unreferenced.update((b, region) for b in left)  # retried next pass

    def _may_delete(self, blob, region):
        """A blob of an S3 store goes only once the newest catalog snapshot no longer
        references it (a restore of that snapshot must find every blob it names)."""
        store = self.stores.get(region)
        if store is None or not hasattr(store, "upload_meta"):
            return True
        return self.snapshots is not None and self.snapshots.may_delete(blob)

    async def checkpoint(self, truncate=False):
        """Sync blobs, then let SQLite checkpoint its WAL (which syncs the catalog).

        ``truncate`` (after the catalog ran out of space) also gives the WAL's disk space
        back: even deleting rows needs room in the WAL, and it only grows between
        checkpoints. Raises sqlite3 errors if the checkpoint itself fails.
        """
        self._last_checkpoint = time.monotonic()
        await self.sync_stores_settled()
        self.catalog.checkpoint(truncate)
