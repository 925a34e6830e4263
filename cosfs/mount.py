"""The composition root: the one place where a store is opened and a mount is wired.

``open_store`` builds catalog, chunk stores and key store from a Config and
checks that they belong together; ``run_mount`` mounts and serves until
unmount or SIGINT/SIGTERM, committing every buffered change before it
returns (SIGHUP reopens the log file). With ``api.enabled`` the same daemon
also serves the COS XML API (``build_api``: key space, authentication and
the ASGI app; :mod:`cosfs.api.server` runs it in the daemon's nursery);
``run_serve`` serves the API alone, without FUSE. With a mount, a
``KernelNotifier`` invalidates the kernel's entries for names the API
changed before each answer. On stop the API finishes
the requests in progress before the data path commits everything. ``build_origin`` wires
origin pull (:mod:`cosfs.services.origin`) into the filesystem layer's ``on_miss`` hook, which
mount lookups and API reads share. ``build_inventory`` makes the inventory service
(:mod:`cosfs.services.inventory`) the filesystem layer's ``fs.inventory``; the daemon's services
run as tasks of its nursery (``services`` of ``_serve``), started before the mount is reported
ready and stopped before the final commit; ``run_inventory_now`` delivers a one-off report on
an unmounted store. Everything else receives its
collaborators from here. Also here: what needs both the catalog and the key
store (``retire_key``, ``key_usage``) and the status a running daemon reports
(``DaemonStatus``).
"""

import collections
import contextlib
import errno
import fcntl
import functools
import itertools
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import trio

from . import __version__, durable, lease, snapshots
from .catalog import ROOT_INODE, Catalog
from .errors import AccessDenied, CosfsError, IntegrityError, InvalidArgument, KeyStoreError
from .keys import KeyStore, parse_version
from .service import (LOG_FORMAT, JournalFormatter, LastError, ReopeningFileHandler, iso_time,
                      log_destination, reopen_log_files, sd_notify, stderr_is_journal)
from .snapshots import Snapshotter, targets_of
from .snapshots import s3_stores_of as s3_stores
from .store import LocalStore
from .xattrs import STATUS_XATTR

try:
    BaseExceptionGroup
except NameError:  # Python < 3.11: trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
CATALOG_NAME = "catalog.db"


@dataclass
class Store:
    """An opened store: catalog, region stores, key store and the lock that guards them."""

    config: object
    catalog: Catalog
    stores: dict
    keys: KeyStore
    lock_fd: int

    #: the previous user of the store did not close it (a crash or a kill): blobs it
    #: wrote may still sit unsynced in the page cache, referenced by its commits
    unclean: bool = False
    #: this machine's lease holder id in the S3 stores (None: no S3 store)
    lease_holder: "str | None" = None
    #: the thread that renews the lease (and fences the stores when it is lost)
    lease_keeper: "lease.Keeper | None" = None

    @property
    def s3_targets(self):
        """The distinct S3 stores (catalog snapshots and the lease go to each)."""
        return targets_of(self.stores)

    def close(self):
        try:
            if self.lease_keeper is not None:
                self.lease_keeper.stop()
            for region_store in self.stores.values():
                region_store.close()
            if self.lease_holder is not None:
                lease.release(self.s3_targets, self.lease_holder)
            self.catalog.close()
            # an empty lock file tells the next opener that everything was closed cleanly
            os.ftruncate(self.lock_fd, 0)
        finally:
            os.close(self.lock_fd)


