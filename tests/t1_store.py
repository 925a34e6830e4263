"""LocalStore: immutable blobs in a local directory."""

import errno
import os
import stat
import threading
import time

import pytest

from cosfs.errors import StoreError
from cosfs import durable
from cosfs.store import EARLY_WRITEBACK, LocalStore, blob_name

from helpers import tmp_path  # noqa: F401 (tmpfs)


@pytest.fixture
def store(tmp_path):
    s = LocalStore(tmp_path / "blobs")
    s.create()
    return s


def bid(n):
    return n.to_bytes(16, "big")


def test_create_is_idempotent_and_private(store):
    store.create()
    mode = stat.S_IMODE(os.stat(store.root).st_mode)
    assert mode & 0o077 == 0
    assert len([d for d in os.listdir(store.root) if len(d) == 2]) == 256


def test_put_get_roundtrip(store):
    for n, data in enumerate([b"", b"x", os.urandom(70000), bytearray(b"abc"), memoryview(b"mv")]):
        store.put(bid(n), data)
        assert store.get(bid(n)) == bytes(data)
        assert store.size(bid(n)) == len(data)


def test_blob_path_layout(store):
    b = bytes.fromhex("ab" + "00" * 15)
    store.put(b, b"data")
    assert os.path.isfile(os.path.join(store.root, "ab", blob_name(b)))
    assert stat.S_IMODE(os.stat(os.path.join(store.root, "ab", b.hex())).st_mode) == 0o600


def test_get_range(store):
    data = bytes(range(256)) * 10
    store.put(bid(1), data)
    assert store.get_range(bid(1), 0, 10) == data[:10]
    assert store.get_range(bid(1), 100, 200) == data[100:300]
    assert store.get_range(bid(1), 2550, 100) == data[2550:]  # short: caller checks
    assert store.get_range(bid(1), 5000, 10) == b""


def test_get_range_nowait(store, monkeypatch):
    """In the page cache: the bytes (short at the blob's end, as without nowait). A file
    system that cannot tell: plain reads from then on."""
    data = os.urandom(200000)
    store.put(bid(1), data)
    assert store.get_range(bid(1), 1000, 50, nowait=True) == data[1000:1050]
    assert store.get_range(bid(1), len(data) - 10, 100, nowait=True) == data[-10:]
    assert store.get_range(bid(1), len(data) + 5, 100, nowait=True) == b""

    def unsupported(*args):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
    monkeypatch.setattr(os, "preadv", unsupported)
    assert store.get_range(bid(1), 0, 10, nowait=True) == data[:10]
    assert store.get_range(bid(1), 10, 10, nowait=True) == data[10:20]
    assert store._nowait is False


