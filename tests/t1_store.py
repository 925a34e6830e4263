"""LocalStore: immutable blobs in a local directory."""

import errno
import os
import stat

import pytest

from cosfs.errors import StoreError
from cosfs.store import LocalStore, blob_name

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


@pytest.mark.parametrize("syncfs_works", [True, False])
def test_sync_all_many_blobs(store, monkeypatch, syncfs_works):
    from cosfs import store as store_mod
    calls = []

    def fake_syncfs(path):
        calls.append(path)
        return syncfs_works

    monkeypatch.setattr(store_mod, "_syncfs", fake_syncfs)
    n = store_mod.SYNCFS_THRESHOLD + 1
    for i in range(n):
        store.put(bid(i), b"x")
    store.sync_all()
    assert calls == [store.root]
    assert store.unsynced_count == 0
    # few blobs: fsync each, no syncfs
    store.put(bid(n + 1), b"y")
    store.sync_all()
    assert calls == [store.root]
    assert store.unsynced_count == 0


def test_real_syncfs(store):
    from cosfs import store as store_mod
    assert store_mod._syncfs(store.root) in (True, False)
    assert store_mod._syncfs(os.path.join(store.root, "missing")) is False