def _lock(store_dir, purpose):
    """Lock the store for this process: (fd, whether the previous holder left it unclosed)."""
    path = os.path.join(store_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise CosfsError("store %s is in use (%s); unmount it first or use the mounted bucket "
                         "path" % (store_dir, holder or "locked"), errno=errno.EBUSY,
                         code="StoreBusy") from None
    previous = os.pread(fd, 4096, 0)
    os.ftruncate(fd, 0)
    os.pwrite(fd, ("%s by pid %d" % (purpose, os.getpid())).encode(), 0)
    return fd, bool(previous.strip())


def _make_store_dir(store_dir):
    """The store folder and its blobs/ (0700, durable); CosfsError naming the folder."""
    try:
        durable.makedirs(store_dir, 0o700)
        # makedirs gives intermediate directories the umask's mode: make blobs/ here
        durable.makedirs(os.path.join(store_dir, "blobs"), 0o700)
    except OSError as exc:
        raise CosfsError("cannot create store directory %s: %s" % (store_dir, exc.strerror),
                         errno=exc.errno) from None


def region_dir(config, region):
    return os.path.join(config.store, "blobs", region)


def open_store(config, *, create, purpose="opened", break_lease=False):
    """Open (or with ``create`` make) the store that ``config`` describes.

    With S3 regions, takes the store's lease (:mod:`cosfs.lease`; ``break_lease``
    takes over a stale one of another machine). Raises CosfsError (store busy,
    no catalog, lease held) or KeyStoreError (missing, too open, corrupt, or not
    the key store this catalog was written with).
    """
    store_dir = os.fspath(config.store)
    if create:
        _make_store_dir(store_dir)
    elif not os.path.isdir(store_dir):
        raise CosfsError("no store at %s" % store_dir, errno=errno.ENOENT, code="NoSuchStore")
    lock_fd, unclean = _lock(store_dir, purpose)
    holder = keeper = None
    stores = {}
    try:
        _sweep_leftovers(store_dir)
        catalog_path = os.path.join(store_dir, CATALOG_NAME)
        new_catalog = not os.path.exists(catalog_path)
        # gaps are checked against the catalog's retired versions in _check_keys
        keys = KeyStore.open(config.keys, create=create and new_catalog, allow_gaps=True)
        for region in config.regions:
            s3 = config.store_of(region)
            if s3 is not None:
                from .s3store import S3Store  # boto3 is imported only when a region needs it
                s = S3Store(s3, store_dir, drop_cache=unclean)
            else:
                s = LocalStore(region_dir(config, region))
            s.headroom = functools.partial(_file_size, catalog_path + "-wal")
            if create or s3 is not None or os.path.isdir(s.root):
                s.create()
            stores[region] = s
        targets = targets_of(stores)
        keeper = None
        if targets:
            holder = lease.holder_of(store_dir)
            lease.acquire(targets, holder, break_stale=break_lease)
            keeper = lease.Keeper(targets, holder, s3_stores(stores)).start()
            for s in s3_stores(stores):
                s.start()  # write-back: resume the upload queue, now that the lease is ours
        if unclean:
            # before the catalog is opened: opening may upgrade its format, which syncs it
            started, count = time.monotonic(), _sync_blobs(stores)
        catalog = Catalog(catalog_path, create=create)
        try:
            _check_keys(catalog, keys)
            _check_chunk_size(catalog, config)
        except BaseException:
            catalog.db.close()
            raise
        if unclean:
            catalog.sync()
            log.info("the store was not closed cleanly: made %d blob(s) and the catalog durable "
                     "in %.1f s", count, time.monotonic() - started)
        return Store(config, catalog, stores, keys, lock_fd, unclean, holder, keeper)
    except BaseException:
        if keeper is not None:
            keeper.stop()
        for s in s3_stores(stores):
            s.close()
        if holder is not None:
            lease.release(targets_of(stores), holder)
        os.close(lock_fd)
        raise


def _sync_blobs(stores):
    """After a crash: make every blob durable (before the catalog that references them).

    The crashed process may have committed catalog versions whose blobs are still
    only in the page cache (its own list of unsynced blobs died with it). Any
    later catalog sync would make those commits durable, so the blobs must be
    synced first. Costs one fdatasync per blob, only after an unclean shutdown.
    Returns how many blobs were synced.
    """
    return sum(s.sync_everything() for s in stores.values())


def remove_orphans(store):
    """After a crash: delete the blobs of the local stores that nothing in the catalog
    names (sealed for commits that never came, or undone by a power cut). Returns how
    many went.

    Only a daemon that has not written anything yet may call this (a blob it sealed
    would not be named yet either): the mount and the API server, at start, when the
    store was left unclean. The store is checked one blob-name prefix at a time, so
    memory does not grow with it. S3 stores are left to ``cosfs fsck``, which first
    makes a catalog snapshot there that no longer names them. A deletion lost to
    another crash leaves the orphan for the next start.
    """
    removed = 0
    for s in store.stores.values():
        if not isinstance(s, LocalStore):
            continue
        for prefix, blobs in itertools.groupby(s.list(), key=lambda b: b[0]):
            lo = bytes([prefix])
            hi = bytes([prefix + 1]) if prefix < 255 else None
            named = store.catalog.named_blobs(lo, hi)
            for blob in blobs:
                if blob not in named:
                    try:
                        s.delete(blob)
                    except CosfsError as exc:  # kept for fsck; the mount goes on
                        log.warning("cannot remove a blob that no commit named: %s", exc)
                        continue
                    removed += 1
    if removed:
        log.info("the store was not closed cleanly: removed %d blob(s) that no commit named",
                 removed)
    return removed


def start_core(store, config):
    """What a daemon (mount or API server) does with its store before it serves:
    after a crash, remove the orphans; build the core; create the configured buckets;
    purge the objects unlinked while open. Returns (objects, fs)."""
    if store.unclean:
        remove_orphans(store)
    objects, fs = build(store)
    ensure_buckets(fs, config)
    fs.purge_unlinked()
    return objects, fs


def snapshot_targets(config):
    """The S3 stores of ``config`` (each distinct one once), opened without touching the
    network: where catalog snapshots are kept."""
    from .s3store import S3Store
    stores = {region: S3Store(config.store_of(region), os.fspath(config.store))
              for region in config.regions if config.store_of(region) is not None}
    return targets_of(stores)


def list_catalog_snapshots(config):
    """[(name, size, target)] of the snapshots in ``config``'s S3 stores, oldest first."""
    targets = snapshot_targets(config)
    if not targets:
        raise CosfsError("no region of this config keeps its chunks on an S3 store: there are "
                         "no catalog snapshots", errno=errno.ENOENT, code="NoSnapshots")
    return snapshots.list_snapshots(targets)


def restore_catalog(config, *, name=None, force=False):
    """Rebuild the store's catalog from a snapshot in its S3 stores (``cosfs restore``).

    ``name`` picks a snapshot (default: the newest). A catalog already there is
    refused, or with ``force`` renamed aside to ``catalog.db.before-restore-<time>``
    (with its WAL). The snapshot is authenticated with the key store of ``config``
    (KeyStoreError if its master key is missing) and checked as a database before
    it takes the catalog's name. Returns (snapshot name, aside path or None).
    The blobs of local regions are not in any snapshot: on a new machine the
    objects of those regions read as damaged (``cosfs fsck`` lists them).
    """
    found = list_catalog_snapshots(config)
    if not found:
        raise CosfsError("no catalog snapshot in %s" % ", ".join(
            t.root for t in snapshot_targets(config)), errno=errno.ENOENT, code="NoSnapshots")
    if name is None:
        name, _, target = found[-1]
    else:
        match = [t for n, _, t in found if n == name]
        if not match:
            raise CosfsError("no catalog snapshot named %s (cosfs restore --list shows them)"
                             % name, errno=errno.ENOENT, code="NoSnapshots")
        target = match[0]
    keys = KeyStore.open(config.keys, create=False, allow_gaps=True)
    store_dir = os.fspath(config.store)
    _make_store_dir(store_dir)
    lock_fd, unclean = _lock(store_dir, "being restored")
    try:
        return _restore_locked(store_dir, keys, name, target, force)
    except OSError as exc:
        raise CosfsError("cannot restore the catalog into %s: %s" % (store_dir, exc.strerror),
                         errno=exc.errno) from None
    finally:
        # the restored catalog is complete; a store left unclean before stays so (its
        # local blobs and read cache are checked at the next open)
        if not unclean:
            os.ftruncate(lock_fd, 0)
        os.close(lock_fd)


def _restore_locked(store_dir, keys, name, target, force):
    """restore_catalog's part under the store's lock."""
    try:
        catalog_path = os.path.join(store_dir, CATALOG_NAME)
        present = [ext for ext in ("", "-wal", "-shm") if os.path.lexists(catalog_path + ext)]
        aside = None
        if present and not force:
            raise CosfsError("store %s already has a catalog; restore replaces it only with "
                             "--force (it is kept as catalog.db.before-restore-<time>)"
                             % store_dir, errno=errno.EEXIST, code="CatalogExists")
        temp = catalog_path + ".restore"
        snapshots.fetch(keys, name, target, temp)
        if present:
            aside = catalog_path + ".before-restore-" + time.strftime("%Y%m%dT%H%M%S")
            for ext in present:
                os.rename(catalog_path + ext, aside + ext)
        os.rename(temp, catalog_path)
        durable.fsync_dir(store_dir)
        log.warning("restored the catalog of %s from snapshot %s in %s", store_dir, name,
                    target.root)
        return name, aside
    finally:
        _sweep_leftovers(store_dir)


def _sweep_leftovers(store_dir):
    """Remove what a killed snapshot or restore left in the store folder (plaintext copies
    of the catalog); the store's lock is held."""
    for name in os.listdir(store_dir):
        if name.startswith((".snapshot-", ".restore-")) or name == CATALOG_NAME + ".restore":
            try:
                os.unlink(os.path.join(store_dir, name))
            except OSError as exc:
                log.warning("could not remove %s from %s: %s", name, store_dir, exc.strerror)


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _meta_json(catalog, key):
    return json.loads(catalog.get_meta(key, "{}") or "{}")


def retired_versions(catalog) -> dict:
    """Master key versions retired from this store: ``{"v1": "<UTC time>", ...}``."""
    return _meta_json(catalog, "retired_keys")


def _check_keys(catalog, keys):
    """Refuse a key store that cannot read what this catalog holds; record new versions.

    ``key_checks`` in the catalog lists every version the store's data may need;
    each must be in the key store, with the recorded check value. A version
    missing below the current one must have been retired (``retired_keys``).
    A retired version whose file is still there (a retire was interrupted) is
    loaded but not recorded again: nothing needs it.
    """
    recorded = _meta_json(catalog, "key_checks")
    retired = retired_versions(catalog)
    current = keys.check_values()
    for version, check in recorded.items():
        if version not in current:
            raise KeyStoreError("key store %s lacks master key %s that this store's data needs"
                                % (keys.path, version))
        if current[version] != check:
            raise KeyStoreError("key store %s does not belong to this store (master key %s "
                                "differs)" % (keys.path, version))
    lost = [v for v in keys.missing_versions() if v not in retired]
    if lost:
        raise KeyStoreError("key store %s is missing master key %s (versions must run from v1 "
                            "without gaps, except retired ones)" % (keys.path, ", ".join(lost)))
    new = {v: c for v, c in current.items() if v not in recorded and v not in retired}
    if new:
        recorded.update(new)
        with catalog.transaction():
            catalog.set_meta("key_checks", json.dumps(recorded, sort_keys=True))


def key_usage(catalog) -> collections.Counter:
    """How many objects each master key version wraps the data key of:
    ``Counter({"v2": 12, "v3": 5})``; unreadable wrapped keys count under None.

    Counts every row of every catalog table with a ``wrapped_key`` column: today
    ``inodes`` only (also objects that lost their last name and are not purged
    yet); tables added later for object versions or uploads are counted too. The
    store is offline (locked), so nothing is in flight in memory.
    """
    db = catalog.db
    tables = []
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        quoted = '"%s"' % name.replace('"', '""')
        if any(col[1] == "wrapped_key" for col in db.execute("PRAGMA table_info(%s)" % quoted)):
            tables.append(quoted)
    usage = collections.Counter()
    for table in tables:
        for (wrapped,) in db.execute("SELECT wrapped_key FROM %s WHERE wrapped_key IS NOT NULL"
                                     % table):
            try:
                usage[KeyStore.wrapped_version(wrapped)] += 1
            except IntegrityError:
                usage[None] += 1
    return usage


def retire_key(store, version) -> bool:
    """Remove master key ``version`` from an offline store once nothing needs it.

    Refuses the current version, a version the key store never held, and a
    version that still wraps any object's data key (InvalidArgument,
    ``KeyInUse``). Order, so that a crash at any point leaves a store that
    opens:

    1. the catalog first, in one durable transaction: the version leaves
       ``key_checks`` (the list of versions the data needs) and joins
       ``retired_keys``; then the catalog is synced. From now on a missing
       file for it is expected;
    2. then the key file (``KeyStore.retire``): renamed aside, folder synced,
       overwritten with random bytes, synced, unlinked, folder synced.

    The other order would leave, after a crash between the steps, a catalog
    that requires a key file that is gone: a store that refuses to open. A
    crash between 1 and 2 leaves the file (or its renamed leftover) in place,
    loaded but no longer required; running the command again removes it.
    Returns True if a key file was removed, False if the version was already
    fully retired.
    """
    catalog, keys = store.catalog, store.keys
    number = parse_version(version)
    version = "v%d" % number
    if version == keys.current_version:
        raise InvalidArgument("%s is the current master key: rotate first (cosfs keys rotate), "
                              "re-wrap (cosfs keys rewrap), then retire %s" % (version, version))
    retired = retired_versions(catalog)
    present = version in keys.versions() or version in keys.retiring_leftovers()
    if not present and version not in retired:
        raise InvalidArgument("key store %s holds no master key %s" % (keys.path, version))
    users = key_usage(catalog).get(version, 0)
    if users:
        raise CosfsError("master key %s still wraps the data keys of %d object(s): re-wrap "
                         "them with the current key first (cosfs keys rewrap), then retire %s"
                         % (version, users, version), errno=errno.EBUSY, code="KeyInUse")
    checks = _meta_json(catalog, "key_checks")
    if version in checks or version not in retired:
        checks.pop(version, None)
        retired[version] = iso_time(time.time())
        with catalog.transaction(durable=True):
            catalog.set_meta("key_checks", json.dumps(checks, sort_keys=True))
            catalog.set_meta("retired_keys", json.dumps(retired, sort_keys=True))
        catalog.sync()
        log.info("master key %s recorded as retired in the catalog", version)
    return keys.retire(version)


def _check_chunk_size(catalog, config):
    recorded = catalog.get_meta("chunk_size")
    if recorded is None:
        with catalog.transaction():
            catalog.set_meta("chunk_size", config.chunk_size)
    elif int(recorded) != config.chunk_size:
        log.info("store was created with chunk_size %s; using it (config says %s)",
                 recorded, config.chunk_size)


def chunk_size_of(store):
    return int(store.catalog.get_meta("chunk_size", store.config.chunk_size))


def build(store):
    """Wire data path and filesystem over an opened Store. Returns (ObjectStore, FileSystem)."""
    from .filesystem import FileSystem
    from .objects import ObjectStore
    cfg = store.config
    objects = ObjectStore(store.catalog, store.stores, store.keys,
                          chunk_size=chunk_size_of(store), cache_size=cfg.cache_size,
                          write_buffer=cfg.write_buffer)
    fs = FileSystem(store.catalog, objects, appid=cfg.appid, region=cfg.region,
                    regions=cfg.regions, fsync_on_close=cfg.fsync_on_close)
    targets = store.s3_targets
    if targets:
        snap = cfg.snapshots
        objects.collector.snapshots = Snapshotter(
            store.catalog, store.keys, targets, objects.limiter, interval=snap.interval,
            on_fsync=snap.on_fsync, keep=snap.keep, flush=s3_stores(store.stores))
    return objects, fs





def ensure_buckets(fs, config):
    """Create the buckets the config declares (with their default encryption) if missing."""
    for b in config.buckets:
        if fs.catalog.bucket_by_name(b.name) is None:
            fs.create_bucket(b.name, region=b.region, encryption=b.encryption)


def setup_logging(log_file=None, level="warning", verbose=0):
    """Log to ``log_file`` (created 0600, reopened on SIGHUP), else to standard error:
    with a syslog priority and no timestamp when that is the systemd journal."""
    levels = ["warning", "info", "debug"]
    name = level
    if verbose:
        name = levels[min(len(levels) - 1, levels.index(level) + verbose
                          if level in levels else verbose)]
    if log_file:
        # object names are private: the log must not be readable by others, whatever the umask
        handler = ReopeningFileHandler(log_file)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter() if stderr_is_journal()
                             else logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, name.upper(), logging.WARNING))
    fuse_log = logging.getLogger("pyfuse3")
    fuse_log.setLevel(max(root.level, logging.INFO))
    if not any(isinstance(f, _DroppedReplyFilter) for f in fuse_log.filters):
        fuse_log.addFilter(_DroppedReplyFilter())


