"""S3Store against a real SeaweedFS: the blob interface, the read cache, batched deletes,
the credentials file, and the retry policy through a fault-injecting proxy."""

import errno
import logging
import os
import time

import pytest

from conftest import s3_credentials_file
from cosfs import chunkio, s3store
from cosfs.config import S3StoreSettings
from cosfs.errors import StoreError
from cosfs.s3store import S3Store, load_credentials
from seaweed import FaultProxy

pytestmark = pytest.mark.timeout(120)

_n = iter(range(10 ** 6))


def bid(i):
    return i.to_bytes(16, "big")


def make(server, tmp_path, *, endpoint=None, bucket=None, **kw):
    if bucket is None:
        bucket = "cosfs-u%d-%d" % (os.getpid(), next(_n))
        server.create_bucket(bucket)
    kw.setdefault("retry_time", 5.0)
    settings = S3StoreSettings(endpoint=endpoint or server.endpoint, bucket=bucket,
                               credentials=s3_credentials_file(str(tmp_path)),
                               cache=tmp_path / "cache", prefix="p/", **kw)
    store = S3Store(settings, str(tmp_path))
    store.create()
    store.start()
    return store


class Calls:
    """Counts the S3 operations a client makes (botocore's event hooks)."""

    def __init__(self, store):
        self.counts = {}
        store._client.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model, **kwargs):
        self.counts[model.name] = self.counts.get(model.name, 0) + 1

    def __getitem__(self, name):
        return self.counts.get(name, 0)


@pytest.fixture
def store(seaweedfs, tmp_path):
    return make(seaweedfs, tmp_path)


def test_put_get_range_size_list_delete(store):
    data = os.urandom(300_000)
    store.put(bid(1), data)
    store.put(bid(2), memoryview(b"small"))
    assert store.get(bid(1)) == data
    assert store.get_range(bid(1), 1000, 50) == data[1000:1050]
    assert store.get_range(bid(1), len(data) - 10, 100) == data[-10:]  # short at the end
    assert store.size(bid(1)) == len(data)
    assert store.size(bid(2)) == 5
    assert sorted(store.list()) == [bid(1), bid(2)]
    store.delete(bid(1))
    store.delete(bid(1))  # missing is not an error
    assert list(store.list()) == [bid(2)]
    for fn in (lambda: store.get(bid(1)), lambda: store.size(bid(1)),
               lambda: store.get_range(bid(1), 0, 10)):
        with pytest.raises(StoreError) as exc:
            fn()
        assert exc.value.errno == errno.EIO and "missing" in str(exc.value)
    store.sync_all()
    assert store.sync_everything() == 0 and store.unsynced_count == 0


def test_uncached_ranges(seaweedfs, tmp_path):
    store = make(seaweedfs, tmp_path, cache_size=0)
    data = os.urandom(100_000)
    store.put(bid(7), data)
    calls = Calls(store)
    assert store.get_range(bid(7), 5, 10) == data[5:15]
    assert store.get_range(bid(7), len(data) - 3, 10) == data[-3:]
    assert store.get_range(bid(7), len(data), 10) == b""  # past the end: short, no error
    assert calls["GetObject"] == 3


def test_read_cache_serves_repeated_reads_and_keeps_its_limit(seaweedfs, tmp_path):
    store = make(seaweedfs, tmp_path, cache_size=250_000)
    blobs = {bid(i): os.urandom(100_000) for i in range(4)}
    for b, data in blobs.items():
        store.put(b, data)
    calls = Calls(store)
    assert store.get_range(bid(0), 10, 10) == blobs[bid(0)][10:20]
    assert store.get(bid(0)) == blobs[bid(0)]
    assert store.size(bid(0)) == 100_000
    assert calls["GetObject"] == 1 and calls["HeadObject"] == 0
    for i in range(1, 4):
        assert store.get(bid(i)) == blobs[bid(i)]
    assert store.cache.used <= 250_000
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(bid(i).hex() for i in (2, 3))
    assert store.get(bid(3)) == blobs[bid(3)] and calls["GetObject"] == 4
    store.delete(bid(3))
    assert bid(3).hex() not in os.listdir(tmp_path / "cache")
    # a reopened store keeps its cache, unless the previous user crashed
    again = S3Store(store.settings, str(tmp_path))
    assert bid(2) in again.cache
    dropped = S3Store(store.settings, str(tmp_path), drop_cache=True)
    assert dropped.cache.used == 0 and os.listdir(tmp_path / "cache") == []


def test_uncached_view_for_fsck(store):
    store.put(bid(1), b"abc")
    store.put(bid(2), b"defg")
    assert store.get(bid(1)) == b"abc"                   # now in the cache
    store._client.delete_object(Bucket=store.bucket, Key=store._key(bid(1)))
    assert store.get(bid(1)) == b"abc"                   # the cache still has it
    check = store.uncached()
    calls = Calls(check)
    assert sorted(check.list()) == [bid(2)]
    assert check.size(bid(2)) == 4 and calls["HeadObject"] == 0   # from the listing
    with pytest.raises(StoreError, match="missing"):
        check.size(bid(1))
    assert store.cache is not None and check.cache is None


