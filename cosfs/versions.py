"""Object versions: which version a write creates, what a delete leaves, what replicates.

COS rules (``/work/shared/cos-reference.md``, "Versioning and cross-region replication"),
kept here once for the mount, the XML API and the services:

- A bucket's versioning is never set (the default), ``Enabled`` or ``Suspended``;
  once set it cannot be removed, only suspended.
- *Enabled*: every new content of a key (a file closed after writing, a PUT, a
  copy, a rename onto the key, a re-encryption) gets a fresh version id, and the
  content it replaces stays readable as a noncurrent version under its own id; a
  delete (without a version id) keeps the content as a noncurrent version and adds
  a *delete marker* with a fresh id. Objects from before versioning have the id
  ``null``.
- *Suspended*: new content and delete markers get the id ``null``, replacing any
  earlier ``null`` version of the key; versions with real ids are kept.
- Metadata changes (chmod, times, user xattrs) do not make versions. One write
  session on the mount (open, writes, fsyncs, close) makes one version.
- Replication: a key written or deleted in a bucket with an enabled replication
  rule whose prefix matches is queued for the replication service; the version
  shows ``PENDING`` until the service records ``COMPLETED`` or ``FAILED``.
  Replicas (written by the service) show ``REPLICA`` and are never queued again.

Representation (``docs/format.md``, "Versions"): the current version of a key is
the object under its name; each noncurrent version is a row of the catalog's
``versions`` table pointing at a *holder* inode (a nameless copy made by
:meth:`cosfs.catalog.Catalog.clone_inode`, sharing the blobs), a delete marker
a row without one.

Every method that changes the catalog runs inside the caller's transaction, on
the trio thread, and never awaits; holders it gives up are set to nlink 0 and
handed to ``purge`` (set by the composition root: the filesystem's purge of
unused nameless inodes) by :meth:`flush`, which callers run after their
transaction.
"""

import base64
import logging
import os
import struct
from typing import Callable, Optional

from .catalog import ROOT_INODE, now_ns
from .errors import (BucketVersionNotOpen, InvalidArgument, InvalidBucketState, NoSuchBucket,
                     ReplicationConfigurationNotFound)
from .replicationconf import parse_replication, render_replication
from .versioning import parse_versioning, render_versioning

log = logging.getLogger(__name__)

#: A queued replication waits this long before it runs, so that a burst of commits of
#: one file (a write session with fsyncs) is copied once.
REPLICATION_DELAY_NS = 300_000_000

ENABLED = "Enabled"
SUSPENDED = "Suspended"

PENDING, COMPLETED, FAILED, REPLICA = "PENDING", "COMPLETED", "FAILED", "REPLICA"


def new_version_id() -> str:
    """A fresh version id: 16 URL-safe characters, ordered by creation time."""
    raw = struct.pack(">Q", now_ns()) + os.urandom(4)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def version_label(version_id) -> str:
    """The id as COS shows it: ``null`` for objects written without versioning."""
    return version_id or "null"