class _DroppedReplyFilter(logging.Filter):
    """Downgrade pyfuse3's ERROR for a reply to a request the kernel already dropped.

    The kernel sends RELEASE without waiting for it and drops every pending
    request when the file system is unmounted (or the caller was interrupted);
    our reply then fails with ENOENT. The handler itself ran to completion, so
    nothing is lost and the line is no error of ours.
    """

    def filter(self, record):
        if record.levelno >= logging.ERROR and \
                "fuse_reply_* failed with No such file or directory" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class DaemonStatus:
    """What a running daemon reports in the ``user.cos.status`` xattr of the mount root.

    Read on the trio thread (the xattr request), so the catalog may be used.
    Holds no secret: paths, versions, names of buckets, counters, the last
    error line (which may name an object: the adapter lets only root and the
    mount's owner read it).
    """

    #: the rendered value is reused this long, so that a size query and the read
    #: that follows it (getfattr) see the same text
    MEMO_SECONDS = 0.1
    MAX_BUCKETS = 200

    def __init__(self, config, store, objects, fs, mountpoint):
        self.config = config
        self.store = store
        self.objects = objects
        self.fs = fs
        self.mountpoint = mountpoint
        self.errors = LastError()
        self.started = time.time()
        self._started_mono = time.monotonic()
        self._memo = (None, b"")

    def snapshot(self) -> dict:
        objects, catalog, keys = self.objects, self.store.catalog, self.store.keys
        states = list(objects.states.values())
        buffered = objects.budget.total
        sealed = sum(ch.length for st in states for ch in st.pending.values() if ch is not None)
        changed = sum(1 for st in states if st.modified or st.dirty or st.pending)
        rows = catalog.buckets()
        buckets = []
        for ino, name, region in rows[:self.MAX_BUCKETS]:
            try:
                spec = objects.bucket_default(ino)
                enc = spec.algorithm if spec is not None else None
            except CosfsError:
                enc = "invalid configuration"
            buckets.append({"name": name, "region": region, "encryption": enc})
        cache = objects.reader.cache
        return {
            "version": __version__,
            "pid": os.getpid(),
            "mountpoint": os.fspath(self.mountpoint),
            "store": os.fspath(self.config.store),
            "key_store": {"path": keys.path, "current": keys.current_version,
                          "versions": keys.versions(),
                          "retired": sorted(retired_versions(catalog),
                                            key=lambda v: int(v[1:]))},
            "log": log_destination(),
            "started": iso_time(self.started),
            "uptime_seconds": int(time.monotonic() - self._started_mono),
            "options": {"allow_other": self.config.allow_other,
                        # in effect: the kernel checks permissions itself
                        "default_permissions": "default_permissions" in
                        permission_options(self.config, os.getuid()),
                        "writeback_cache": self.config.writeback_cache,
                        "fsync_on_close": self.config.fsync_on_close,
                        "request_poll_us": self.config.request_poll_us,
                        "fuse_loop": self.config.fuse_loop},
            "buckets": buckets,
            "buckets_total": len(rows),
            "replication": (self.fs.replication.status()
                            if getattr(self.fs, "replication", None) else None),
            "catalog_snapshots": (objects.collector.snapshots.status()
                                  if objects.collector.snapshots is not None else None),
            "open_files": len(self.fs.handles),
            "dirty_bytes": buffered + sealed,
            "uncommitted": {"objects": changed, "buffered_bytes": buffered,
                            "sealed_bytes": sealed, "write_buffer": objects.write_buffer},
            "cache": {"used_bytes": cache.used, "size_bytes": cache.capacity,
                      "segments": len(cache.entries)},
            "errors": {"count": self.errors.count, "last": self.errors.last},
        }

    def xattr(self) -> bytes:
        now = time.monotonic()
        at, value = self._memo
        if at is None or now - at > self.MEMO_SECONDS:
            value = json.dumps(self.snapshot(), sort_keys=True).encode()
            self._memo = (now, value)
        return value