def test_batched_delete(store, monkeypatch):
    monkeypatch.setattr(s3store, "DELETE_BATCH", 10)
    ids = [bid(i) for i in range(25)]
    for b in ids:
        store.put(b, b"x")
    calls = Calls(store)
    done = chunkio.delete_blobs(store, ids + [bid(99)])  # a missing blob counts as deleted
    assert sorted(done) == sorted(ids + [bid(99)])
    assert calls["DeleteObjects"] == 3 and calls["DeleteObject"] == 0
    assert list(store.list()) == []


def test_list_pages(store, monkeypatch):
    ids = sorted(bid(i) for i in range(30))
    for b in ids:
        store.put(b, b"")
    store._client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2",
        lambda params, **kw: params.__setitem__("MaxKeys", 7))
    calls = Calls(store)
    assert sorted(store.list()) == ids
    assert calls["ListObjectsV2"] == 5


def test_statvfs_and_room(store):
    sv = store.statvfs()
    assert sv.f_blocks > 0 and sv.f_bavail == sv.f_blocks
    store.check_room(1000)  # the catalog's folder has room


def test_credentials_file_rules(tmp_path):
    path = s3_credentials_file(str(tmp_path), mode=0o644)
    with pytest.raises(StoreError, match="mode 0644.*chmod 600") as exc:
        load_credentials(path)
    assert exc.value.errno == errno.EACCES
    os.chmod(path, 0o600)
    creds = load_credentials(path)
    assert creds.secret_access_key not in repr(creds)
    link = str(tmp_path / "link")
    os.symlink(path, link)
    with pytest.raises(StoreError, match="symbolic link"):
        load_credentials(link)
    with open(path, "w") as f:
        f.write("access_key_id = x\n")
    with pytest.raises(StoreError, match="secret_access_key is missing"):
        load_credentials(path)


def test_wrong_credentials_fail_with_one_clear_line(seaweedfs, tmp_path):
    bucket = "cosfs-u%d-%d" % (os.getpid(), next(_n))
    seaweedfs.create_bucket(bucket)
    settings = S3StoreSettings(endpoint=seaweedfs.endpoint, bucket=bucket,
                               credentials=s3_credentials_file(str(tmp_path), secret_key="w" * 32),
                               cache=tmp_path / "cache", retry_time=2.0)
    with pytest.raises(StoreError) as exc:
        S3Store(settings, str(tmp_path)).create()
    msg = str(exc.value)
    assert "\n" not in msg and seaweedfs.endpoint in msg and "credentials" in msg
    assert exc.value.errno == errno.EACCES


def test_missing_bucket_is_created(seaweedfs, tmp_path, caplog):
    bucket = "cosfs-new-%d-%d" % (os.getpid(), next(_n))
    with caplog.at_level(logging.INFO, logger="cosfs.s3store"):
        store = make(seaweedfs, tmp_path, bucket=bucket)
    assert [r.getMessage() for r in caplog.records] == [
        "S3 store %s: creating bucket %s" % (seaweedfs.endpoint, bucket)]
    store.put(bid(1), b"abc")
    assert store.get(bid(1)) == b"abc"


@pytest.fixture
def proxy(seaweedfs):
    p = FaultProxy(seaweedfs.endpoint).start()
    yield p
    p.stop()


def test_transient_errors_are_retried(seaweedfs, tmp_path, proxy):
    store = make(seaweedfs, tmp_path, endpoint=proxy.endpoint, cache_size=0)
    proxy.fail(3)
    store.put(bid(1), b"after three 503s")
    proxy.reset(2)
    assert store.get(bid(1)) == b"after three 503s"
    proxy.fail(2)
    assert chunkio.delete_blobs(store, [bid(1)]) == [bid(1)]
    assert list(store.list()) == []


def test_retries_end_in_eio_with_a_log_line(seaweedfs, tmp_path, proxy, caplog):
    store = make(seaweedfs, tmp_path, endpoint=proxy.endpoint, retry_time=1.0)
    proxy.fail(10 ** 6)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="cosfs.s3store"):
        with pytest.raises(StoreError) as exc:
            store.put(bid(5), b"never stored")
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 5
    line = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]
    assert proxy.endpoint in line and bid(5).hex() in line and "SlowDown" in line
    # deletes that keep failing are left for the collector's next pass
    assert chunkio.delete_blobs(store, [bid(5)]) == []
    proxy.fail(0)
    store.put(bid(5), b"stored")
    assert store.get(bid(5)) == b"stored"


