"""Cross-region replication: the daemon copies queued versions into the destination bucket.

What is queued, and when, is decided in the core (:mod:`cosfs.versions`): every new
version and delete marker of a key that an enabled rule of its bucket matches,
in the same catalog transaction as the change itself, so the queue survives a
kill of the daemon and a crash of the machine exactly as the change does.

This service works the queue, oldest task first, one task at a time:

- *put*: the source version (current or noncurrent: versioning keeps it even if
  the key changed meanwhile) is streamed chunk by chunk through the normal write
  path into a new object of the destination bucket, published under the same key
  with the source's version id and metadata and status ``REPLICA``. Its encryption
  is the resolver's REPLICA rule (the seed's rule 5): an encrypted source keeps its
  algorithm (sealed again under a new data key, in the destination region's
  store), an unencrypted one gets the destination bucket's default.
- *delete*: a delete marker with the source marker's id is added to the key.

Then, in one transaction, the task is removed (unless it was renewed meanwhile
by another commit of the same version, which copies it again) and the source
version's status becomes ``COMPLETED``. A crash in between repeats the copy;
publishing is atomic and a replica of a version replaces an earlier copy of it,
so the destination never holds a torn or doubled version.

Errors: a task that fails is retried with exponential backoff and jitter
(:data:`RETRY_BASE` doubling up to :data:`RETRY_MAX` seconds); after
:data:`MAX_ATTEMPTS` attempts, or at once when it cannot succeed (the
destination bucket is gone or no longer versioned), the source version shows
``FAILED``, a warning names the object and the reason, and the task is dropped.
A source version deleted for good before it was copied is dropped silently.

Runs on the trio thread of the daemon (``run``/``stop``, like the other services).
"""

import logging
import random

import trio

from ..catalog import now_ns
from ..errors import CosfsError, NoSuchBucket, NoSuchVersion
from ..resolver import EncryptionSpec, WriterKind
from ..versions import COMPLETED, ENABLED, FAILED, version_label

log = logging.getLogger(__name__)

RETRY_BASE = 1.0
RETRY_MAX = 300.0
MAX_ATTEMPTS = 12
#: how long the service sleeps at most between looks at the queue
IDLE = 30.0


class Permanent(CosfsError):
    """A task that cannot succeed however often it is tried."""