def _daemon_operations(fs, **kw):
    """The FUSE adapter of the daemon: the status xattr is for root and the mount's owner only
    (with ``allow_other`` everyone else reaches the mount root too)."""
    import pyfuse3
    from .fuse.ops import Operations
    owner = os.getuid()

    class DaemonOperations(Operations):
        async def _getxattr(self, inode, name, ctx=None):
            # (names outside the user namespace never get here)
            if inode == ROOT_INODE and name == STATUS_XATTR and ctx is not None and \
                    ctx.uid not in (0, owner):
                raise pyfuse3.FUSEError(errno.EACCES)
            return await super()._getxattr(inode, name, ctx)

    return DaemonOperations(fs, **kw)


def build_api(config, store, objects, fs, notifier=None):
    """The XML API application over the same file system and data path as the mount.

    ``notifier`` (a :class:`KernelNotifier`, only while a FUSE mount runs) tells the
    kernel about names the API replaced, created or removed; every answer waits for
    the notices of the changes before it, so a client that got its answer sees the
    change on the mount at once. Objects and directories the API creates belong to
    the daemon's user.
    """
    from .api.app import ApiApp
    from .keyspace import KeySpace
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    return ApiApp(keyspace, authenticate=_api_authenticator(config), allows=_api_allows,
                  appid=config.appid, region=config.region, endpoints=config.api.endpoints,
                  max_xml_bytes=config.api.max_xml_bytes, idle_timeout=config.api.idle_timeout,
                  max_header_bytes=config.api.max_header_bytes,
                  before_answer=notifier.settle if notifier else None)


