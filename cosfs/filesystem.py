"""POSIX semantics in COS terms, without pyfuse3.

The mount root lists buckets; everything below a bucket is objects and
directories (key prefixes). This layer decides what each request means
(COS naming rules, EXDEV between buckets, xattr conventions, lookup counts)
and delegates object content to :mod:`cosfs.objects`.

Runs on the trio thread. Catalog changes of one request happen without an
``await`` in between, inside one catalog transaction, so each request is
atomic for other requests and for a crash.

Names: the kernel's names are bytes, object keys are UTF-8. Below a bucket, a
name is used in its key form (:func:`cosfs.names.name_to_key`, which escapes
bytes that are not UTF-8) from the moment it arrives: the catalog holds keys,
and the key rules and the key length limit apply to the mapped key; readdir
maps keys back (:func:`cosfs.names.key_to_name`). ``NAME_MAX`` counts the
kernel's bytes. Names at the mount root are bucket names and are not mapped.

Times: every timestamp set here comes from :func:`cosfs.catalog.now_ns`, the
clock the kernel uses for ``UTIME_NOW``; times the kernel passes are kept as
given.

Errors: raises :class:`~cosfs.errors.CosfsError` subclasses; the FUSE adapter
turns them into errno values.
"""

import errno
import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import Dict, Optional

import trio

from . import names
from .bucketconf import parse_encryption, render_encryption
from .originconf import parse_origin, render_origin
from .inventoryconf import (MAX_CONFIGS as MAX_INVENTORIES, check_destination, check_id,
                           parse_inventory, render_inventory)
from .catalog import ROOT_INODE, Inode, clamp_ns, now_ns
from .chunkio import stored_label
from .errors import (BucketNotEmpty, CosfsError, FsError, InvalidArgument, NotAnObject,
                     NoSuchEncryptionConfiguration)
from .errors import DuplicateInventoryId, InventoryConfigurationNotFoundError, InventoryFull
from .xattrs import XattrOps

log = logging.getLogger(__name__)

#: With a background runner (:meth:`FileSystem.attach`), the nameless objects the kernel
#: forgets are purged together: one catalog transaction per this many, or after
#: ``PURGE_DELAY`` seconds, instead of one each (``rm -rf`` of many files).
PURGE_BATCH = 128
PURGE_DELAY = 0.2

