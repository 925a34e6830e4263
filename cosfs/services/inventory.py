"""Bucket inventory deliveries: one-off runs (POST) and the daemon's Daily/Weekly schedule.

A delivery scans the source bucket in key order, one page of
:data:`PAGE` objects at a time (:meth:`cosfs.keyspace.KeySpace.scan_objects`),
and writes the report into the destination bucket through the ordinary
object write path (:meth:`~cosfs.keyspace.KeySpace.put_object` with writer
INVENTORY), so the resolver gives every report object the inventory's own
encryption (``<SSE-COS/>``: AES256), else the destination bucket's default:

1. data files ``<base><32 hex>.csv.gz`` of at most ``rows_per_file`` rows
   each (gzip CSV, no header, every field quoted; the layout and rows are
   :mod:`cosfs.inventoryconf`'s). Memory holds one file's rows, whatever the
   size of the bucket; each file written is logged (progress);
2. then ``<base><YYYYMMDD>/manifest.json`` listing every data file (key,
   size, MD5), the counts (``list*``: every object scanned, ``filter*``: the
   rows after the prefix filter) and the schema;
3. last ``manifest.checksum``: the MD5 hex of manifest.json's bytes.

Crash safety: each delivery is recorded in the catalog's
``inventory_deliveries`` table before it starts, and every report key is
recorded there before it is written. So a crash leaves either no manifest,
or a manifest that lists every data file (those were written first); at the
next start (:meth:`InventoryService.recover`) an interrupted delivery's
objects are deleted, unless its checksum was written (then the report is
complete and only the record is finished), and the scheduled inventory is
due again.

Schedule: an enabled inventory is due when it has no delivery in the current
period (:func:`cosfs.inventoryconf.is_due`: the UTC day, or the ISO week):
the first delivery happens at once, and a period missed while the daemon did
not run is delivered at the next start (once). The clock is injectable
(``clock``: seconds since the epoch), so the schedule can be tested without
waiting. A delivery that fails is logged (WARNING) and retried in the next
period, or when a configuration changes.

IncludedObjectVersions ``All``: each object's current version is reported
with its version id (``null`` when it has none), IsLatest true and
IsDeleteMarker false, followed by the key's noncurrent versions and delete
markers (:mod:`cosfs.versions`), newest first; a key whose newest entry is a
delete marker reports that marker with IsLatest true.
:meth:`InventoryService._entries` merges the two key-ordered streams.

Runs on the trio thread (catalog reads between awaits); compression runs in
worker threads behind the data path's limiter. Raises CosfsError subclasses
(``InvalidArgument`` for a destination that is gone or in another region,
``DuplicateInventoryId`` for a one-off id run twice the same day).
"""

import gzip
import hashlib
import json
import logging
import time
import uuid

import trio

from .. import inventoryconf as ic
from ..errors import CosfsError, DuplicateInventoryId, NoSuchBucket, NoSuchKey
from ..filesystem import INVENTORY_KIND
from ..resolver import EncryptionSpec, WriterKind

log = logging.getLogger(__name__)

#: rows of one data file (COS does not document its split; 100,000 objects make 10 files)
ROWS_PER_FILE = 10000
#: objects read from the catalog per page of the scan
PAGE = 1000
#: a progress line in the log every so many objects scanned (and one per data file)
PROGRESS_EVERY = 10000
#: the scheduler looks at the configurations at least this often (seconds)
MAX_SLEEP = 3600.0
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def _gzip(text):
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