def test_get_range_nowait_on_a_cold_page_cache():
    """On a disk (not tmpfs), bytes the kernel dropped from its cache read as None: the
    caller then reads in a worker thread."""
    import shutil
    import tempfile
    root = tempfile.mkdtemp(dir="/var/tmp", prefix="cosfs-t1-")
    try:
        store = LocalStore(os.path.join(root, "blobs"))
        store.create()
        data = os.urandom(300000)
        store.put(bid(1), data)
        store.sync_all()
        fd = os.open(store._path(bid(1)), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        got = store.get_range(bid(1), 200000, 4096, nowait=True)
        assert got is None or got == data[200000:204096]  # None unless /var/tmp is tmpfs
        assert store.get_range(bid(1), 200000, 4096) == data[200000:204096]
        store.close()
    finally:
        shutil.rmtree(root)


def test_large_blobs_start_their_writeback_unless_told_not_to(store, monkeypatch):
    started = []
    monkeypatch.setattr(durable, "start_writeback", lambda fd: started.append(fd))
    big = os.urandom(EARLY_WRITEBACK)
    store.put(b"\x01" * 16, big[:-1])  # small: nothing to start
    assert started == []
    store.put(b"\x02" * 16, big)
    assert len(started) == 1
    store.put(b"\x03" * 16, big, writeback=False)  # likely replaced before any commit
    assert len(started) == 1
    assert store.get(b"\x03" * 16) == big
    assert store.unsynced_count == 3  # still made durable by the next sync_all


def test_put_never_overwrites(store):
    store.put(bid(1), b"first")
    with pytest.raises(StoreError) as ei:
        store.put(bid(1), b"second")
    assert ei.value.errno == errno.EEXIST
    assert store.get(bid(1)) == b"first"


def test_missing_blob_is_eio(store):
    for call in (lambda: store.get(bid(9)), lambda: store.get_range(bid(9), 0, 1)):
        with pytest.raises(StoreError) as ei:
            call()
        assert ei.value.errno == errno.EIO
        assert bid(9).hex() in str(ei.value)
    with pytest.raises(StoreError):
        store.size(bid(9))


def test_delete(store):
    store.put(bid(1), b"x")
    store.delete(bid(1))
    with pytest.raises(StoreError):
        store.get(bid(1))
    store.delete(bid(1))  # missing is not an error
    store.put(bid(1), b"y")  # the name is free again
    assert store.get(bid(1)) == b"y"


def test_list(store):
    ids = {os.urandom(16) for _ in range(50)}
    for b in ids:
        store.put(b, b"z")
    # stray files are ignored
    with open(os.path.join(store.root, "00", "not-a-blob"), "w") as f:
        f.write("x")
    with open(os.path.join(store.root, "stray"), "w") as f:
        f.write("x")
    assert set(store.list()) == ids
    store.delete(next(iter(ids)))
    assert len(set(store.list())) == 49


def test_sync_all_tracks_unsynced(store):
    store.put(bid(1), b"a")
    store.put(bid(2), b"b")
    assert store.unsynced_count == 2
    store.delete(bid(2))
    assert store.unsynced_count == 1
    store.sync_all()
    assert store.unsynced_count == 0
    store.sync_all()  # nothing to do


def test_sync_all_skips_blobs_deleted_behind_its_back(store):
    store.put(bid(1), b"a")
    os.unlink(store._path(bid(1)))
    store.sync_all()
    assert store.unsynced_count == 0


def test_errors_carry_errno(store):
    # a file where the fan-out directory should be: every OS call fails with ENOTDIR
    sub = os.path.join(store.root, "00")
    os.rmdir(sub)
    with open(sub, "w") as f:
        f.write("x")
    for call in (lambda: store.put(bytes(16), b"x"), lambda: store.get(bytes(16)),
                 lambda: store.get_range(bytes(16), 0, 1), lambda: store.delete(bytes(16)),
                 lambda: store.size(bytes(16))):
        with pytest.raises(StoreError) as ei:
            call()
        assert ei.value.errno == errno.ENOTDIR
        assert ei.value.code == "StoreError"


def test_unreadable_blob_is_not_reported_missing(store):
    os.mkdir(store._path(bid(3)))  # a directory in place of the blob: EISDIR, not EIO
    with pytest.raises(StoreError) as ei:
        store.get(bid(3))
    assert ei.value.errno == errno.EISDIR


def test_create_failure_carries_errno(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError) as ei:
        LocalStore(f / "sub").create()
    assert ei.value.errno == errno.ENOTDIR


def test_write_failure_removes_partial_blob(store, monkeypatch):
    real_write = os.write
    calls = []

    def failing_write(fd, data):
        if calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(1)
        return real_write(fd, bytes(data[:10]))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StoreError) as ei:
        store.put(bid(5), b"0123456789abcdef")
    monkeypatch.undo()
    assert ei.value.errno == errno.ENOSPC
    assert not os.path.exists(store._path(bid(5)))
    assert store.unsynced_count == 0


def test_statvfs(store):
    assert store.statvfs().f_bsize > 0