#: bucket_configs kind of inventory ``<Id>``: ``inventory:<Id>``
INVENTORY_KIND = "inventory:"
NAME_MAX = 255
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: fallocate(2) modes (linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_MODES = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
#: Largest size an object may grow to (the kernel's limit for FUSE files, 2**63 - 1).
MAX_SIZE = (1 << 63) - 1


@dataclass
class Ctx:
    """Who asks: the caller's uid, gid and umask (from the FUSE request)."""

    uid: int = 0
    gid: int = 0
    umask: int = 0o022


@dataclass
class DirHandle:
    ino: int
    names: list


class FileSystem(XattrOps):
    """The filesystem operations. One instance per mount."""

    def __init__(self, catalog, objects, *, appid, region, regions, fsync_on_close=False):
        self.catalog = catalog
        self.objects = objects
        self.appid = appid
        self.region = region
        self.regions = tuple(regions)
        self.lookups: Dict[int, int] = {}
        self.handles: Dict[int, int] = {}
        self.readonly = set()  # handles opened O_RDONLY: their close commits nothing
        self.dirs: Dict[int, DirHandle] = {}
        self._next_fh = 1
        self.daemon_info = {}
        self.fsync_on_close = fsync_on_close
        #: versions of keys in versioned buckets (cosfs.versions), shared with the data path
        self.versions = objects.versions
        objects.versions.purge = self._maybe_purge
        #: the replication worker (cosfs.services.replication), set by the composition
        #: root: its status() is shown by the bucket's replication status xattr
        self.replication = None
        #: origin pull: ``await on_miss(bucket_ino, key, folders=True)`` for a name a lookup
        #: did not find below a bucket (``key``: the object key, catalog form); True when it
        #: stored the object (or, with ``folders``, made the key a directory) meanwhile.
        #: Raises CosfsError (EIO) when the origin failed. Set by the composition root
        #: (cosfs.services.origin); None: no origin pull.
        self.on_miss = None
        #: bucket inventory: the service's entry points (cosfs.services.inventory), set by
        #: the composition root: ``await inventory.run_now(bucket_ino, cfg)`` delivers a
        #: one-off report and returns its job id; ``inventory.changed()`` is called after a
        #: configuration changed. None: no deliveries (configurations are still kept).
        self.inventory = None
        #: forgotten nameless inodes waiting for a batched purge (see attach)
        self._queued: Dict[int, None] = {}
        self._purge_wakeup = None

    def attach(self, nursery):
        """Purge forgotten nameless objects in batches, in the background of ``nursery``
        (without it, each is purged when the kernel forgets it). Call
        :meth:`purge_queued` once the kernel is gone."""
        self._purge_wakeup = trio.Event()
        nursery.start_soon(self._purge_loop)

    async def _purge_loop(self):
        while True:
            await self._purge_wakeup.wait()
            await trio.sleep(PURGE_DELAY)  # let more forgets join the batch
            self._purge_wakeup = trio.Event()
            try:
                self.purge_queued()
            except Exception as exc:  # the mount stays up; the next mount purges them
                if isinstance(exc, CosfsError) and exc.code == "CatalogFull":
                    try:
                        await self.make_room()
                        continue
                    except Exception as again:
                        exc = again
                log.warning("purge of forgotten nameless objects: %s; their data is deleted "
                            "at the next mount", exc)

    # -- helpers ------------------------------------------------------------
    def _fh(self):
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def attr(self, ino) -> Inode:
        return self.objects.overlay(self.catalog.get_inode(ino))

    def blocks(self, inode) -> int:
        """``st_blocks`` of ``inode`` (as :meth:`attr` returned it): 512-byte units of
        what a regular file really stores (holes count nothing, so ``du`` tells the
        truth about sparse files); the size for anything else."""
        if inode.is_reg:
            return (self.objects.stored_size(inode) + 511) // 512
        return (inode.size + 511) // 512

    def _dir(self, ino) -> Inode:
        inode = self.catalog.get_inode(ino)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        return inode

    def _child(self, parent, key) -> Inode:
        """The entry ``key`` (catalog form, see :meth:`_key`) of directory ``parent``."""
        ino = self.catalog.lookup(parent, key)
        if ino is None:
            raise FsError(errno.ENOENT)
        return self.catalog.get_inode(ino)

    def _key(self, parent, name) -> bytes:
        """The catalog form of entry ``name`` (bytes from the kernel) in directory ``parent``.

        Below a bucket: the name as a key component, UTF-8 (:func:`names.name_to_key`);
        a name holding a character reserved for escaped bytes is refused (EINVAL) and
        logged. At the mount root (bucket names): the name as it is.
        """
        if parent == ROOT_INODE or name.isascii():
            return name
        try:
            return names.name_to_key(name).encode("utf-8")
        except CosfsError as exc:
            log.warning("refused a name below a bucket: %s", exc)
            raise

    def _name(self, parent, key) -> bytes:
        """The name the kernel is given for entry ``key`` of directory ``parent``: the
        inverse of :meth:`_key`."""
        if parent == ROOT_INODE or key.isascii():
            return key
        return names.key_to_name(key.decode("utf-8"))

    def _check_name(self, parent_inode, name, directory=False) -> bytes:
        """Validate a new entry name below a directory; return its catalog form.

        ``NAME_MAX`` counts the name's bytes as the kernel gave them; the object key
        rules, the length limit among them, apply to the mapped key. A directory counts
        with its trailing ``/``: an empty one is the marker object ``dir/`` in COS
        terms, which must fit the key limit too.
        """
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if name in (b".", b"..") or b"/" in name or not name:
            raise FsError(errno.EINVAL)
        key = self._key(parent_inode.id, name)
        if parent_inode.id != ROOT_INODE:
            path = self.key_of(parent_inode.id, key)
            names.validate_key(path + b"/" if directory else path)
        return key

    def key_of(self, dir_ino, name=None) -> bytes:
        """The object key of entry ``name`` (catalog form) in directory ``dir_ino`` (path
        inside its bucket)."""
        parts = [] if name is None else [name]
        ino = dir_ino
        while True:
            row = self.catalog.parent_of(ino)
            if row is None or row[0] == ROOT_INODE:
                break
            parts.append(row[1])
            ino = row[0]
        return b"/".join(reversed(parts))

    def _touch_dir(self, ino, t):
        self.catalog.update_inode(ino, mtime_ns=t, ctime_ns=t)

    def remember(self, ino, n=1):
        """The kernel now holds ``n`` more references (lookup, create, readdirplus)."""
        self.lookups[ino] = self.lookups.get(ino, 0) + n

    @staticmethod
    def _new_gid(pinode, ctx):
        """Group of a new entry: the directory's if it is setgid (as on local file systems;
        the kernel leaves this to FUSE file systems), else the caller's."""
        return pinode.gid if pinode.mode & stat.S_ISGID else ctx.gid

    def _new_mode(self, mode, ctx, kind):
        return kind | (stat.S_IMODE(mode) & ~ctx.umask & 0o7777)

    # -- buckets --------------------------------------------------------------
    def create_bucket(self, name, *, region=None, uid=0, gid=0, mode=0o755, encryption=None):
        """Create bucket ``name`` (COS rules). Returns its Inode. Raises InvalidBucketName..."""
        region = region or self.region
        names.validate_bucket_name(name, region, self.appid)
        if region not in self.regions:
            raise InvalidArgument("region %s is not configured for this store" % region)
        bname = name.encode()
        if self.catalog.lookup(ROOT_INODE, bname) is not None:
            from .errors import BucketAlreadyExists
            raise BucketAlreadyExists("bucket %s already exists" % name)
        t = now_ns()
        with self.catalog.transaction():
            inode = self.catalog.new_inode(mode=stat.S_IFDIR | (mode & 0o7777), uid=uid, gid=gid,
                                           nlink=2, t=t)
            self.catalog.update_inode(inode.id, bucket=inode.id)
            self.catalog.add_dentry(ROOT_INODE, bname, inode.id)
            self.catalog.add_bucket(inode.id, name, region)
            root = self.catalog.get_inode(ROOT_INODE)
            self.catalog.update_inode(ROOT_INODE, nlink=root.nlink + 1, mtime_ns=t, ctime_ns=t)
            if encryption:
                cfg = parse_encryption(encryption)
                self.catalog.set_bucket_config(inode.id, "encryption", render_encryption(cfg))
        log.info("created bucket %s in %s", name, region)
        return self.catalog.get_inode(inode.id)

    def bucket_inode(self, name) -> int:
        row = self.catalog.bucket_by_name(name)
        if row is None:
            from .errors import NoSuchBucket
            raise NoSuchBucket("no bucket %s" % name)
        return row[0]

    def get_bucket_encryption(self, bucket_ino) -> bytes:
        doc = self.catalog.get_bucket_config(bucket_ino, "encryption")
        if doc is None:
            raise NoSuchEncryptionConfiguration(
                "The specified bucket does not have an encryption configuration")
        return doc

    def put_bucket_encryption(self, bucket_ino, doc):
        """PUT: replace the default; objects already stored are not touched."""
        cfg = parse_encryption(doc)
        with self.catalog.transaction():
            self.catalog.set_bucket_config(bucket_ino, "encryption", render_encryption(cfg))
        log.info("bucket %s: default encryption set to %s",
                 self.catalog.bucket_by_inode(bucket_ino)[1], cfg.algorithm)

    def delete_bucket_encryption(self, bucket_ino):
        with self.catalog.transaction():
            self.catalog.delete_bucket_config(bucket_ino, "encryption")

    def get_bucket_origin(self, bucket_ino) -> bytes:
        doc = self.catalog.get_bucket_config(bucket_ino, "origin")
        if doc is None:
            from .errors import OriginConfigurationNotFoundError
            raise OriginConfigurationNotFoundError(
                "The specified bucket does not have an origin configuration")
        return doc

    def put_bucket_origin(self, bucket_ino, doc):
        """PUT: replace every origin rule of the bucket (MalformedXML for a bad document)."""
        cfg = parse_origin(doc)
        with self.catalog.transaction():
            self.catalog.set_bucket_config(bucket_ino, "origin", render_origin(cfg))
        log.info("bucket %s: %d origin rule(s) set", self.catalog.bucket_by_inode(bucket_ino)[1],
                 len(cfg.rules))

    def delete_bucket_origin(self, bucket_ino):
        with self.catalog.transaction():
            self.catalog.delete_bucket_config(bucket_ino, "origin")

    # -- bucket inventory (the document: cosfs.inventoryconf; deliveries: self.inventory)
    def inventory_config(self, bucket_ino, inventory_id):
        """The parsed InventoryConfig (InventoryConfigurationNotFoundError when none)."""
        return parse_inventory(self.get_bucket_inventory(bucket_ino, inventory_id))

    def get_bucket_inventory(self, bucket_ino, inventory_id) -> bytes:
        doc = self.catalog.get_bucket_config(bucket_ino, INVENTORY_KIND + check_id(inventory_id))
        if doc is None:
            raise InventoryConfigurationNotFoundError("The specified bucket has no inventory "
                                                 "configuration %s" % inventory_id)
        return doc

    def list_bucket_inventory(self, bucket_ino, *, after=None, limit=None):
        """[InventoryConfig] of the bucket in id order, ids after ``after`` only."""
        rows = self.catalog.bucket_configs(bucket_ino, INVENTORY_KIND, limit=limit,
                                           after=INVENTORY_KIND + after if after else None)
        return [parse_inventory(doc) for _kind, doc in rows]

    def _check_inventory_destination(self, bucket_ino, cfg):
        row = self.catalog.bucket_by_name(cfg.dest_bucket)
        check_destination(cfg, self.catalog.bucket_by_inode(bucket_ino)[2],
                          row[2] if row else None)

    def put_bucket_inventory(self, bucket_ino, inventory_id, doc):
        """PUT: add or replace inventory ``inventory_id`` (validated as COS does; at most
        MAX_CONFIGS per bucket: InventoryFull). Nothing changes when it fails."""
        cfg = parse_inventory(doc, expected_id=check_id(inventory_id))
        self._check_inventory_destination(bucket_ino, cfg)
        kind = INVENTORY_KIND + cfg.id
        if self.catalog.get_bucket_config(bucket_ino, kind) is None and \
                self.catalog.count_bucket_configs(bucket_ino, INVENTORY_KIND) >= MAX_INVENTORIES:
            raise InventoryFull("bucket already has %d inventory configurations"
                                % MAX_INVENTORIES)
        with self.catalog.transaction():
            self.catalog.set_bucket_config(bucket_ino, kind, render_inventory(cfg))
        log.info("bucket %s: inventory %s set (%s, %s, to %s)",
                 self.catalog.bucket_by_inode(bucket_ino)[1], cfg.id, cfg.frequency,
                 "enabled" if cfg.enabled else "disabled", cfg.dest_bucket)
        if self.inventory is not None:
            self.inventory.changed()

    def delete_bucket_inventory(self, bucket_ino, inventory_id):
        """DELETE: no error when there is none (COS answers 204 either way)."""
        with self.catalog.transaction():
            self.catalog.delete_bucket_config(bucket_ino, INVENTORY_KIND + check_id(inventory_id))
        if self.inventory is not None:
            self.inventory.changed()

    async def post_bucket_inventory(self, bucket_ino, inventory_id, doc) -> str:
        """POST: deliver a one-off report now (the document needs no IsEnabled/Schedule);
        returns its job id once the report is complete. An id of a configured inventory
        is DuplicateInventoryId."""
        cfg = parse_inventory(doc, expected_id=check_id(inventory_id), one_off=True)
        self._check_inventory_destination(bucket_ino, cfg)
        if self.catalog.get_bucket_config(bucket_ino, INVENTORY_KIND + cfg.id) is not None:
            raise DuplicateInventoryId("inventory %s is a configured inventory of this bucket: "
                                       "a one-off run needs an id of its own" % cfg.id)
        if self.inventory is None:
            raise CosfsError("one-off inventory runs need a running daemon or the cosfs command",
                             code="NotImplemented", errno=errno.ENOTSUP)
        return await self.inventory.run_now(bucket_ino, cfg)

    def inventory_status(self, bucket_ino, inventory_id) -> bytes:
        """The last delivery of an inventory as JSON (ENODATA when there was none)."""
        rec = self.catalog.inventory_delivery(bucket_ino, check_id(inventory_id))
        if rec is None:
            raise FsError(errno.ENODATA, "inventory %s was never delivered" % inventory_id)
        out = {"id": rec["id"], "job_id": rec["job"], "period": rec["period"],
               "started_ns": rec["started_ns"], "finished_ns": rec["finished_ns"],
               "state": "complete" if rec["finished_ns"] else "running or interrupted",
               "destination": rec["dest"], "manifest": rec["manifest"]}
        out.update(json.loads(rec["summary"] or "{}"))
        return json.dumps(out, sort_keys=True).encode()

    # -- lookups --------------------------------------------------------------
    async def lookup(self, parent, name, ctx=None, *, missing_ok=False) -> Optional[Inode]:
        """The entry ``name`` of directory ``parent``, counted as a kernel reference.
        No such name: FsError(ENOENT), or None with ``missing_ok`` (the FUSE adapter's
        negative entries, asked before every file created: no exception on that path)."""
        if name == b".":
            inode = self.attr(parent)
        elif name == b"..":
            row = self.catalog.parent_of(parent)
            inode = self.attr(ROOT_INODE if row is None else row[0])
        else:
            self._dir(parent)
            if len(name) > NAME_MAX:
                # like local file systems: the name can never exist, say why
                raise FsError(errno.ENAMETOOLONG)
            key = self._key(parent, name)
            ino = self.catalog.lookup(parent, key)
            if ino is None and self.on_miss is not None and parent != ROOT_INODE:
                # origin pull: the missing object may be fetched and stored meanwhile
                if await self.on_miss(self.catalog.get_inode(parent).bucket,
                                      self.key_of(parent, key)):
                    ino = self.catalog.lookup(parent, key)
            if ino is None:
                if missing_ok:
                    return None
                raise FsError(errno.ENOENT)
            inode = self.attr(ino)
        self.remember(inode.id)
        return inode

    def forget(self, items):
        """Drop kernel references; purge what is left with no name, at once or (with
        :meth:`attach`) in a batch soon. Every item is forgotten even if a purge fails
        (the first such error is raised at the end)."""
        failed = None
        for ino, n in items:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if self._purge_wakeup is not None:
                self._queued[ino] = None
                continue
            try:
                self._maybe_purge(ino)
            except CosfsError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        if self._queued:
            if len(self._queued) >= PURGE_BATCH:
                self.purge_queued()
            else:
                self._purge_wakeup.set()

    def purge_queued(self):
        """Purge the queued forgotten inodes that are still nameless and unused, in one
        catalog transaction. If that fails (a full catalog), they stay queued and the
        error is raised; an inode whose data cannot be placed is skipped and logged (it
        is purged at the next mount)."""
        queued, self._queued = self._queued, {}
        try:
            inodes = [i for i in map(self._purgeable, queued) if i is not None]
            try:
                self.objects.forget_objects(inodes)
            except FsError:
                for inode in inodes:  # one of them has no bucket and no blobs we can find
                    try:
                        self.objects.forget_objects([inode])
                    except FsError as exc:
                        log.warning("inode %d not purged: %s", inode.id, exc)
        except BaseException:
            self._queued.update(queued)  # purged ones are skipped when tried again
            raise

    async def make_room(self):
        """The catalog ran out of space: give the WAL's disk space back (a checkpoint) and
        purge the nameless objects whose purge failed for lack of it. Raises CosfsError or
        sqlite3 errors when even that fails."""
        try:
            # deleting released blobs frees space even when recording that fails
            await self.objects.collect_garbage()
        except Exception as exc:
            log.debug("garbage collection on a full catalog: %s", exc)
        await self.objects.checkpoint(truncate=True)
        for ino in self.catalog.unlinked_inodes():
            self._maybe_purge(ino)
        log.warning("catalog was full: checkpointed it to give its log's space back")

    def purge_if_unused(self, ino):
        """Delete ``ino`` if it has no name, no kernel reference and no open handle (for
        the key-level core, which replaces and removes objects outside FUSE requests)."""
        self._maybe_purge(ino)

    def _purgeable(self, ino):
        """The inode row of ``ino`` if it has no name, no kernel reference and no open
        handle (it may be purged), else None."""
        if ino in self.lookups or ino == ROOT_INODE:
            return None
        st = self.objects.states.get(ino)
        # Uncommitted changes (a commit that failed, e.g. ENOSPC) do not keep a nameless,
        # closed object alive: nobody can reach them, and their blobs would hold the space.
        if st is not None and (st.open_count or st.commit_lock.locked()):
            return None
        try:
            inode = self.catalog.get_inode(ino)
        except FsError:
            return None
        return inode if inode.nlink <= 0 else None

    def _maybe_purge(self, ino):
        """Delete an inode once it has no name, no kernel reference and no open handle."""
        inode = self._purgeable(ino)
        if inode is not None:
            self.objects.forget_object(inode)

    async def getattr(self, ino, ctx=None) -> Inode:
        return self.attr(ino)

    def access(self, ino, mode, uid, gid, groups=()) -> bool:
        """``access(2)``: may a caller of ``uid``, ``gid`` and supplementary ``groups``
        do ``mode`` (``os.R_OK | os.W_OK | os.X_OK``, 0 for existence) on ``ino``?

        The kernel's rules: root may read and write anything and search any directory,
        and may execute anything else only if some execute bit is set; others get the
        owner's bits if they own it, else the group's if it is their group or one of
        their supplementary ones, else everyone's. FsError ENOENT if ``ino`` is gone.
        Only asked when the kernel does not check permissions itself
        (:func:`cosfs.mount.permission_options`).
        """
        inode = self.attr(ino)
        want = mode & (os.R_OK | os.W_OK | os.X_OK)
        if uid == 0:
            return not want & os.X_OK or inode.is_dir or bool(inode.mode & 0o111)
        if uid == inode.uid:
            bits = inode.mode >> 6
        elif inode.gid == gid or inode.gid in groups:
            bits = inode.mode >> 3
        else:
            bits = inode.mode
        return bits & want == want

    async def setattr(self, ino, *, mode=None, uid=None, gid=None, size=None, atime_ns=None,
                      mtime_ns=None, ctime_ns=None, ctx=None) -> Inode:
        """chmod/chown/utimens/truncate. Never changes an object's encryption.

        The change time becomes ``ctime_ns`` if given (the kernel's, when it caches
        writes), else now. A call that sets nothing (``chown`` to the same owner and
        group) still moves the change time, as POSIX asks. A time outside the range the
        catalog stores is brought to its nearer end (``catalog.clamp_ns``).
        """
        inode = self.catalog.get_inode(ino)
        t = now_ns() if ctime_ns is None else clamp_ns(ctime_ns)
        if size is not None:
            if not inode.is_reg:
                raise FsError(errno.EISDIR if inode.is_dir else errno.EINVAL)
            await self.objects.truncate(ino, size)
        fields = {}
        if mode is not None:
            fields["mode"] = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        if uid is not None:
            fields["uid"] = uid
        if gid is not None:
            fields["gid"] = gid
        if atime_ns is not None:
            fields["atime_ns"] = clamp_ns(atime_ns)
        if mtime_ns is not None:
            fields["mtime_ns"] = mtime_ns = clamp_ns(mtime_ns)
            st = self.objects.states.get(ino)
            if st is not None:
                st.mtime_ns = mtime_ns
        fields["ctime_ns"] = t
        if size is None and self.objects.defer_attrs(ino, fields):
            return self.attr(ino)
        st = self.objects.states.get(ino)
        if st is not None:
            st.ctime_ns = t
            for name in fields:  # a value set now supersedes one still deferred
                st.attrs.pop(name, None)
        with self.catalog.transaction():
            self.catalog.update_inode(ino, **fields)
        return self.attr(ino)

    async def drop_setid(self, ino, in_group=None) -> bool:
        """Clear a regular file's set-user-ID bit, and its set-group-ID bit if the group
        may execute it, as Linux does when a caller without ``CAP_FSETID`` writes or
        truncates a file and whenever a file changes owner. ``in_group`` (for such a
        caller; None for a change of owner): a function of a gid telling whether the
        caller is in that group; a caller outside the file's group also clears the
        set-group-ID bit of a file its group may not execute (Linux 6.2 on). True if a
        bit was cleared (the change time moves); nothing else changes."""
        inode = self.attr(ino)
        if not inode.is_reg:
            return False
        mode = inode.mode & ~stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or (
                in_group is not None and not in_group(inode.gid))):
            mode &= ~stat.S_ISGID
        if mode == inode.mode:
            return False
        await self.setattr(ino, mode=mode)
        return True

    async def readlink(self, ino, ctx=None) -> bytes:
        inode = self.catalog.get_inode(ino)
        if not stat.S_ISLNK(inode.mode):
            raise FsError(errno.EINVAL)
        return inode.target

    # -- creating entries ---------------------------------------------------
    def _make(self, parent, name, mode, ctx, *, rdev=0, target=None, object_id=None,
              crypt=None) -> Inode:
        """Insert a non-directory entry (one transaction). ``object_id`` and ``crypt``
        (a data key made for it): the new object's identity and recorded encryption."""
        pinode = self._dir(parent)
        if parent == ROOT_INODE:
            log.warning("refused to create %r at the mount root: objects must live inside a "
                        "bucket", name)
            raise NotAnObject("objects must live inside a bucket")
        key = self._check_name(pinode, name)
        if self.catalog.lookup(parent, key) is not None:
            raise FsError(errno.EEXIST)
        t = now_ns()
        vs = self.versions
        with self.catalog.transaction():
            inode = self.catalog.new_inode(
                mode=mode, uid=ctx.uid, gid=self._new_gid(pinode, ctx), rdev=rdev, nlink=1,
                bucket=pinode.bucket, target=target, object_id=object_id or os.urandom(16),
                enc=crypt and crypt.label, wrapped_key=crypt and crypt.wrapped,
                size=0 if target is None else len(target), t=t)
            self.catalog.add_dentry(parent, key, inode.id)
            self._touch_dir(parent, t)
            if stat.S_ISREG(mode) and vs.versioned(pinode.bucket):
                path = self.key_of(parent, key)
                vs.before_replace(pinode.bucket, path, None)
                vs.stamp(inode.id, pinode.bucket, path)
        vs.flush()
        self.remember(inode.id)
        return self.catalog.get_inode(inode.id)

    async def mknod(self, parent, name, mode, rdev, ctx) -> Inode:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        inode = self._make(parent, name, self._new_mode(mode, ctx, kind), ctx, rdev=rdev)
        if kind == stat.S_IFREG and self.objects.resolve_for(inode) is not None:
            self.objects.state(inode.id).version_made = inode.version_id is not None
            await self.objects.truncate(inode.id, 0)  # records the encryption (see create)
            inode = self.catalog.get_inode(inode.id)
        return inode

    async def symlink(self, parent, name, target, ctx) -> Inode:
        return self._make(parent, name, stat.S_IFLNK | 0o777, ctx, target=target)

    async def create(self, parent, name, mode, flags, ctx):
        """Create and open a regular file. Returns (fh, Inode).

        COS encrypts even an empty upload by the bucket default, so the encryption is
        decided here and recorded with the new inode, with the data key that its first
        content is sealed with: a file created and closed unwritten costs one catalog
        transaction."""
        pinode = self._dir(parent)
        spec = crypt = None
        object_id = os.urandom(16)
        if parent != ROOT_INODE:
            spec = self.objects.decide(pinode.bucket)
            crypt = self.objects.new_crypt(stored_label(spec), object_id)
        inode = self._make(parent, name, self._new_mode(mode, ctx, stat.S_IFREG), ctx,
                           object_id=object_id, crypt=crypt)
        fh = self._fh()
        self.handles[fh] = inode.id
        self.objects.opened(inode.id, write=True)
        # the new object's first content is the version stamped at its creation
        self.objects.states[inode.id].version_made = True
        if crypt is not None:
            self.objects.begin_with(inode.id, spec, crypt)
        return fh, inode

    async def mkdir(self, parent, name, mode, ctx) -> Inode:
        pinode = self._dir(parent)
        dmode = self._new_mode(mode, ctx, stat.S_IFDIR)
        if parent == ROOT_INODE:
            try:
                inode = self.create_bucket(name.decode("utf-8", "surrogateescape"),
                                           uid=ctx.uid, gid=ctx.gid, mode=dmode)
            except CosfsError as exc:
                log.warning("mkdir %r at the mount root: %s (%s)", name, exc, exc.code)
                raise
            self.remember(inode.id)
            return inode
        key = self._check_name(pinode, name, directory=True)
        if self.catalog.lookup(parent, key) is not None:
            raise FsError(errno.EEXIST)
        t = now_ns()
        if pinode.mode & stat.S_ISGID:
            dmode |= stat.S_ISGID  # a setgid directory passes the bit on to subdirectories
        with self.catalog.transaction():
            inode = self.catalog.new_inode(mode=dmode, uid=ctx.uid, gid=self._new_gid(pinode, ctx),
                                           nlink=2, bucket=pinode.bucket, t=t)
            self.catalog.add_dentry(parent, key, inode.id)
            self.catalog.update_inode(parent, nlink=pinode.nlink + 1, mtime_ns=t, ctime_ns=t)
        self.remember(inode.id)
        return self.catalog.get_inode(inode.id)

    async def link(self, ino, new_parent, new_name, ctx) -> Inode:
        inode = self.catalog.get_inode(ino)
        pinode = self._dir(new_parent)
        if inode.is_dir:
            raise FsError(errno.EPERM)
        if new_parent == ROOT_INODE:
            raise NotAnObject("objects must live inside a bucket")
        if pinode.bucket != inode.bucket:
            raise FsError(errno.EXDEV)
        key = self._check_name(pinode, new_name)
        if self.catalog.lookup(new_parent, key) is not None:
            raise FsError(errno.EEXIST)
        t = now_ns()
        vs = self.versions
        with self.catalog.transaction():
            self.catalog.add_dentry(new_parent, key, ino)
            self.catalog.update_inode(ino, nlink=inode.nlink + 1, ctime_ns=t)
            self._touch_dir(new_parent, t)
            if inode.is_reg and vs.versioned(inode.bucket):
                # a second name of the same content: the key gets it as its current
                # version (the version id is the inode's, shared by its names)
                path = self.key_of(new_parent, key)
                vs.before_replace(inode.bucket, path, None)
                vs.stamp(ino, inode.bucket, path, new=False)
        vs.flush()
        self.remember(ino)
        return self.attr(ino)

    # -- removing entries ---------------------------------------------------
    def _drop_link(self, inode, t):
        """One name of ``inode`` went away (inside a transaction)."""
        self.catalog.update_inode(inode.id, nlink=inode.nlink - 1, ctime_ns=t)

    async def unlink(self, parent, name, ctx=None):
        self._dir(parent)
        key = self._key(parent, name)
        inode = self._child(parent, key)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        t = now_ns()
        vs = self.versions
        with self.catalog.transaction():
            if inode.is_reg and vs.versioned(inode.bucket):
                vs.removed(inode.bucket, self.key_of(parent, key), inode)
            self.catalog.remove_dentry(parent, key)
            self._drop_link(inode, t)
            self._touch_dir(parent, t)
        vs.flush()
        self._maybe_purge(inode.id)

    async def rmdir(self, parent, name, ctx=None):
        pinode = self._dir(parent)
        key = self._key(parent, name)
        inode = self._child(parent, key)
        if not inode.is_dir:
            raise FsError(errno.ENOTDIR)
        if self.catalog.has_children(inode.id):
            if parent == ROOT_INODE:
                log.warning("rmdir of bucket %r refused: BucketNotEmpty", name)
                raise BucketNotEmpty("bucket %s is not empty" % name.decode(errors="replace"))
            raise FsError(errno.ENOTEMPTY)
        if parent == ROOT_INODE and self.catalog.has_versions(inode.id):
            log.warning("rmdir of bucket %r refused: it holds noncurrent versions or delete "
                        "markers (cosfs versions)", name)
            raise BucketNotEmpty("bucket %s still holds object versions"
                                 % name.decode(errors="replace"))
        if parent == ROOT_INODE:
            self.purge_queued()  # while their bucket still tells where their data is
        t = now_ns()
        with self.catalog.transaction():
            self.catalog.remove_dentry(parent, key)
            self.catalog.update_inode(inode.id, nlink=0, ctime_ns=t)
            self.catalog.update_inode(parent, nlink=pinode.nlink - 1, mtime_ns=t, ctime_ns=t)
            if parent == ROOT_INODE:
                self.catalog.remove_bucket(inode.id)
        if parent == ROOT_INODE:
            self.versions.forget_bucket(inode.id)
        self._maybe_purge(inode.id)

    # -- rename ---------------------------------------------------------------
    def _is_ancestor(self, anc, ino):
        """True if directory ``anc`` is ``ino`` or one of its ancestors."""
        while True:
            if ino == anc:
                return True
            row = self.catalog.parent_of(ino)
            if row is None:
                return False
            ino = row[0]

    async def rename(self, old_parent, old_name, new_parent, new_name, flags=0, ctx=None):
        """Atomic rename inside a bucket; EXDEV between buckets (so ``mv`` copies)."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL)
        op = self._dir(old_parent)
        np = self._dir(new_parent)
        old_key = self._key(old_parent, old_name)
        src = self._child(old_parent, old_key)
        if ROOT_INODE in (old_parent, new_parent):
            log.warning("rename %r -> %r at the mount root refused: buckets cannot be "
                        "renamed and objects must live inside a bucket", old_name, new_name)
            raise FsError(errno.EPERM if old_parent == new_parent else errno.EXDEV)
        if op.bucket != np.bucket:
            raise FsError(errno.EXDEV)
        new_key = self._check_name(np, new_name, directory=src.is_dir)
        if src.is_dir:
            # every key below the directory changes with it; none may outgrow the COS limit
            new_len = len(self.key_of(new_parent, new_key))
            if new_len > len(self.key_of(old_parent, old_key)):
                deepest = self.catalog.longest_relative_key(src.id)
                if deepest and new_len + 1 + deepest > names.MAX_KEY_BYTES:
                    raise FsError(errno.ENAMETOOLONG, "a key below the directory would be "
                                  "longer than %d bytes" % names.MAX_KEY_BYTES)
        dst_ino = self.catalog.lookup(new_parent, new_key)
        dst = None if dst_ino is None else self.catalog.get_inode(dst_ino)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise FsError(errno.EEXIST)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT)
            return self._exchange(op, old_key, src, np, new_key, dst)
        if dst is not None and dst.id == src.id:
            return
        if src.is_dir and self._is_ancestor(src.id, new_parent):
            raise FsError(errno.EINVAL)
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                raise FsError(errno.ENOTDIR)
            if not src.is_dir and dst.is_dir:
                raise FsError(errno.EISDIR)
            if dst.is_dir and self.catalog.has_children(dst.id):
                raise FsError(errno.ENOTEMPTY)
        vs = self.versions
        versioned = vs.versioned(op.bucket)
        if versioned and src.is_dir and self.catalog.has_children(src.id):
            # every key below would change: COS has no such operation; mv copies instead
            log.info("rename of a non-empty directory in versioned bucket %d answered EXDEV",
                     op.bucket)
            raise FsError(errno.EXDEV)
        t = now_ns()
        with self.catalog.transaction():
            if versioned and src.is_reg:
                # the old key is deleted (a delete marker), the new key gets new content
                vs.removed(op.bucket, self.key_of(old_parent, old_key), src)
                new_path = self.key_of(new_parent, new_key)
                vs.before_replace(op.bucket, new_path, dst if dst is not None and dst.is_reg
                                  else None)
                vs.stamp(src.id, op.bucket, new_path)
            elif versioned and dst is not None and dst.is_reg:
                vs.removed(op.bucket, self.key_of(new_parent, new_key), dst)
            self.catalog.remove_dentry(old_parent, old_key)
            self.catalog.set_dentry(new_parent, new_key, src.id)
            self.catalog.update_inode(src.id, ctime_ns=t)
            nlink_delta = {}
            if dst is not None:
                if dst.is_dir:
                    self.catalog.update_inode(dst.id, nlink=0, ctime_ns=t)
                    nlink_delta[new_parent] = nlink_delta.get(new_parent, 0) - 1
                else:
                    self._drop_link(dst, t)
            if src.is_dir and old_parent != new_parent:
                nlink_delta[old_parent] = nlink_delta.get(old_parent, 0) - 1
                nlink_delta[new_parent] = nlink_delta.get(new_parent, 0) + 1
            for d in {old_parent, new_parent}:
                cur = self.catalog.get_inode(d)
                self.catalog.update_inode(d, nlink=cur.nlink + nlink_delta.get(d, 0),
                                          mtime_ns=t, ctime_ns=t)
        vs.flush()
        if dst is not None:
            self._maybe_purge(dst.id)

    def _exchange(self, op, old_key, src, np, new_key, dst):
        if src.is_dir and self._is_ancestor(src.id, np.id):
            raise FsError(errno.EINVAL)
        if dst.is_dir and self._is_ancestor(dst.id, op.id):
            raise FsError(errno.EINVAL)
        vs = self.versions
        versioned = vs.versioned(op.bucket)
        if versioned and (src.is_dir or dst.is_dir):
            raise FsError(errno.EXDEV)
        t = now_ns()
        with self.catalog.transaction():
            if versioned:
                # each key gets the other's content as a new version
                old_path, new_path = self.key_of(op.id, old_key), self.key_of(np.id, new_key)
                for path, before, after in ((old_path, src, dst), (new_path, dst, src)):
                    if after.is_reg:
                        vs.before_replace(op.bucket, path, before if before.is_reg else None)
                    elif before.is_reg:
                        vs.removed(op.bucket, path, before)
                for path, after in ((old_path, dst), (new_path, src)):
                    if after.is_reg:
                        vs.stamp(after.id, op.bucket, path)
            self.catalog.set_dentry(op.id, old_key, dst.id)
            self.catalog.set_dentry(np.id, new_key, src.id)
            if op.id != np.id and src.is_dir != dst.is_dir:
                delta = 1 if dst.is_dir else -1
                self.catalog.update_inode(op.id, nlink=op.nlink + delta)
                self.catalog.update_inode(np.id, nlink=np.nlink - delta)
            for ino in (src.id, dst.id):
                self.catalog.update_inode(ino, ctime_ns=t)
            for d in {op.id, np.id}:
                self._touch_dir(d, t)
        vs.flush()

    # -- files ------------------------------------------------------------------
    async def open(self, ino, flags, ctx=None) -> int:
        inode = self.catalog.get_inode(ino)
        if inode.is_dir:
            raise FsError(errno.EISDIR)
        writer = (flags & os.O_ACCMODE) != os.O_RDONLY
        self.objects.opened(ino, write=writer)
        if flags & os.O_TRUNC and inode.is_reg:
            # held open first: the truncation and the writes that follow are one write
            # session (one version in a versioned bucket). O_RDONLY|O_TRUNC truncates too,
            # as on ext4 (the kernel, which asked for write permission, shows size 0)
            try:
                await self.objects.truncate(ino, 0)
            except BaseException:
                self.objects.unopened(ino, write=writer)
                raise
        fh = self._fh()
        self.handles[fh] = ino
        if (flags & os.O_ACCMODE) == os.O_RDONLY:
            self.readonly.add(fh)
        return fh

    def _ino(self, fh):
        try:
            return self.handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    def inode_of(self, fh) -> int:
        """The inode a handle of :meth:`open` or :meth:`create` is open on; FsError(EBADF)
        for an unknown handle."""
        return self._ino(fh)

    async def read(self, fh, offset, size) -> bytes:
        ino = self._ino(fh)
        try:
            return await self.objects.read(ino, offset, size)
        except CosfsError as exc:
            if exc.errno == errno.EIO:
                # the data path knows inodes and chunks; operators need the object's name
                log.error("cannot read object %s (inode %d) at offset %d: %s",
                          self._object_name(ino), ino, offset, exc.code)
            raise

    def _object_name(self, ino):
        """``bucket/key`` of an object for log messages (first name of a hard link)."""
        try:
            inode = self.catalog.get_inode(ino)
            row = self.catalog.bucket_by_inode(inode.bucket)
            bucket = row[1] if row else "?"
            if self.catalog.parent_of(ino) is None:
                return "%s/<unlinked>" % bucket
            return "%s/%s" % (bucket, self.key_of(ino).decode("utf-8", "replace"))
        except CosfsError:
            return "<inode %d>" % ino

    async def write(self, fh, offset, data) -> int:
        return await self.objects.write(self._ino(fh), offset, data)

    async def fallocate(self, fh, offset, length, mode=0):
        """fallocate(2) on a handle open for writing.

        Modes, as on ext4: 0 grows the size to ``offset+length`` if it is smaller;
        ``KEEP_SIZE`` alone changes nothing but the times; ``PUNCH_HOLE|KEEP_SIZE``
        makes the range read as zeros and stores whole chunks of it as nothing;
        ``ZERO_RANGE`` does the same and, without ``KEEP_SIZE``, grows the size as mode
        0 does. Nothing is reserved: a later write may still fail with ENOSPC (as on
        every copy-on-write store). Other modes (collapse, insert, unshare): EOPNOTSUPP;
        a punch without ``KEEP_SIZE`` or together with ``ZERO_RANGE``: EOPNOTSUPP, as
        Linux answers. A negative offset or a length under 1: EINVAL; a range past
        :data:`MAX_SIZE`: EFBIG; a handle not open for writing: EBADF; anything but a
        regular file: ENODEV.
        """
        ino = self._ino(fh)
        if fh in self.readonly:
            raise FsError(errno.EBADF, "handle %d is not open for writing" % fh)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL, "fallocate of %d bytes at %d" % (length, offset))
        if mode & ~FALLOC_MODES or (mode & FALLOC_FL_PUNCH_HOLE and (
                not mode & FALLOC_FL_KEEP_SIZE or mode & FALLOC_FL_ZERO_RANGE)):
            raise FsError(errno.EOPNOTSUPP, "fallocate mode %#x" % mode)
        if offset + length > MAX_SIZE:
            raise FsError(errno.EFBIG)
        if not self.catalog.get_inode(ino).is_reg:
            raise FsError(errno.ENODEV)
        await self.objects.fallocate(
            ino, offset, length, zero=bool(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)),
            keep_size=bool(mode & FALLOC_FL_KEEP_SIZE))

    async def flush(self, fh) -> Optional[int]:
        """close(2) of one descriptor: commit so the content survives a daemon kill.

        A reader's close commits nothing: it must not report (or wait for) the failure
        of another writer's changes, as no local file system would. Returns the inode
        whose attributes the kernel may hold wrongly now (``st_blocks`` reported as the
        whole size before the commit showed holes), else None."""
        ino = self._ino(fh)
        if fh in self.readonly:
            return None
        await self.objects.commit(ino, durable=self.fsync_on_close)
        return ino if self.objects.estimate_outdated(ino) else None

    async def release(self, fh):
        ino = self.handles.pop(fh, None)
        writer = fh not in self.readonly
        self.readonly.discard(fh)
        if ino is None:
            return
        try:
            await self.objects.released(ino, write=writer)
        finally:
            self._maybe_purge(ino)

    async def fsync(self, fh, datasync=False):
        """Commit durably: the content survives a machine crash once this returns."""
        await self.objects.commit(self._ino(fh), durable=True)

    async def fsyncdir(self, fh, datasync=False):
        await self.objects.sync_catalog()

    # -- directories --------------------------------------------------------------
    async def opendir(self, ino, ctx=None) -> int:
        self._dir(ino)
        fh = self._fh()
        self.dirs[fh] = DirHandle(ino, [])
        return fh

    def readdir(self, fh, start, batch=1000):
        """Yield (name, Inode, next_offset, counted) from offset ``start``.

        Offsets: 0 is ".", 1 is "..", 2+i is the i-th entry in name order.
        ``counted`` is False for "." and "..", which the kernel does not add
        to lookup counts. The adapter calls :meth:`readdir_sent` for each
        entry the kernel took; it records the name so that a later call
        resumes right after it, whatever was created or removed meanwhile.
        """
        h = self.dirs.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        if start == 0:
            yield b".", self.attr(h.ino), 1, False
            start = 1
        if start == 1:
            row = self.catalog.parent_of(h.ino)
            yield b"..", self.attr(ROOT_INODE if row is None else row[0]), 2, False
            start = 2
        index = start - 2
        del h.names[index:]
        if index > len(h.names):
            return
        after = h.names[index - 1] if index > 0 else None
        pos = start
        while True:
            rows = self.catalog.list_dir(h.ino, after=after, limit=batch, stored=True)
            for key, inode in rows:
                pos += 1
                yield self._name(h.ino, key), self.objects.overlay(inode), pos, True
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def readdir_sent(self, fh, name, ino):
        h = self.dirs[fh]
        h.names.append(self._key(h.ino, name))  # the cursor is in catalog (key) order
        self.remember(ino)

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def statfs(self, ctx=None):
        store = next(iter(self.objects.stores.values()))
        sv = store.statvfs()
        files = self.catalog.inode_count()
        return dict(f_bsize=sv.f_bsize, f_frsize=sv.f_frsize, f_blocks=sv.f_blocks,
                    f_bfree=sv.f_bfree, f_bavail=sv.f_bavail, f_files=files + 10 ** 9,
                    f_ffree=10 ** 9, f_favail=10 ** 9, f_namemax=NAME_MAX)

    # -- lifecycle -------------------------------------------------------------------
    def purge_unlinked(self):
        """At mount: delete inodes that lost their last name while open before a crash."""
        for ino in self.catalog.unlinked_inodes():
            self.objects.forget_object(self.catalog.get_inode(ino))