class Versions:
    """Versioning and replication configuration of every bucket, and the version
    bookkeeping of each change of a key (see the module docstring)."""

    def __init__(self, catalog):
        self.catalog = catalog
        self._status = {}  # bucket inode -> None | Enabled | Suspended
        self._rules = {}  # bucket inode -> ReplicationConfig | None
        self._dead = []  # holders given up in the current transaction
        #: called with a holder inode number that lost its version (after the transaction)
        self.purge: Optional[Callable[[int], None]] = None
        #: called when a replication task was queued (the replication service's wake-up)
        self.poke: Optional[Callable[[], None]] = None

    # -- configuration ------------------------------------------------------------
    def status(self, bucket_ino) -> Optional[str]:
        """The bucket's versioning status, None when it was never set."""
        try:
            return self._status[bucket_ino]
        except KeyError:
            doc = self.catalog.get_bucket_config(bucket_ino, "versioning")
            value = None if doc is None else parse_versioning(doc)
            self._status[bucket_ino] = value
            return value

    def get_versioning(self, bucket_ino) -> bytes:
        return render_versioning(self.status(bucket_ino))

    def put_versioning(self, bucket_ino, doc):
        """Set Enabled or Suspended. A bucket that replicates cannot be suspended."""
        status = parse_versioning(doc)
        if status == SUSPENDED and self.replication(bucket_ino) is not None:
            raise InvalidBucketState("versioning cannot be suspended while the bucket has a "
                                     "replication configuration (delete it first)")
        with self.catalog.transaction():
            self.catalog.set_bucket_config(bucket_ino, "versioning", render_versioning(status))
        self._status[bucket_ino] = status
        log.info("bucket %s: versioning %s", self._name(bucket_ino), status)

    def replication(self, bucket_ino):
        """The bucket's :class:`~cosfs.replicationconf.ReplicationConfig` or None."""
        try:
            return self._rules[bucket_ino]
        except KeyError:
            doc = self.catalog.get_bucket_config(bucket_ino, "replication")
            value = None if doc is None else parse_replication(doc)
            self._rules[bucket_ino] = value
            return value

    def get_replication(self, bucket_ino) -> bytes:
        doc = self.catalog.get_bucket_config(bucket_ino, "replication")
        if doc is None:
            raise ReplicationConfigurationNotFound(
                "The replication configuration was not found")
        return doc

    def put_replication(self, bucket_ino, doc):
        """Replace the bucket's rules. Both buckets need versioning Enabled; the
        destination must exist, be another bucket and be in the region the rule names."""
        cfg = parse_replication(doc)
        src = self.catalog.bucket_by_inode(bucket_ino)
        dest = self.catalog.bucket_by_name(cfg.dest_bucket)
        if dest is None:
            raise NoSuchBucket("the destination bucket %s does not exist" % cfg.dest_bucket)
        if dest[0] == bucket_ino:
            raise InvalidArgument("a bucket cannot replicate into itself")
        if dest[2] != cfg.dest_region:
            raise InvalidArgument("the destination bucket %s is in region %s, not %s"
                                  % (cfg.dest_bucket, dest[2], cfg.dest_region))
        for ino, name in ((bucket_ino, src[1]), (dest[0], dest[1])):
            if self.status(ino) != ENABLED:
                raise BucketVersionNotOpen("versioning must be Enabled on bucket %s before "
                                           "replication is configured" % name)
        with self.catalog.transaction():
            self.catalog.set_bucket_config(bucket_ino, "replication", render_replication(cfg))
        self._rules[bucket_ino] = cfg
        log.info("bucket %s: replication to %s (%d rule(s))", src[1], cfg.dest_bucket,
                 len(cfg.rules))

    def delete_replication(self, bucket_ino):
        """Remove the rules (204 also when there were none). Queued work is kept and
        finishes; what was replicated stays."""
        with self.catalog.transaction():
            self.catalog.delete_bucket_config(bucket_ino, "replication")
        self._rules[bucket_ino] = None

    def forget_bucket(self, bucket_ino):
        """The bucket was removed (its inode number may be reused)."""
        self._status.pop(bucket_ino, None)
        self._rules.pop(bucket_ino, None)

    def _name(self, bucket_ino):
        row = self.catalog.bucket_by_inode(bucket_ino)
        return row[1] if row else "#%d" % bucket_ino

    # -- keys of an object ------------------------------------------------------------
    def keys_of(self, ino):
        """The object keys (bytes) of every name of inode ``ino``."""
        keys = []
        for parent, name in self.catalog.names_of(ino):
            parts = [name]
            d = parent
            while True:
                row = self.catalog.parent_of(d)
                if row is None or row[0] == ROOT_INODE:
                    break
                parts.append(row[1])
                d = row[0]
            keys.append(b"/".join(reversed(parts)))
        return keys

    # -- changes of keys (inside the caller's transaction) --------------------------
    def versioned(self, bucket_ino) -> bool:
        return self.status(bucket_ino) is not None

    def _drop_null(self, bucket_ino, key):
        """Suspended: remove the key's noncurrent ``null`` version or marker."""
        for seq, vid, holder, _ in self.catalog.versions_of(bucket_ino, key):
            if vid is None:
                self._give_up(seq)

    def _give_up(self, seq):
        holder = self.catalog.drop_version(seq)
        if holder is not None:
            self.catalog.update_inode(holder, nlink=0)
            self._dead.append(holder)

    def _keep(self, bucket_ino, key, inode, t):
        """Make the current content ``inode`` of ``key`` a noncurrent version."""
        holder = self.catalog.clone_inode(inode.id)
        self.catalog.add_version(bucket_ino, key, inode.version_id, holder, t)

    def before_replace(self, bucket_ino, key, old):
        """New content is about to become current for ``key``; ``old`` (an Inode, or
        None when the key has no current object) is what it replaces."""
        status = self.status(bucket_ino)
        if status is None:
            return
        if status == SUSPENDED:
            self._drop_null(bucket_ino, key)
            if old is not None and old.version_id is None:
                return  # the null version is overwritten
        if old is not None:
            self._keep(bucket_ino, key, old, now_ns())

    def stamp(self, ino, bucket_ino, key, *, new=True, replica=False,
              version_id=None) -> Optional[str]:
        """Give inode ``ino``, now current under ``key``, its version id (a fresh one with
        ``new``, else the one it has) and queue its replication. A ``replica`` keeps the
        source's ``version_id`` (None: ``null``), as COS replicas do, and is never queued.
        Returns the id."""
        status = self.status(bucket_ino)
        if status is None:
            return None
        if replica:
            vid = version_id
            self.catalog.update_inode(ino, version_id=vid)
        elif new:
            vid = new_version_id() if status == ENABLED else None
            self.catalog.update_inode(ino, version_id=vid)
        else:
            vid = self.catalog.get_inode(ino).version_id
        if replica:
            self.catalog.set_replication_status(ino, REPLICA)
        elif self._queue(bucket_ino, key, vid, "put"):
            self.catalog.set_replication_status(ino, PENDING)
        else:
            self.catalog.set_replication_status(ino, None)
        return vid

    def removed(self, bucket_ino, key, old, *, replica=False,
                version_id=None) -> Optional[str]:
        """``key`` was deleted without a version id; ``old`` (an Inode or None) was its
        current object. Versioned buckets get a delete marker; returns its id.
        ``replica``: the marker replicates the source marker ``version_id``."""
        status = self.status(bucket_ino)
        if status is None:
            return None
        self.before_replace(bucket_ino, key, old)
        if replica:
            vid = version_id
        else:
            vid = new_version_id() if status == ENABLED else None
        self.catalog.add_version(bucket_ino, key, vid, None, now_ns())
        if not replica:
            self._queue(bucket_ino, key, vid, "delete")
        return vid

    def _queue(self, bucket_ino, key, vid, op) -> bool:
        cfg = self.replication(bucket_ino)
        if cfg is None:
            return False
        rule = cfg.rule_for(key)
        if rule is None or (op == "delete" and not rule.delete_markers):
            return False
        self.catalog.queue_replication(bucket_ino, key, vid, op, cfg.dest_bucket,
                                       now_ns() + REPLICATION_DELAY_NS)
        if self.poke is not None:
            self.poke()
        return True

    def drop(self, seq):
        """Permanently delete one noncurrent version or marker (its row's ``seq``)."""
        self._give_up(seq)

    def flush(self):
        """After the transaction: purge the holders given up in it."""
        dead, self._dead = self._dead, []
        if self.purge is not None:
            for ino in dead:
                self.purge(ino)