def test_sync_all_fdatasyncs_every_blob_and_directory(store, monkeypatch):
    """Durability must not depend on syncfs where its meaning is not known (a FUSE file
    system never sees it; tmpfs here): every unsynced blob is fdatasynced and every
    directory that gained one is fsynced, however many there are."""
    from cosfs import durable
    synced, dirs = [], []
    real_fdatasync, real_fsync_dir = durable.fdatasync_path, durable.fsync_dir
    monkeypatch.setattr(durable, "fdatasync_path", lambda p: (synced.append(p), real_fdatasync(p)))
    monkeypatch.setattr(durable, "fsync_dir", lambda p: (dirs.append(p), real_fsync_dir(p)))
    ids = [bytes([i]) + bytes(15) for i in range(200)]
    for b in ids:
        store.put(b, b"x")
    store.delete(ids[0])  # superseded before the sync: nothing to sync
    store.sync_all()
    assert sorted(synced) == sorted(store._path(b) for b in ids[1:])
    assert sorted(dirs) == sorted({os.path.dirname(store._path(b)) for b in ids[1:]})
    assert store.unsynced_count == 0
    synced.clear()
    store.sync_all()
    assert synced == []


def test_sync_all_waits_for_a_sync_in_progress(store, monkeypatch):
    """A second caller must not return while the first still syncs the blobs it depends on."""
    from cosfs import durable
    gate = threading.Event()
    started = threading.Event()
    real = durable.fdatasync_path

    def slow(path):
        started.set()
        gate.wait(10)
        real(path)

    monkeypatch.setattr(durable, "fdatasync_path", slow)
    store.put(bid(1), b"x")
    first = threading.Thread(target=store.sync_all)
    first.start()
    assert started.wait(10)
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (store.sync_all(), second_done.set()))
    second.start()
    time.sleep(0.2)
    assert not second_done.is_set()
    gate.set()
    first.join(10)
    second.join(10)
    assert second_done.is_set()


def test_failed_sync_keeps_blobs_unsynced(store, monkeypatch):
    from cosfs import durable

    def failing(path):
        raise OSError(errno.EIO, "Input/output error")

    store.put(bid(1), b"x")
    monkeypatch.setattr(durable, "fdatasync_path", failing)
    with pytest.raises(StoreError) as ei:
        store.sync_all()
    assert ei.value.errno == errno.EIO
    assert store.unsynced_count == 1
    monkeypatch.undo()
    with pytest.raises(StoreError):  # suspect from now on (see the test below)
        store.sync_all()
    assert store.unsynced_count == 1
    store.delete(bid(1))
    store.sync_all()
    assert store.unsynced_count == 0


@pytest.fixture
def disk_store(tmp_path_factory):
    """A store on the disk's file system (not tmpfs), skipped unless its syncfs is full."""
    root = tmp_path_factory.mktemp("disk") / "blobs"
    root.parent.mkdir(exist_ok=True)
    if durable.WholeSync.open(root.parent) is None:
        pytest.skip("the test directory's file system is not one whose syncfs is full")
    s = LocalStore(root)
    s.create()
    yield s
    s.close()


def test_many_blobs_are_made_durable_by_one_syncfs(disk_store, monkeypatch):
    """On ext3, ext4, xfs or btrfs, from SYNCFS_MIN_BLOBS unsynced blobs on, one syncfs
    replaces the fdatasync of each blob and the fsync of each folder; fewer go one by one."""
    from cosfs import store as store_mod
    calls = []
    real_sync = durable.WholeSync.sync
    monkeypatch.setattr(durable.WholeSync, "sync",
                        lambda self: (calls.append("syncfs"), real_sync(self)))
    monkeypatch.setattr(durable, "fdatasync_path", lambda p: calls.append("fdatasync"))
    monkeypatch.setattr(durable, "fsync_dir", lambda p: calls.append("fsync_dir"))
    for i in range(store_mod.SYNCFS_MIN_BLOBS):
        disk_store.put(bid(i), b"x")
    disk_store.sync_all()
    assert calls == ["syncfs"] and disk_store.unsynced_count == 0
    calls.clear()
    disk_store.put(bid(1000), b"x")
    disk_store.sync_all()
    assert calls == ["fdatasync", "fsync_dir"]