class InventoryService:
    """Delivers inventory reports of one store's buckets (one per daemon).

    ``keyspace``: the key-level core the reports are written through; ``clock``:
    seconds since the epoch (default :func:`time.time`); ``rows_per_file``: the
    split of data files. ``crash_hook`` (tests): ``await crash_hook(key)`` after
    each report object is published.
    """

    def __init__(self, keyspace, *, clock=time.time, rows_per_file=ROWS_PER_FILE):
        self.ks = keyspace
        self.fs = keyspace.fs
        self.catalog = keyspace.catalog
        self.clock = clock
        self.rows_per_file = max(1, int(rows_per_file))
        self.crash_hook = None
        self._wake = None
        self._scope = None
        self._running = set()
        self._failed = {}

    # -- entry points of the filesystem (fs.inventory) ----------------------------------
    def changed(self):
        """A configuration changed: look at the schedule again now."""
        self._failed.clear()
        if self._wake is not None:
            self._wake.set()

    async def run_now(self, bucket_ino, cfg):
        """A one-off run (POST) of ``cfg``; returns the job id once the report is complete.
        The same id twice the same UTC day is DuplicateInventoryId (the second report
        would replace the first one's manifest)."""
        period = "once:" + time.strftime("%Y%m%d", time.gmtime(self.clock()))
        prev = self.catalog.inventory_delivery(bucket_ino, cfg.id)
        if prev is not None and prev["period"] == period and prev["finished_ns"]:
            raise DuplicateInventoryId("one-off inventory %s was already delivered today; "
                                       "use another id" % cfg.id)
        return await self.deliver(bucket_ino, cfg, period=period)

    # -- one delivery ---------------------------------------------------------------------
    async def deliver(self, bucket_ino, cfg, *, period):
        """Deliver one report of ``cfg`` for the bucket now; returns the job id."""
        row = self.catalog.bucket_by_inode(bucket_ino)
        if row is None:
            raise NoSuchBucket("the bucket of inventory %s is gone" % cfg.id)
        dest = self.catalog.bucket_by_name(cfg.dest_bucket)
        ic.check_destination(cfg, row[2], dest[2] if dest else None)
        token = (bucket_ino, cfg.id)
        if token in self._running:
            raise DuplicateInventoryId("inventory %s of %s is being delivered right now"
                                       % (cfg.id, row[1]))
        self._running.add(token)
        try:
            return await self._deliver(bucket_ino, row[1], cfg, period)
        finally:
            self._running.discard(token)

    async def _deliver(self, bucket_ino, source, cfg, period):
        cat = self.catalog
        prev = cat.inventory_delivery(bucket_ino, cfg.id)
        if prev is not None and prev["finished_ns"] is None:
            await self._clean(prev)
        started = self.clock()
        job = uuid.uuid4().hex
        base = ic.report_base(cfg, source)
        manifest_key = ic.manifest_key(cfg, source, started)
        rec = {"bucket": bucket_ino, "id": cfg.id, "job": job, "period": period,
               "started_ns": int(started * 1e9), "finished_ns": None, "dest": cfg.dest_bucket,
               "manifest": manifest_key, "written": "[]", "summary": None}
        with cat.transaction():
            cat.set_inventory_delivery(rec)
        log.info("inventory %s of %s: delivery %s started into %s/%s", cfg.id, source, job,
                 cfg.dest_bucket, base)
        spec = EncryptionSpec("AES256") if cfg.sse_cos else None
        written = []

        async def publish(key, data):
            written.append(key)  # recorded before it exists: a crash cleans it up
            rec["written"] = json.dumps(written)
            with cat.transaction():
                cat.set_inventory_delivery(rec)
            await self.ks.put_object(cfg.dest_bucket, key, data, writer=WriterKind.INVENTORY,
                                     inventory_encryption=spec)
            if self.crash_hook is not None:
                await self.crash_hook(key)

        files, own, lines = [], set(), []
        counts = [0, 0, 0, 0]

        async def flush():
            text = ic.csv_lines(lines)
            lines.clear()
            data = await trio.to_thread.run_sync(_gzip, text, limiter=self.ks.objects.limiter)
            key = "%s%s.csv.gz" % (base, uuid.uuid4().hex)
            own.add(key)
            await publish(key, data)
            files.append((key, len(data), hashlib.md5(data).hexdigest()))
            log.info("inventory %s of %s: %d objects scanned, %d reported, data file %d written",
                     cfg.id, source, counts[0], counts[2], len(files))

        async for row in self._entries(bucket_ino, source, cfg, own):
            counts[0] += 1
            counts[1] += row.size
            if counts[0] % PROGRESS_EVERY == 0:
                log.info("inventory %s of %s: %d objects scanned, %d reported", cfg.id, source,
                         counts[0], counts[2])
            if not row.key.startswith(cfg.prefix):
                continue
            counts[2] += 1
            counts[3] += row.size
            lines.append(ic.csv_row(cfg, source, row))
            if len(lines) >= self.rows_per_file:
                await flush()
        if lines:
            await flush()
        manifest = ic.render_manifest(cfg, source, counts=counts, files=files)
        await publish(manifest_key, manifest)
        checksum_key = manifest_key[:-len("manifest.json")] + "manifest.checksum"
        await publish(checksum_key, hashlib.md5(manifest).hexdigest().encode())
        rec.update(finished_ns=int(self.clock() * 1e9), written="[]", summary=json.dumps(
            {"objects": counts[2], "files": len(files), "scanned": counts[0]}))
        with cat.transaction():
            cat.set_inventory_delivery(rec)
        log.info("inventory %s of %s: delivered %d of %d objects in %d data file(s), manifest "
                 "%s/%s", cfg.id, source, counts[2], counts[0], len(files), cfg.dest_bucket,
                 manifest_key)
        return job

    # -- the rows -------------------------------------------------------------------------
    async def _entries(self, bucket_ino, source, cfg, skip):
        """Every report row of the bucket in key order: the current objects, merged by key
        with the noncurrent versions when versions are All. Rows of one key: the current
        version first."""
        current = self._current(source, cfg, skip)
        if cfg.versions != "All":
            async for _key, rows in current:
                for row in rows:
                    yield row
            return
        async for _key, rows in _merge_by_key(current, self._noncurrent(bucket_ino, cfg)):
            for row in rows:
                yield row

    async def _current(self, source, cfg, skip):
        """(key as UTF-8, [Row]) of every current object, page by page (bounded memory)."""
        after = None
        need_etag = "ETag" in cfg.fields or "IsMultipartUploaded" in cfg.fields
        while True:
            try:
                page = self.ks.scan_objects(source, after=after, limit=PAGE)
            except NoSuchBucket:
                raise CosfsError("bucket %s was removed during its inventory" % source,
                                 code="NoSuchBucket") from None
            if not page:
                return
            after = page[-1][0]
            for key, inode in page:
                if key in skip:
                    continue
                row = await self._row(key, inode, need_etag)
                if row is not None:
                    yield key.encode("utf-8", "surrogateescape"), [row]
            await trio.sleep(0)  # other requests between pages

    async def _row(self, key, inode, need_etag):
        if inode.is_dir:  # an empty directory: its dir/ marker object
            return ic.Row(key, 0, inode.mtime_ns, EMPTY_MD5, None, None)
        etag = inode.etag or ""
        if need_etag and not etag:
            try:
                etag = await self.ks.objects.etag(inode.id)
            except (CosfsError, KeyError):
                # removed while the scan went on: not reported (COS reports are eventually
                # consistent too)
                log.info("inventory: %s changed during the scan; not reported", key)
                return None
        return ic.Row(key, inode.size, inode.mtime_ns, etag,
                      self.catalog.replication_status(inode.id), inode.version_id or "null")

    async def _noncurrent(self, bucket_ino, cfg):
        """(key as UTF-8, [Row]) of the noncurrent versions and delete markers of each key
        (:mod:`cosfs.versions`), in key order, newest first within a key, for versions
        All. IsLatest is true only for the newest row of a key that has no current object
        (a delete marker on top). Reads the catalog page by page (bounded memory)."""
        need_etag = "ETag" in cfg.fields or "IsMultipartUploaded" in cfg.fields
        after = (b"", -1)
        key, group = None, []
        while True:
            rows = self.catalog.version_rows(bucket_ino, after=after, limit=PAGE)
            for row in rows:
                if row[0] != key and group:
                    yield key, await self._version_group(bucket_ino, key, group, need_etag)
                    group = []
                key = row[0]
                group.append(row)
            if len(rows) < PAGE:
                break
            after = (rows[-1][0], rows[-1][1])
            await trio.sleep(0)  # other requests between pages
        if group:
            yield key, await self._version_group(bucket_ino, key, group, need_etag)

    async def _version_group(self, bucket_ino, key, group, need_etag):
        text = key.decode("utf-8", "surrogateescape")
        current = self.ks.has_object(bucket_ino, key)
        out = []
        for _, _, vid, holder, mtime in reversed(group):
            latest = not current and not out
            if holder is None:
                out.append(ic.Row(text, 0, mtime, "", None, vid or "null", latest, True))
                continue
            inode = self.catalog.get_inode(holder)
            etag = inode.etag or ""
            if need_etag and not etag:
                etag = await self.ks.objects.etag(holder)
            out.append(ic.Row(text, inode.size, inode.mtime_ns, etag,
                              self.catalog.replication_status(holder), vid or "null", latest))
        return out

    # -- recovery and schedule ---------------------------------------------------------
    async def _clean(self, rec):
        """Undo an interrupted delivery: delete what it wrote (or, when its checksum was
        written, keep the complete report and only finish the record)."""
        written = json.loads(rec["written"] or "[]")
        finished = False
        if written and written[-1].endswith("/manifest.checksum"):
            try:
                await self.ks.head_object(rec["dest"], written[-1])
                finished = True
            except (NoSuchKey, NoSuchBucket):
                pass
        if finished:
            rec = dict(rec, finished_ns=int(self.clock() * 1e9), written="[]")
            with self.catalog.transaction():
                self.catalog.set_inventory_delivery(rec)
            log.info("inventory %s: the delivery interrupted after its checksum is complete",
                     rec["id"])
            return
        removed = 0
        for key in written:
            try:
                await self.ks.delete_object(rec["dest"], key)
                removed += 1
            except NoSuchBucket:
                break
            except CosfsError as exc:
                log.warning("inventory %s: could not remove %s/%s of an interrupted delivery: "
                            "%s", rec["id"], rec["dest"], key, exc)
        with self.catalog.transaction():
            self.catalog.delete_inventory_delivery(rec["bucket"], rec["id"])
        log.info("inventory %s: removed the %d object(s) of an interrupted delivery", rec["id"],
                 removed)

    async def recover(self):
        """Clean up every delivery a crash or stop interrupted, and forget the deliveries
        of buckets that are gone (at the daemon's start)."""
        buckets = {row[0] for row in self.catalog.buckets()}
        for rec in self.catalog.inventory_deliveries():
            if rec["finished_ns"] is None:
                await self._clean(rec)
            elif rec["bucket"] not in buckets:
                with self.catalog.transaction():
                    self.catalog.delete_inventory_delivery(rec["bucket"], rec["id"])

    def _configs(self):
        """[(bucket inode, InventoryConfig)] of every stored inventory."""
        out = []
        for bino, _kind, doc in self.catalog.all_bucket_configs(INVENTORY_KIND):
            try:
                out.append((bino, ic.parse_inventory(doc)))
            except CosfsError as exc:  # stored by an older version? never fatal
                log.warning("bucket %d: unreadable inventory configuration: %s", bino, exc)
        return out

    async def deliver_due(self):
        """Deliver every inventory that is due now; returns how many were delivered."""
        now = self.clock()
        done = 0
        for bino, cfg in self._configs():
            rec = self.catalog.inventory_delivery(bino, cfg.id)
            last = rec["period"] if rec is not None and rec["finished_ns"] else None
            if not ic.is_due(cfg, last, now):
                continue
            period = ic.period_of(cfg.frequency, now)
            if self._failed.get((bino, cfg.id)) == period or (bino, cfg.id) in self._running:
                continue
            try:
                await self.deliver(bino, cfg, period=period)
                done += 1
            except CosfsError as exc:
                self._failed[(bino, cfg.id)] = period
                log.warning("inventory %s of bucket %d: the delivery failed, retried in the "
                            "next period or after a configuration change: %s (%s)", cfg.id,
                            bino, exc, exc.code)
        return done

    def _next_look(self, now):
        starts = [ic.next_period_start(cfg.frequency, now) for _b, cfg in self._configs()
                  if cfg.enabled and cfg.frequency]
        return min(starts + [now + MAX_SLEEP])

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        """The scheduler (a task of the daemon): recover, then deliver what is due, sleep
        until the next period starts or a configuration changes, repeat. ``stop()`` ends
        it (a delivery in progress is interrupted and cleaned up at the next start)."""
        with trio.CancelScope() as self._scope:
            self._wake = trio.Event()
            await self.recover()
            task_status.started()
            while True:
                self._wake = trio.Event()
                try:
                    await self.deliver_due()
                except Exception:  # the schedule must go on
                    log.exception("inventory scheduler")
                now = self.clock()
                delay = min(max(self._next_look(now) - now + 1.0, 1.0), MAX_SLEEP)
                with trio.move_on_after(delay):
                    await self._wake.wait()

    def stop(self):
        if self._scope is not None:
            self._scope.cancel()


async def _merge_by_key(first, second):
    """Merge two async iterators of (key, [rows]) ascending by key; for equal keys the
    rows of ``first`` come first (one item per key)."""
    end = object()

    async def nxt(it):
        try:
            return await it.__anext__()
        except StopAsyncIteration:
            return end

    a, b = await nxt(first), await nxt(second)
    while a is not end or b is not end:
        if b is end or (a is not end and a[0] < b[0]):
            yield a
            a = await nxt(first)
        elif a is end or b[0] < a[0]:
            yield b
            b = await nxt(second)
        else:
            yield a[0], a[1] + b[1]
            a, b = await nxt(first), await nxt(second)