def build_control_app(config, store, objects, fs, notifier=None):
    """The XML API application of the control socket (:mod:`cosfs.control`): the same
    application as :func:`build_api`, every request with full access."""
    from .api.app import ApiApp
    from .controlsocket import control_authenticator
    from .keyspace import KeySpace
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    return ApiApp(keyspace, authenticate=control_authenticator(), appid=config.appid,
                  region=config.region, endpoints=config.api.endpoints,
                  max_xml_bytes=config.api.max_xml_bytes, idle_timeout=config.api.idle_timeout,
                  max_header_bytes=config.api.max_header_bytes,
                  before_answer=notifier.settle if notifier else None)


def build_console(config, store, objects, fs, notifier=None):
    """The web console (:mod:`cosfs.console`) over the same core as the API, logins from
    the API's credentials file; also registers the daemon's state for ``/metrics``.
    ``notifier`` as for :func:`build_api`."""
    from . import metrics
    from .console.app import ConsoleApp
    from .console.sessions import Sessions
    from .credentials import CredentialsFile
    from .keyspace import KeySpace
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    metrics.set_state(lambda: _metrics_state(store, objects, fs, keyspace))
    return ConsoleApp(keyspace, credentials=CredentialsFile(config.console.credentials),
                      sessions=Sessions(config.console.session_timeout),
                      regions=config.regions,
                      before_answer=notifier.settle if notifier else None)


def _metrics_state(store, objects, fs, keyspace) -> dict:
    """What ``/metrics`` reads when scraped (see :class:`cosfs.metrics._StateCollector`)."""
    replication = getattr(fs, "replication", None)
    cache = objects.reader.cache
    return {"replication": replication.status() if replication else None,
            "garbage_blobs": len(store.catalog.garbage(limit=100000)),
            "cache": {"used_bytes": cache.used, "size_bytes": cache.capacity},
            "write_buffer": {"used_bytes": objects.budget.total,
                             "size_bytes": objects.write_buffer},
            # scanned by the /metrics handler just before, in a worker thread
            "usage": keyspace.last_usage}


async def _start_console(nursery, app, console, stop):
    """Serve the console in ``nursery`` until ``stop``; returns an Event set once stopped."""
    from .console import server
    return await _start_server(nursery, server.serve, app, console, stop, "the web console")


async def _start_control(nursery, app, config, stop):
    """Serve ``app`` on the store's control socket; returns an Event set once stopped."""
    from .api import server
    from .controlsocket import prepare_socket
    done = trio.Event()
    try:
        path = prepare_socket(config.store)
    except (OSError, CosfsError) as exc:
        # the mount works without it; only `cosfs versions` needs it while mounted
        log.warning("no control socket: %s", exc)
        done.set()
        return done

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            await server.serve(app, config.api, shutdown_trigger=stop.wait,
                               task_status=task_status, bind="unix:" + path)
        finally:
            done.set()
            with contextlib.suppress(OSError):
                os.unlink(path)

    try:
        await nursery.start(run)
    except CosfsError as exc:
        log.warning("no control socket: %s", exc)
        done.set()
        return done
    os.chmod(path, 0o600)
    log.info("control socket at %s", path)
    return done


def build_origin(config, store, objects, fs, notifier=None):
    """Origin pull (:mod:`cosfs.services.origin`) wired into the filesystem layer as
    ``fs.on_miss``: lookups on the mount and GET/HEAD through the API reach it alike.
    Pulled objects belong to the daemon's user; ``notifier`` as for :func:`build_api`."""
    from .keyspace import KeySpace
    from .services.origin import OriginPull
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    service = OriginPull(keyspace, config.origin)
    fs.on_miss = service.pull
    return service


def build_inventory(store, objects, fs, notifier=None, **options):
    """The inventory service (:mod:`cosfs.services.inventory`) over its own key space,
    wired into the filesystem layer as ``fs.inventory`` (POST runs from the xattr, the
    API and the command line; configuration changes wake its schedule). Report objects
    belong to the daemon's user; ``notifier`` as for :func:`build_api`; ``options`` go to
    :class:`~cosfs.services.inventory.InventoryService` (clock, rows_per_file)."""
    from .keyspace import KeySpace
    from .services.inventory import InventoryService
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    service = InventoryService(keyspace, **options)
    fs.inventory = service
    return service


def build_replication(store, objects, fs, notifier=None):
    """The replication worker (:mod:`cosfs.services.replication`) over its own key space,
    known to the filesystem layer as ``fs.replication`` (its status xattrs). Replicas
    belong to the daemon's user; ``notifier`` as for :func:`build_api`."""
    from .keyspace import KeySpace
    from .services.replication import Replicator
    keyspace = KeySpace(fs, objects, store.catalog, uid=os.getuid(), gid=os.getgid(),
                        invalidate_entry=notifier.invalidate if notifier else None)
    service = Replicator(keyspace)
    fs.replication = service
    return service