def test_failed_syncfs_keeps_blobs_unsynced_and_is_not_trusted_again(disk_store, monkeypatch):
    """A syncfs that failed has collected the error: a second one would succeed. So the
    blobs stay unsynced and from then on go one by one, whose fdatasync still reports
    each blob's own write-back error."""
    from cosfs import store as store_mod

    def failing(self):
        raise OSError(errno.EIO, "Input/output error")

    for i in range(store_mod.SYNCFS_MIN_BLOBS):
        disk_store.put(bid(i), b"x")
    monkeypatch.setattr(durable.WholeSync, "sync", failing)
    with pytest.raises(StoreError) as ei:
        disk_store.sync_all()
    assert ei.value.errno == errno.EIO
    assert disk_store.unsynced_count == store_mod.SYNCFS_MIN_BLOBS
    monkeypatch.undo()
    synced = []
    real = durable.fdatasync_path
    monkeypatch.setattr(durable, "fdatasync_path", lambda p: (synced.append(p), real(p)))
    disk_store.sync_all()
    assert disk_store.unsynced_count == 0
    assert len(synced) == store_mod.SYNCFS_MIN_BLOBS


def test_sync_after_a_crash_goes_blob_by_blob(disk_store, monkeypatch):
    """The blobs an earlier process left: their write-back errors may have been collected
    by some syncfs meanwhile, but not by an fdatasync of each."""
    from cosfs import store as store_mod
    for i in range(store_mod.SYNCFS_MIN_BLOBS + 1):
        disk_store.put(bid(i), b"x")
    calls = []
    monkeypatch.setattr(durable.WholeSync, "sync", lambda self: calls.append("syncfs"))
    monkeypatch.setattr(durable, "fdatasync_path", lambda p: calls.append("fdatasync"))
    fresh = LocalStore(disk_store.root)
    assert fresh.sync_everything() == store_mod.SYNCFS_MIN_BLOBS + 1
    assert "syncfs" not in calls and calls.count("fdatasync") == store_mod.SYNCFS_MIN_BLOBS + 1


def test_syncfs_only_where_it_promises_as_much(tmp_path, tmp_path_factory, monkeypatch):
    """Not on tmpfs (nor FUSE, NFS, ...), not on kernels whose syncfs hides write-back
    errors; a store whose file system cannot be asked goes blob by blob."""
    if str(tmp_path).startswith("/dev/shm"):
        assert durable.WholeSync.open(tmp_path) is None
    disk = tmp_path_factory.mktemp("kernel")
    if durable.WholeSync.open(disk) is not None and os.access("/dev/shm", os.W_OK):
        # a folder of the store on another file system: its own syncfs would be needed
        assert durable.WholeSync.open(disk, [disk, "/dev/shm"]) is None
    monkeypatch.setattr(durable, "_kernel_at_least", lambda version: False)
    assert durable.WholeSync.open(disk) is None
    monkeypatch.undo()
    assert durable.WholeSync.open(disk / "missing") is None
    monkeypatch.setattr(durable, "_mount_type", lambda path: "ext2")
    assert durable.WholeSync.open(disk) is None  # not journalled: syncfs does not flush


