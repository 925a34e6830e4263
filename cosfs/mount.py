"""The composition root: the one place where a store is opened and a mount is wired.

``open_store`` builds catalog, chunk stores and key store from a Config and
checks that they belong together; ``run_mount`` mounts and serves until
unmount or SIGINT/SIGTERM, committing every buffered change before it
returns. Everything else receives its collaborators from here.
"""

import errno
import fcntl
import functools
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass

import trio

from . import durable
from .catalog import Catalog
from .errors import CosfsError, KeyStoreError
from .keys import KeyStore
from .store import LocalStore

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

    def close(self):
        try:
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


def region_dir(config, region):
    return os.path.join(config.store, "blobs", region)


def open_store(config, *, create, purpose="opened"):
    """Open (or with ``create`` make) the store that ``config`` describes.

    Raises CosfsError (store busy, no catalog) or KeyStoreError (missing,
    too open, corrupt, or not the key store this catalog was written with).
    """
    store_dir = os.fspath(config.store)
    if create:
        try:
            durable.makedirs(store_dir, 0o700)
            # makedirs gives intermediate directories the umask's mode: make blobs/ here
            durable.makedirs(os.path.join(store_dir, "blobs"), 0o700)
        except OSError as exc:
            raise CosfsError("cannot create store directory %s: %s" % (store_dir, exc.strerror),
                             errno=exc.errno) from None
    elif not os.path.isdir(store_dir):
        raise CosfsError("no store at %s" % store_dir, errno=errno.ENOENT, code="NoSuchStore")
    lock_fd, unclean = _lock(store_dir, purpose)
    try:
        catalog_path = os.path.join(store_dir, CATALOG_NAME)
        new_catalog = not os.path.exists(catalog_path)
        keys = KeyStore.open(config.keys, create=create and new_catalog)
        catalog = Catalog(catalog_path, create=create)
        try:
            _check_keys(catalog, keys)
            _check_chunk_size(catalog, config)
        except BaseException:
            catalog.db.close()
            raise
        stores = {}
        for region in config.regions:
            s = LocalStore(region_dir(config, region))
            s.headroom = functools.partial(_file_size, catalog_path + "-wal")
            if create or os.path.isdir(s.root):
                s.create()
            stores[region] = s
        if unclean:
            _recover_durability(catalog, stores)
        return Store(config, catalog, stores, keys, lock_fd, unclean)
    except BaseException:
        os.close(lock_fd)
        raise


def _recover_durability(catalog, stores):
    """After a crash: make every blob durable, then the catalog that references them.

    The crashed process may have committed catalog versions whose blobs are still
    only in the page cache (its own list of unsynced blobs died with it). Any
    later catalog sync would make those commits durable, so the blobs must be
    synced first. Costs one fdatasync per blob, only after an unclean shutdown.
    """
    started = time.monotonic()
    count = 0
    for s in stores.values():
        count += s.sync_everything()
    catalog.sync()
    log.info("the store was not closed cleanly: made %d blob(s) and the catalog durable in "
             "%.1f s", count, time.monotonic() - started)


def _file_size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _check_keys(catalog, keys):
    """Refuse a key store that cannot read what this catalog holds; record new versions."""
    recorded = json.loads(catalog.get_meta("key_checks", "{}") or "{}")
    current = keys.check_values()
    for version, check in recorded.items():
        if version not in current:
            raise KeyStoreError("key store %s lacks master key %s that this store's data needs"
                                % (keys.path, version))
        if current[version] != check:
            raise KeyStoreError("key store %s does not belong to this store (master key %s "
                                "differs)" % (keys.path, version))
    if current.keys() - recorded.keys():
        with catalog.transaction():
            catalog.set_meta("key_checks", json.dumps(current, sort_keys=True))


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
    return objects, fs


def ensure_buckets(fs, config):
    """Create the buckets the config declares (with their default encryption) if missing."""
    for b in config.buckets:
        if fs.catalog.bucket_by_name(b.name) is None:
            fs.create_bucket(b.name, region=b.region, encryption=b.encryption)


def setup_logging(log_file=None, level="warning", verbose=0):
    levels = ["warning", "info", "debug"]
    name = level
    if verbose:
        name = levels[min(len(levels) - 1, levels.index(level) + verbose
                          if level in levels else verbose)]
    if log_file:
        # object names are private: the log must not be readable by others, whatever the umask
        os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
    handler = (logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
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


def run_mount(config, *, ready=None):
    """Mount ``config`` and serve until unmounted or signalled. Blocks.

    ``ready`` is called once the mount is live (the daemon uses it to release
    its parent). Raises CosfsError for any setup problem (nothing mounted).
    """
    import pyfuse3
    from .fuse_ops import Operations

    mountpoint = os.fspath(config.mountpoint)
    if not os.path.isdir(mountpoint):
        raise CosfsError("mount point %s is not a directory" % mountpoint, errno=errno.ENOTDIR,
                         code="InvalidMountPoint")
    # Worker threads (sealing, store I/O) and the trio thread share the GIL. With the
    # default 5 ms switch interval the trio thread, woken by the kernel, waits up to
    # 5 ms for a worker to yield: one FUSE request per switch interval (measured:
    # ~100 MB/s sequential writes). A short interval keeps request latency low.
    sys.setswitchinterval(0.0002)
    store = open_store(config, create=True, purpose="mounted at %s" % mountpoint)
    try:
        objects, fs = build(store)
        ensure_buckets(fs, config)
        fs.purge_unlinked()
        fs.daemon_info = {"pid": os.getpid(), "store": os.fspath(config.store)}
        ops = Operations(fs, blksize=min(objects.chunk_size, 1 << 20),
                         writeback_cache=config.writeback_cache)
        options = set(pyfuse3.default_options)
        options |= {"fsname=cosfs", "subtype=cosfs"}
        if config.allow_other:
            options |= {"allow_other", "default_permissions"}
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as exc:
            raise CosfsError("cannot mount at %s: %s" % (mountpoint, exc)) from None
        log.warning("cosfs mounted %s at %s (pid %d)", config.store, mountpoint, os.getpid())
        unmounted = False
        try:
            if ready is not None:
                ready()
            trio.run(_serve, objects, mountpoint)
            unmounted = True
        finally:
            pyfuse3.close(unmount=True)
            log.warning("cosfs unmounted %s%s", mountpoint, "" if unmounted else " after an error")
    finally:
        store.close()


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


async def _serve(objects, mountpoint):
    import pyfuse3

    async def on_signals(task_status=trio.TASK_STATUS_IGNORED):
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
            task_status.started()
            async for signum in sigs:
                log.warning("received signal %d: committing and unmounting", signum)
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        objects.attach(nursery)
        await nursery.start(on_signals)
        nursery.start_soon(trio.to_thread.run_sync, _raise_read_ahead, mountpoint)
        await pyfuse3.main()
        await objects.commit_all(durable=True)
        await objects.collect_garbage()
        nursery.cancel_scope.cancel()