def test_unreachable_service_is_eio(tmp_path):
    from seaweed import free_ports
    settings = S3StoreSettings(endpoint="http://127.0.0.1:%d" % free_ports(1)[0],
                               bucket="nowhere", credentials=s3_credentials_file(str(tmp_path)),
                               cache=tmp_path / "cache", retry_time=1.0, connect_timeout=1.0)
    store = S3Store(settings, str(tmp_path))
    with pytest.raises(StoreError) as exc:
        store.put(bid(1), b"x")
    assert exc.value.errno == errno.EIO and "127.0.0.1" in str(exc.value)


# -- write-back: a local upload queue ------------------------------------------------

def remote_keys(server, store):
    client = server.client()
    return {o["Key"] for o in client.list_objects_v2(Bucket=store.bucket,
                                                     Prefix=store.prefix).get("Contents", ())}


def test_write_back_stages_then_uploads(seaweedfs, tmp_path, proxy):
    store = make(seaweedfs, tmp_path, endpoint=proxy.endpoint, write_back=True,
                 staging=tmp_path / "staging", cache_size=0, retry_time=1.0)
    try:
        proxy.fail(10 ** 6)  # the service is down: puts still return at once
        data = {bid(i): os.urandom(1000 + i) for i in range(5)}
        for b, d in data.items():
            store.put(b, d)
        assert all(store.get(b) == d for b, d in data.items())
        assert store.get_range(bid(2), 10, 20) == data[bid(2)][10:30]
        assert store.size(bid(3)) == len(data[bid(3)])
        assert store.unsynced_count == 5
        store.sync_all()  # durable on the local disk, not yet on the service
        assert store.unsynced_count == 0
        store.delete(bid(4))  # deleted while queued: never uploaded
        with pytest.raises(StoreError) as exc:
            store.wait_uploaded()  # fsync waits for the upload: the service keeps failing
        assert exc.value.errno == errno.EIO and "not uploaded" in str(exc.value)
        proxy.fail(0)
        assert set(store.list()) == {bid(i) for i in range(4)}  # staged or uploaded
        store.wait_uploaded()
        assert remote_keys(seaweedfs, store) == {"p/" + bid(i).hex() for i in range(4)}
        assert os.listdir(tmp_path / "staging") == []
        assert all(store.get(bid(i)) == data[bid(i)] for i in range(4))
    finally:
        store.close()


def test_write_back_queue_survives_a_restart(seaweedfs, tmp_path, proxy):
    kw = dict(endpoint=proxy.endpoint, write_back=True, staging=tmp_path / "staging",
              cache_size=0, retry_time=1.0)
    store = make(seaweedfs, tmp_path, **kw)
    proxy.fail(10 ** 6)
    store.put(bid(1), b"queued before the crash")
    store.sync_all()
    store.close()  # the daemon dies: the staged file is the queue
    (tmp_path / "staging" / (bid(9).hex() + ".part")).write_bytes(b"torn")
    proxy.fail(0)
    again = make(seaweedfs, tmp_path, bucket=store.bucket, **kw)
    try:
        again.wait_uploaded()
        assert remote_keys(seaweedfs, again) == {"p/" + bid(1).hex()}
        assert os.listdir(tmp_path / "staging") == []  # the torn .part went too
        assert again.get(bid(1)) == b"queued before the crash"
    finally:
        again.close()


def test_write_back_staging_is_bounded(seaweedfs, tmp_path, proxy):
    store = make(seaweedfs, tmp_path, endpoint=proxy.endpoint, write_back=True,
                 staging=tmp_path / "staging", staging_size=3000, cache_size=0, retry_time=1.0)
    try:
        proxy.fail(10 ** 6)
        store.put(bid(1), b"a" * 2000)
        with pytest.raises(StoreError) as exc:
            store.put(bid(2), b"b" * 2000)  # waits retry_time for room, then EIO
        assert exc.value.errno == errno.EIO and "full" in str(exc.value)
        proxy.fail(0)
        deadline = time.monotonic() + 20  # the uploader pauses after a failure, then retries
        while store.staging.count:
            assert time.monotonic() < deadline, "the queued blob was never uploaded"
            time.sleep(0.05)
        store.put(bid(2), b"b" * 2000)  # room once the first one is uploaded
        store.wait_uploaded()
        assert store.get(bid(2)) == b"b" * 2000
    finally:
        store.close()


def test_a_fenced_store_refuses_changes_but_reads(store):
    store.put(bid(1), b"before")
    store.fence("the store lease was taken over by host-b")
    for change in (lambda: store.put(bid(2), b"x"), lambda: store.delete(bid(1)),
                   lambda: store.delete_many([bid(1)]) or store.delete(bid(1)),
                   lambda: store.put_meta("snapshots/x", b"x")):
        with pytest.raises(StoreError) as exc:
            change()
        assert exc.value.errno == errno.EIO and "taken over by host-b" in str(exc.value)
    assert store.get(bid(1)) == b"before"
    assert store.uncached().get(bid(1)) == b"before"
    store.put_meta("lease", b"{}")  # the lease itself is still written (renewal, release)
    store.fence(None)
    store.put(bid(2), b"after")
    assert store.get(bid(2)) == b"after"