def test_a_blob_whose_fdatasync_failed_stays_suspect(store, monkeypatch, caplog):
    """The kernel reports a write-back error once: a second fdatasync would answer 0 with
    the data lost on the disk. So every later sync fails until the blob is deleted."""
    real = durable.fdatasync_path
    store.put(bid(1), b"sealed bytes")
    store.put(bid(2), b"other")
    path = store._path(bid(1))

    def once(p):
        if p == path:
            monkeypatch.setattr(durable, "fdatasync_path", real)
            raise OSError(errno.EIO, "Input/output error")
        real(p)

    monkeypatch.setattr(durable, "fdatasync_path", once)
    with pytest.raises(StoreError) as ei:
        store.sync_all()
    assert ei.value.errno == errno.EIO and "fsck --verify" in caplog.text
    for _ in range(2):  # fdatasync works again, but is not trusted for that blob
        with pytest.raises(StoreError) as ei:
            store.sync_all()
        assert ei.value.errno == errno.EIO and "earlier fdatasync" in str(ei.value)
    store.put(bid(3), b"third")
    store.delete(bid(1))  # superseded: nothing is left to be unsure about
    store.sync_all()
    assert store.unsynced_count == 0


def test_sync_everything_after_a_crash(store):
    for i in range(5):
        store.put(bid(i), b"x")
    fresh = LocalStore(store.root)  # a new process: its list of unsynced blobs is empty
    assert fresh.sync_everything() == 5


def test_store_on_a_file_system_without_size(store, monkeypatch, caplog):
    """A file system reporting 0 blocks (some FUSE and network file systems): writes work,
    one warning, no reserve enforced."""
    real = os.statvfs

    def sizeless(path):
        sv = real(path)
        return os.statvfs_result((sv.f_bsize, sv.f_frsize, 0, 0, 0, 0, 0, 0, sv.f_flag,
                                  sv.f_namemax))

    monkeypatch.setattr(os, "statvfs", sizeless)
    with caplog.at_level("WARNING", logger="cosfs.store"):
        for i in range(3):
            store.put(bid(i), b"x" * 1000)
    warnings = [r for r in caplog.records if "reports no size" in r.getMessage()]
    assert len(warnings) == 1


def test_makedirs_is_durable_and_strict(tmp_path, monkeypatch):
    from cosfs import durable
    dirs = []
    real = durable.fsync_dir
    monkeypatch.setattr(durable, "fsync_dir", lambda p: (dirs.append(p), real(p)))
    target = tmp_path / "a" / "b" / "c"
    assert durable.makedirs(target, 0o700) is True
    assert (target.stat().st_mode & 0o777) == 0o700
    assert dirs == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    assert durable.makedirs(target, 0o700) is False
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        durable.makedirs(tmp_path / "f")


# -- cached read descriptors ---------------------------------------------------------
def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_ranged_reads_keep_a_bounded_number_of_descriptors(store, monkeypatch):
    import cosfs.store as store_module
    monkeypatch.setattr(store_module, "OPEN_BLOBS", 8)
    for n in range(40):
        store.put(bid(n), b"%02d" % n * 100)
    before = _open_fds()
    for _ in range(3):
        for n in range(40):
            assert store.get_range(bid(n), 2, 4) == b"%02d%02d" % (n, n)
    assert _open_fds() - before <= 8
    store.close()
    assert _open_fds() <= before


def test_deleted_blob_is_missing_even_with_a_cached_descriptor(store):
    store.put(bid(1), b"data")
    assert store.get_range(bid(1), 0, 4) == b"data"
    store.delete(bid(1))
    with pytest.raises(StoreError) as ei:
        store.get_range(bid(1), 0, 4)
    assert ei.value.errno == errno.EIO


def test_concurrent_ranged_reads_with_eviction(store, monkeypatch):
    """Readers in many threads while descriptors are evicted under them: every read
    returns its blob's bytes (a descriptor is closed only once no read uses it)."""
    import cosfs.store as store_module
    monkeypatch.setattr(store_module, "OPEN_BLOBS", 4)
    blobs = {bid(n): os.urandom(4096) for n in range(32)}
    for b, data in blobs.items():
        store.put(b, data)
    errors = []

    def reader(seed):
        import random
        rnd = random.Random(seed)
        try:
            for _ in range(2000):
                b = rnd.choice(list(blobs))
                off = rnd.randrange(4000)
                assert store.get_range(b, off, 64) == blobs[b][off:off + 64]
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