def run_inventory_now(store, bucket, inventory_id, doc):
    """``cosfs inventory --method post`` on an unmounted store: clean up deliveries a
    crash interrupted, deliver the one-off report, commit everything. Returns the job
    id. Raises CosfsError like POST Bucket inventory."""
    objects, fs = build(store)
    service = build_inventory(store, objects, fs,
                              rows_per_file=store.config.inventory.rows_per_file)

    async def main():
        async with trio.open_nursery() as nursery:
            objects.attach(nursery)
            await service.recover()
            job = await fs.post_bucket_inventory(fs.bucket_inode(bucket), inventory_id, doc)
            await objects.commit_all(durable=True)
            await objects.collect_garbage()
            nursery.cancel_scope.cancel()
        return job

    return trio.run(main)


def _api_authenticator(config):
    """``authenticate(request)`` for the API: the signature checks of :mod:`cosfs.api.auth`
    against the credentials file named in the configuration (re-read when it changes).
    The result's ``body_decoder()`` removes aws-chunked framing and checks signed payload
    hashes and checksums; the application runs its ``finish()`` at the end of the body,
    before the core publishes anything."""
    from .api import auth
    from .credentials import CredentialsFile
    credentials = CredentialsFile(config.api.credentials)

    def authenticate(request):
        return auth.authenticate(credentials, request.method, request.raw_path,
                                 request.query, request.headers)

    return authenticate


def _api_allows(credential, bucket, write):
    """Access rule of the API: :func:`cosfs.api.auth.authorize` as a yes/no."""
    from .api import auth
    try:
        auth.authorize(credential, bucket, write)
    except AccessDenied:
        return False
    return True


class KernelNotifier:
    """Tells the kernel about entries that changed outside a FUSE request (API writes).

    With negative entries cached, a name the API creates would stay invisible on the
    mount until the entry times out, and a name it replaces or removes would keep
    pointing at the old object: every such change is invalidated. ``invalidate`` is
    called by the key space on the trio thread, inside its catalog transactions, so it
    only queues: the kernel call (which may wait for a FUSE request on the same
    directory, answered by this very trio thread) runs in a worker thread.
    ``settle()`` waits until every invalidation queued before it is done; the API
    awaits it before each answer. Before :meth:`attach` invalidations go to the FUSE
    session's own notification thread; before the mount (``kernel`` None) and after
    :meth:`unmounted` there is no kernel cache and they are dropped.
    """

    def __init__(self):
        #: the FUSE session's kernel calls (cosfs.fuse.session.Session or
        #: cosfs.fuse.loop.Pyfuse3Session), once mounted
        self.kernel = None
        self._nursery = None
        self._gone = False
        self._pending = set()
        self._limiter = trio.CapacityLimiter(4)

    def attach(self, nursery):
        self._nursery = nursery

    def unmounted(self):
        self._gone = True

    def invalidate(self, parent, name):
        if self._gone or self.kernel is None:
            return
        if self._nursery is None:
            self.kernel.invalidate_entry_async(parent, name, ignore_enoent=True)
            return
        done = trio.Event()
        self._pending.add(done)
        self._nursery.start_soon(self._invalidate, parent, name, done)

    async def _invalidate(self, parent, name, done):
        invalidate_entry = self.kernel.invalidate_entry

        def kernel():
            try:
                invalidate_entry(parent, name)
            except OSError as exc:
                # ENOENT: the kernel holds no entry for the name, nothing to drop
                if exc.errno != errno.ENOENT:
                    log.info("could not invalidate entry %r of inode %d: %s", name, parent,
                             exc.strerror)
        try:
            # abandoned on cancel: at a stop, a kernel call can wait for a directory lock
            # held by a FUSE request that nobody answers any more
            await trio.to_thread.run_sync(kernel, limiter=self._limiter,
                                          abandon_on_cancel=True)
        finally:
            self._pending.discard(done)
            done.set()

    async def settle(self):
        for done in list(self._pending):
            await done.wait()