class Replicator:
    """Works the replication queue of one store (see the module docstring)."""

    def __init__(self, keyspace, *, clock=None):
        self.ks = keyspace
        self.catalog = keyspace.catalog
        self.objects = keyspace.objects
        self.versions = keyspace.objects.versions
        self.clock = clock or now_ns
        self._wake = trio.Event()
        self._scope = None
        self.versions.poke = self.poke
        self.done = 0
        self.failed = 0
        self.last_error = None

    def poke(self):
        """A task was queued: look at the queue (after its short delay)."""
        self._wake.set()

    def stop(self):
        if self._scope is not None:
            self._scope.cancel()

    def status(self) -> dict:
        """Queue length, the oldest task's age, counters and the last error (for
        ``cosfs status`` and the bucket's replication status xattr)."""
        tasks = self.catalog.replication_tasks(limit=1)
        oldest = None
        if tasks:
            oldest = max(0.0, (self.clock() - tasks[0][8]) / 1e9)
        return {"queued": self.catalog.replication_queue_length(), "replicated": self.done,
                "failed": self.failed, "oldest_task_age_s": oldest,
                "last_error": self.last_error}

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        """The worker (a task of the daemon); ``stop()`` ends it. A copy interrupted by
        the stop leaves its task queued for the next start."""
        with trio.CancelScope() as self._scope:
            task_status.started()
            queued = self.catalog.replication_queue_length()
            if queued:
                log.info("replication: %d task(s) queued from before", queued)
            while True:
                self._wake = trio.Event()
                delay = await self.run_due()
                with trio.move_on_after(delay):
                    await self._wake.wait()

    async def run_due(self) -> float:
        """Run every task that is due now, the versions of each key in the order they were
        made (a task waits while an older one of its key is retried); return the seconds
        until the next one. A failure of one task never stops the worker."""
        while True:
            now = self.clock()
            due = self.catalog.due_replication_tasks(now, limit=1)
            if not due:
                soonest = self.catalog.next_replication_ns()
                if soonest is None:
                    return IDLE
                return max(0.05, min(IDLE, (soonest - now) / 1e9))
            try:
                await self._run(due[0])
            except Exception as exc:  # a bug or a catalog error: log, back off, go on
                log.exception("replication: unexpected error")
                try:
                    self._failed(due[0], "task %d" % due[0][0], exc)
                except Exception:
                    log.exception("replication: cannot record the failure")
                    return RETRY_MAX

    async def _run(self, task):
        seq, bino, key, vid, op, dest, gen, attempts, _, _ = task
        src = self.catalog.bucket_by_inode(bino)
        name = "%s/%s" % (src[1] if src else "#%d" % bino, key.decode("utf-8", "replace"))
        try:
            if src is None:
                raise NoSuchVersion("the source bucket was removed")
            dest_row = self.catalog.bucket_by_name(dest)
            if dest_row is None:
                raise Permanent("the destination bucket %s does not exist" % dest)
            if self.versions.status(dest_row[0]) != ENABLED:
                raise Permanent("versioning is not Enabled on destination bucket %s" % dest)
            if op == "put":
                await self._copy(src[1], key, vid, dest, dest_row[0])
            else:
                self.ks.delete_replica(dest, key.decode("utf-8", "surrogateescape"),
                                       version_label(vid))
        except NoSuchVersion:
            with self.catalog.transaction():
                self.catalog.finish_replication(seq, gen)
            log.info("replication of %s version %s dropped: the version is gone", name,
                     version_label(vid))
            return
        except (CosfsError, OSError) as exc:
            self._failed(task, name, exc)
            return
        with self.catalog.transaction():
            if self.catalog.finish_replication(seq, gen) and op == "put":
                self._set_status(bino, key, vid, COMPLETED)
        self.done += 1
        log.debug("replicated %s version %s (%s) to %s", name, version_label(vid), op, dest)

    async def _copy(self, bucket, key, vid, dest, dest_ino):
        text = key.decode("utf-8", "surrogateescape")
        reader = await self.ks.open_version(bucket, text, version_label(vid), snapshot=True)
        try:
            source = self._source_inode(reader)
            spec = self.objects.decide(dest_ino, writer=WriterKind.REPLICA,
                                       source_encryption=(EncryptionSpec.from_stored_name(
                                           source.enc) if source.enc else None))
            await self.ks.put_replica(dest, text, reader.pieces(), spec, version_label(vid),
                                      self.ks.metadata_of(source.id))
        finally:
            await reader.aclose()

    def _source_inode(self, reader):
        return self.catalog.get_inode(reader.ino)

    def _set_status(self, bino, key, vid, status):
        """Record ``status`` on the source version (inside a transaction)."""
        try:
            segments = key.split(b"/")
            inode, _, _ = self.ks._find_version(bino, segments, version_label(vid))
        except CosfsError:
            return
        if inode is not None:
            self.catalog.set_replication_status(inode.id, status)

    def _failed(self, task, name, exc):
        seq, bino, key, vid, op, dest, gen, attempts, _, _ = task
        attempts += 1
        reason = "%s (%s)" % (exc, getattr(exc, "code", type(exc).__name__))
        self.last_error = "%s: %s" % (name, reason)
        if isinstance(exc, (Permanent, NoSuchBucket)) or attempts >= MAX_ATTEMPTS:
            with self.catalog.transaction():
                if self.catalog.finish_replication(seq, gen) and op == "put":
                    self._set_status(bino, key, vid, FAILED)
            self.failed += 1
            log.warning("replication of %s version %s to %s FAILED after %d attempt(s): %s",
                        name, version_label(vid), dest, attempts, reason)
            return
        delay = min(RETRY_MAX, RETRY_BASE * 2 ** (attempts - 1))
        delay *= 0.5 + random.random()
        with self.catalog.transaction():
            self.catalog.delay_replication(seq, attempts, self.clock() + int(delay * 1e9),
                                           reason[:500])
        log.warning("replication of %s version %s to %s failed (attempt %d, next in %.1f s): "
                    "%s", name, version_label(vid), dest, attempts, delay, reason)