def _unwrap_group(exc):
    """The single CosfsError inside an exception group from a nursery, else None."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = []

        def walk(e):
            if isinstance(e, BaseExceptionGroup):
                for inner in e.exceptions:
                    walk(inner)
            else:
                leaves.append(e)
        walk(exc)
        if len(leaves) == 1 and isinstance(leaves[0], CosfsError):
            return leaves[0]
    return None


def permission_options(config, uid) -> set:
    """The mount options that decide who checks permissions, for a daemon of ``uid``.

    The kernel checks mode bits and owners itself (``default_permissions``) whenever
    someone other than root can reach the mount: with ``allow_other``, or when the
    mounting user is not root (the owner of a file is then subject to its bits too),
    and whenever the configuration asks for it (``default_permissions: true``).

    A mount by root without ``allow_other`` admits only processes whose user ids are
    all 0 and whose group ids are all the daemon's (the kernel's rule for FUSE mounts).
    Those pass every mode-bit check the kernel would make, except execute bits, which
    the kernel still checks for regular files and the daemon answers for ``access(2)``
    (:meth:`cosfs.filesystem.FileSystem.access`); a request with another file-system
    uid (the kernel's NFS or SMB server acting for a user) is refused
    (:meth:`cosfs.fuse.ops.Operations._who`). Without the option the kernel does not
    fetch a directory's attributes again after each name created or removed in it
    before the next check: one request less per file for ``tar x``, ``rm -rf`` and
    the like. Only uid-0 processes that root confined (capabilities dropped, or a
    user namespace of their own) see a difference: they act as full root there (as
    with gocryptfs and other single-user file systems).
    """
    if config.allow_other:
        return {"allow_other", "default_permissions"}
    return set() if uid == 0 and not config.default_permissions else {"default_permissions"}


def run_mount(config, *, ready=None, kernel_options=(), fsname="cosfs", break_lease=False):
    """Mount ``config`` and serve until unmounted or signalled. Blocks.

    ``ready`` is called once the mount is live, and the API listens when it is
    enabled (the daemon uses it to release its parent; in the foreground it
    tells systemd). ``kernel_options`` are
    extra mount flags (``ro``, ``noexec``); ``fsname`` is the source the mount
    table shows. Raises CosfsError for any setup problem (nothing mounted).
    """
    mountpoint = os.fspath(config.mountpoint)
    if not os.path.isdir(mountpoint):
        raise CosfsError("mount point %s is not a directory" % mountpoint, errno=errno.ENOTDIR,
                         code="InvalidMountPoint")
    # Worker threads (sealing, store I/O) and the trio thread share the GIL. With the
    # default 5 ms switch interval the trio thread, woken by the kernel, waits up to
    # 5 ms for a worker to yield: one FUSE request per switch interval (measured:
    # ~100 MB/s sequential writes). A short interval keeps request latency low.
    sys.setswitchinterval(0.0002)
    store = open_store(config, create=True, purpose="mounted at %s" % mountpoint,
                       break_lease=break_lease)
    try:
        objects, fs = start_core(store, config)
        # API writes and the daemon's services (inventory reports) change names the
        # kernel may cache
        notifier = KernelNotifier()
        app = build_api(config, store, objects, fs, notifier) if config.api.enabled else None
        build_origin(config, store, objects, fs, notifier)
        inventory = build_inventory(store, objects, fs, notifier,
                                    rows_per_file=config.inventory.rows_per_file)
        replication = build_replication(store, objects, fs, notifier)
        services = [inventory, replication]
        control = (build_control_app(config, store, objects, fs, notifier), config)
        console = ((build_console(config, store, objects, fs, notifier), config.console)
                   if config.console.enabled else None)
        status = DaemonStatus(config, store, objects, fs, mountpoint)
        fs.daemon_info = {"pid": os.getpid(), "store": os.fspath(config.store),
                          "status": status.xattr}
        permissions = permission_options(config, os.getuid())
        ops = _daemon_operations(fs, blksize=min(objects.chunk_size, 1 << 20),
                                 writeback_cache=config.writeback_cache,
                                 root_only="default_permissions" not in permissions)
        # (pyfuse3's default options hold only default_permissions, decided below)
        # reads never update access times (see README, Times): say so in the mount table
        options = {"fsname=" + fsname, "subtype=cosfs", "noatime"}
        options |= permissions
        options |= set(kernel_options)
        session = _fuse_session(config, ops, mountpoint, options)
        try:
            session.mount()
        except RuntimeError as exc:
            raise CosfsError("cannot mount at %s: %s" % (mountpoint, exc)) from None
        ops.kernel = notifier.kernel = session
        log.warning("cosfs mounted %s at %s (pid %d)", config.store, mountpoint, os.getpid())
        root = logging.getLogger()
        root.addHandler(status.errors)
        unmounted = False
        try:
            try:
                trio.run(_serve, objects, mountpoint, app, config.api, ready, notifier,
                         services, control, console, fs, ops.pages, session)
            except BaseExceptionGroup as exc:
                inner = _unwrap_group(exc)
                if inner is None:
                    raise
                raise inner from None
            unmounted = True
        finally:
            if ops.pages.busy:
                _abort_page_stores(ops.pages, mountpoint)
            session.close(unmount=True)
            log.warning("cosfs unmounted %s%s", mountpoint, "" if unmounted else " after an error")
            root.removeHandler(status.errors)
    finally:
        store.close()


def _fuse_session(config, ops, mountpoint, options):
    """The FUSE session the configuration asks for (``fuse_loop``), not mounted yet."""
    poll_limit = config.request_poll_us * 1e-6
    if config.fuse_loop == "native" and os.geteuid() != 0:
        log.info("fuse_loop native mounts as root only: pyfuse3's request loop serves "
                 "this mount of uid %d", os.geteuid())
    elif config.fuse_loop == "native":
        from .fuse.protocol import Entry
        from .fuse.session import Session
        ops.entry_class = Entry  # the session encodes entries itself: a plain object will do
        return Session(ops, mountpoint, options, poll_limit=poll_limit)
    from .fuse.loop import Pyfuse3Session
    return Pyfuse3Session(ops, mountpoint, options, poll_limit=poll_limit)


def _abort_page_stores(pages, mountpoint, timeout=5.0):
    """Before the FUSE session is closed after an error with page stores left (each may
    wait for a page that a READ nobody answers holds locked, keeping the device open and
    the connection alive): abort the mount's FUSE connection (``/sys/fs/fuse/connections``),
    which fails those READs, and give the stores ``timeout`` seconds to end."""
    try:
        where = os.path.abspath(mountpoint)  # no realpath: it would ask this mount
        with open("/proc/self/mountinfo") as f:
            # the last mount there is ours; the table escapes spaces and the like as \ooo
            minor = [line.split()[2].split(":")[1] for line in f
                     if line.split()[4].encode().decode("unicode_escape") == where][-1]
        with open("/sys/fs/fuse/connections/%s/abort" % minor, "w") as f:
            f.write("1")
        log.warning("aborted the FUSE connection of %s: page stores were still waiting",
                    mountpoint)
    except (OSError, IndexError) as exc:
        log.warning("page stores still waiting, and the FUSE connection of %s could not "
                    "be aborted: %s", mountpoint, exc)
    deadline = time.monotonic() + timeout
    while pages.busy and time.monotonic() < deadline:
        time.sleep(0.01)


READ_AHEAD_KB = 1024


def _raise_read_ahead(mountpoint):
    """Let the kernel read ahead 1 MiB (its default for FUSE is 128 KiB): 8x fewer requests
    for sequential reads. Best effort; runs in a worker thread because the stat()
    is answered by this very daemon."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = "/sys/class/bdi/%d:%d/read_ahead_kb" % (os.major(dev), os.minor(dev))
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.info("could not raise the kernel read-ahead: %s", exc)


async def _start_api(nursery, app, api, stop):
    """Start the API server in ``nursery``; returns an Event set once it has stopped."""
    from .api import server
    return await _start_server(nursery, server.serve, app, api, stop, "the COS XML API")


async def _start_server(nursery, serve, app, settings, stop, what):
    """Run ``serve(app, settings, ...)`` in ``nursery`` until ``stop``, log where ``what``
    is served; returns an Event set once the server stopped."""
    done = trio.Event()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        try:
            await serve(app, settings, shutdown_trigger=stop.wait, task_status=task_status)
        finally:
            done.set()

    urls = await nursery.start(run)
    log.warning("cosfs serves %s at %s (pid %d)", what, ", ".join(urls), os.getpid())
    return done


async def _serve(objects, mountpoint, app=None, api=None, ready=None, notifier=None,
                 services=(), control=None, console=None, fs=None, pages=None,
                 session=None):
    """Serve the mount (and the API) until unmounted. ``services``: the daemon's services
    (``run(task_status)``, ``stop()``), started before the mount is reported ready and
    stopped when it is unmounted, before the final commit. ``control``: (application,
    config) of the control socket (:mod:`cosfs.control`). ``fs``: the mount's
    :class:`~cosfs.filesystem.FileSystem`, whose forgotten nameless objects are purged in
    batches while it runs. ``pages``: the FUSE adapter's
    :class:`~cosfs.fuse.pagefill.PageFiller`, storing pages while the mount runs.
    ``session``: the mounted FUSE session (:class:`~cosfs.fuse.session.Session` or
    :class:`~cosfs.fuse.loop.Pyfuse3Session`), whose requests are answered here."""

    stopping = []

    def notify_stopping(why):
        if not stopping:
            stopping.append(why)
            sd_notify("STOPPING=1\nSTATUS=%s" % why)

    def on_stop(signum):
        log.warning("received signal %d: committing and unmounting", signum)
        notify_stopping("committing buffered writes and unmounting")
        if pages is None:
            session.terminate()
        else:
            nursery.start_soon(stop_pages_then_terminate)

    async def stop_pages_then_terminate():
        # while requests are still answered: a page store may wait for a page that a READ
        # holds locked, and after terminate() nobody would answer that READ
        await pages.stop()
        session.terminate()

    async with trio.open_nursery() as nursery:
        objects.attach(nursery)
        if fs is not None:
            fs.attach(nursery)
        if notifier is not None:
            notifier.attach(nursery)
        if pages is not None:
            pages.start()
        await nursery.start(_on_signals, on_stop)
        api_stop = trio.Event()
        api_done = await _start_api(nursery, app, api, api_stop) if app is not None else None
        control_done = (await _start_control(nursery, control[0], control[1], api_stop)
                        if control is not None else None)
        console_done = (await _start_console(nursery, console[0], console[1], api_stop)
                        if console is not None else None)
        for service in services:
            await nursery.start(service.run)
        if ready is not None:
            ready()
        nursery.start_soon(trio.to_thread.run_sync, _raise_read_ahead, mountpoint)
        await session.main()
        if pages is not None:
            await pages.stop()  # the kernel is gone: nothing left to store
        for service in services:
            service.stop()  # nothing new is written while everything is committed
        if notifier is not None:
            notifier.unmounted()  # the kernel is gone: nothing left to invalidate
        notify_stopping("unmounted; committing buffered writes")
        # the requests in progress finish (and commit) before the final commit
        api_stop.set()
        for done in (api_done, control_done, console_done):
            if done is not None:
                await done.wait()
        if fs is not None:
            try:
                fs.purge_queued()  # before the final durable point (and catalog snapshot)
            except Exception as exc:
                log.warning("purge of forgotten nameless objects: %s; their data is deleted "
                            "at the next mount", exc)
        await objects.commit_all(durable=True)
        await objects.collect_garbage()
        nursery.cancel_scope.cancel()


def run_serve(config, *, ready=None, break_lease=False):
    """Serve the XML API of ``config``'s store without mounting it. Blocks until
    SIGINT/SIGTERM, then finishes the requests in progress and commits everything.
    Raises CosfsError for any setup problem (nothing served)."""
    sys.setswitchinterval(0.0002)
    store = open_store(config, create=True, purpose="served by the API (pid %d)" % os.getpid(),
                       break_lease=break_lease)
    try:
        objects, fs = start_core(store, config)
        app = build_api(config, store, objects, fs)
        build_origin(config, store, objects, fs)
        inventory = build_inventory(store, objects, fs,
                                    rows_per_file=config.inventory.rows_per_file)
        replication = build_replication(store, objects, fs)
        root = logging.getLogger()
        errors = LastError()
        root.addHandler(errors)
        try:
            console = ((build_console(config, store, objects, fs), config.console)
                       if config.console.enabled else None)
            services = [inventory, replication]
            trio.run(_serve_api, objects, app, config.api, ready, services,
                     (build_control_app(config, store, objects, fs), config), console)
        except BaseExceptionGroup as exc:
            inner = _unwrap_group(exc)
            if inner is None:
                raise
            raise inner from None
        finally:
            root.removeHandler(errors)
        log.warning("cosfs stopped serving %s", config.store)
    finally:
        store.close()


async def _on_signals(on_stop, task_status=trio.TASK_STATUS_IGNORED):
    """Until SIGINT or SIGTERM (then ``on_stop(signum)``): SIGHUP reopens the log files
    (logrotate moved them: continue in new ones of the same names)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
        task_status.started()
        async for signum in sigs:
            if signum == signal.SIGHUP:
                reopened = reopen_log_files()
                log.info("received SIGHUP: reopened %s",
                         ", ".join(reopened) if reopened else "nothing (no log file)")
                continue
            on_stop(signum)
            return


async def _serve_api(objects, app, api, ready, services=(), control=None, console=None):
    stop = trio.Event()

    def on_stop(signum):
        log.warning("received signal %d: finishing requests and committing", signum)
        sd_notify("STOPPING=1\nSTATUS=finishing requests and committing")
        stop.set()

    async with trio.open_nursery() as nursery:
        objects.attach(nursery)
        await nursery.start(_on_signals, on_stop)
        done = await _start_api(nursery, app, api, stop)
        control_done = (await _start_control(nursery, control[0], control[1], stop)
                        if control is not None else None)
        console_done = (await _start_console(nursery, console[0], console[1], stop)
                        if console is not None else None)
        for service in services:
            await nursery.start(service.run)
        if ready is not None:
            ready()
        await done.wait()
        for other in (control_done, console_done):
            if other is not None:
                await other.wait()
        for service in services:
            service.stop()
        await objects.commit_all(durable=True)
        await objects.collect_garbage()
        nursery.cancel_scope.cancel()
