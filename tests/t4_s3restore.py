"""Losing the machine that mounts an S3 store (a real SeaweedFS): catalog snapshots in the
bucket, ``cosfs restore`` on another machine (another store folder, the key store copied),
the lease that keeps two machines apart, and blobs held back until a snapshot no longer
needs them.

"Another machine" is another store folder: the lease's holder is the host name and the
store folder, so a second folder on this host is, to the lease, a second machine.
"""

import errno
import json
import os
import re
import shutil
import time

import pytest

from conftest import Mount, get, put, s3_store_yaml, write_config
from t4_s3mount import bucket_of, s3_objects

pytestmark = pytest.mark.timeout(240)

CHUNK = 64 * 1024
SSE = "user.cos.server-side-encryption"


def stores_text(config_path):
    """The ``stores:`` (and following) part of a config: the same S3 store elsewhere."""
    with open(config_path) as f:
        text = f.read()
    return text[text.index("stores:"):]


def second_machine(tmp_path, first, extra=""):
    """A config in a new folder over the same S3 store, with the first one's key store
    copied (what a user brings to the new machine)."""
    folder = str(tmp_path / "machine2")
    path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=stores_text(first.config) + extra)
    shutil.copytree(first.keys, os.path.join(folder, "keys"))
    return path


def tree(root):
    """{relative path: (bytes, encryption)} of every file below ``root``."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                sse = os.getxattr(path, SSE).decode()
            except OSError:
                sse = None
            out[os.path.relpath(path, root)] = (get(path), sse)
    return out


def write_tree(m):
    """A tree over both buckets: packed small files, multi-chunk files, an override."""
    os.makedirs(os.path.join(m.enc, "docs", "deep"))
    os.makedirs(os.path.join(m.plain, "logs"))
    files = {os.path.join(m.enc, "docs", "small%d" % i): os.urandom(100 + i * 37)
             for i in range(20)}
    files[os.path.join(m.enc, "docs", "deep", "big")] = os.urandom(5 * CHUNK + 123)
    files[os.path.join(m.plain, "logs", "plain-big")] = os.urandom(3 * CHUNK)
    files[os.path.join(m.plain, "override")] = os.urandom(2 * CHUNK + 5)
    for path, data in files.items():
        put(path, data)
    os.setxattr(os.path.join(m.plain, "override"), SSE, b"SM4")
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return tree(m.mnt)


def age_lease(server, bucket, seconds):
    """Make the lease in ``bucket`` look ``seconds`` older (its holder stopped renewing)."""
    client = server.client()
    key = "blobs/.cosfs/lease"
    doc = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    doc["renewed"] -= seconds
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())


def take_over(tmp_path, lost, server):
    """The second machine after ``lost`` was lost: restore the newest snapshot, let the
    lost machine's lease go stale, mount with --break-lease. Returns the started Mount."""
    path = second_machine(tmp_path, lost)
    second = Mount(path)
    second.cli("restore", "--config", path)
    age_lease(server, bucket_of(lost.config), 1000)
    return second.start("--break-lease")


def snapshot_keys(server, bucket):
    return sorted(k for k in s3_objects(server, bucket, meta=True) if "/snapshots/" in k)


@pytest.fixture
def first(seaweedfs, tmp_path):
    folder = str(tmp_path / "machine1")
    path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=s3_store_yaml(seaweedfs, folder, cache_size="1MiB")
                        + "snapshots:\n  interval: 3600\n")
    m = Mount(path)
    yield m
    m.kill9()


def test_restore_on_another_machine_after_fsync_and_a_kill(first, seaweedfs, tmp_path):
    first.start()
    expected = write_tree(first)
    assert expected[os.path.join(first.plain[len(first.mnt) + 1:], "override")][1] == "SM4"
    status = first.cli("status", first.mnt).stdout
    assert re.search(r"catalog snapshot\s+catalog-\d{20}-[0-9a-f]{8}\.snap, \d+s ago", status), \
        status
    first.kill9()  # the machine is gone: nothing after the fsyncs reaches anyone
    bucket = bucket_of(first.config)
    assert snapshot_keys(seaweedfs, bucket)

    path = second_machine(tmp_path, first)
    second = Mount(path)
    listed = second.cli("restore", "--config", path, "--list").stdout
    assert re.search(r"catalog-\d{20}-[0-9a-f]{8}\.snap", listed)
    out = second.cli("restore", "--config", path).stdout
    assert "restored the catalog" in out and "cosfs fsck" in out
    # a second restore does not overwrite a catalog silently
    again = second.cli("restore", "--config", path, check=False)
    assert again.returncode != 0 and "--force" in again.stderr

    # the lost machine's lease is still there, and fresh: refused even with the flag
    with pytest.raises(RuntimeError, match="in use by .*machine1.*--break-lease"):
        second.start()
    with pytest.raises(RuntimeError, match="not broken"):
        second.start("--break-lease")
    age_lease(seaweedfs, bucket, 1000)
    second.start("--break-lease")
    try:
        got = tree(second.mnt)
        assert got == expected
    finally:
        second.stop()
    # fsck on the new machine: blobs of the lost machine written after the snapshot
    # (none here: every file was fsynced) would go as orphans; nothing is damaged
    res = second.cli("fsck", "--config", path, "--verify")
    assert "DAMAGED" not in res.stdout
    second.start()
    try:
        assert tree(second.mnt) == expected
    finally:
        second.stop()


def test_a_second_machine_is_kept_out_while_one_mounts(first, seaweedfs, tmp_path):
    first.start()
    put(os.path.join(first.enc, "a"), b"a" * 1000)
    path = second_machine(tmp_path, first)
    second = Mount(path)
    second.cli("restore", "--config", path)  # reads the store only: allowed
    res = second.cli("fsck", "--config", path, check=False)
    assert res.returncode != 0
    line = res.stderr.strip()
    assert "\n" not in line and "in use by" in line and "machine1" in line, line
    with pytest.raises(RuntimeError, match="in use by"):
        second.start()
    first.stop()  # a clean stop gives the lease back
    bucket = bucket_of(first.config)
    assert "blobs/.cosfs/lease" not in s3_objects(seaweedfs, bucket, meta=True)
    # the catalog restored above predates "a": the unmount's snapshot has it
    out = second.cli("restore", "--config", path, "--force").stdout
    assert "previous catalog is kept as" in out
    second.start()
    try:
        assert get(os.path.join(second.enc, "a")) == b"a" * 1000
        with pytest.raises(RuntimeError, match="in use by .*machine2"):
            first.start()
    finally:
        second.stop()


def test_released_blobs_stay_until_a_snapshot_no_longer_needs_them(first, seaweedfs, tmp_path):
    first.start()
    bucket = bucket_of(first.config)
    doomed = os.path.join(first.enc, "doomed")
    data = os.urandom(4 * CHUNK)
    put(doomed, data)
    fd = os.open(doomed, os.O_RDONLY)
    os.fsync(fd)  # a snapshot that references its blobs
    os.close(fd)
    blobs = set(s3_objects(seaweedfs, bucket))
    os.unlink(doomed)
    time.sleep(3)  # several collection passes: the newest snapshot still needs the blobs
    assert blobs <= set(s3_objects(seaweedfs, bucket))
    first.kill9()
    second = take_over(tmp_path, first, seaweedfs)
    try:
        assert get(os.path.join(second.enc, "doomed")) == data
        os.unlink(os.path.join(second.enc, "doomed"))
    finally:
        second.stop()  # the unmount's snapshot no longer names them: now they go
    assert not blobs & set(s3_objects(seaweedfs, bucket))


def test_a_closed_file_reaches_the_next_interval_snapshot(seaweedfs, tmp_path):
    folder = str(tmp_path / "machine1")
    path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=s3_store_yaml(seaweedfs, folder) +
                        "snapshots:\n  interval: 1\n  on_fsync: false\n")
    m = Mount(path).start()
    try:
        bucket = bucket_of(path)
        put(os.path.join(m.enc, "closed"), b"c" * 5000)  # closed, never fsynced
        closed_ns = time.time_ns()
        deadline = time.monotonic() + 20

        def taken_after():  # a snapshot's name carries the time it started
            return [k for k in snapshot_keys(seaweedfs, bucket)
                    if int(k.rsplit("/", 1)[1].split("-")[1]) > closed_ns]
        while not taken_after():
            assert time.monotonic() < deadline, "no snapshot within 20 s"
            time.sleep(0.2)
    finally:
        m.kill9()
    second = take_over(tmp_path, m, seaweedfs)
    try:
        assert get(os.path.join(second.enc, "closed")) == b"c" * 5000
    finally:
        second.stop()


def test_a_tampered_snapshot_is_refused_and_nothing_replaced(first, seaweedfs, tmp_path):
    first.start()
    put(os.path.join(first.enc, "a"), b"a" * 3000)
    first.stop()
    bucket = bucket_of(first.config)
    newest = snapshot_keys(seaweedfs, bucket)[-1]
    client = seaweedfs.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=newest)["Body"].read())
    body[-20] ^= 0x40
    client.put_object(Bucket=bucket, Key=newest, Body=bytes(body))
    catalog = os.path.join(first.store, "catalog.db")
    before = get(catalog)
    res = first.cli("restore", "--config", first.config, "--force", check=False)
    assert res.returncode != 0
    line = res.stderr.strip()
    assert "\n" not in line and "failed authentication" in line, line
    assert get(catalog) == before and not [n for n in os.listdir(first.store)
                                           if "restore" in n]
    # an older snapshot, named, is still there to restore
    older = newest.rsplit("/", 1)[1]
    names = [k.rsplit("/", 1)[1] for k in snapshot_keys(seaweedfs, bucket)]
    assert older in names and len(names) >= 2
    out = first.cli("restore", "--config", first.config, "--force", "--snapshot",
                    names[-2]).stdout
    assert names[-2] in out


def test_write_back_queue_survives_a_kill_while_the_service_is_down(seaweedfs, tmp_path):
    """With write-back, close() returns while the service fails; a kill -9 then loses
    nothing: the next mount uploads the staged blobs, and fsync waits for them."""
    from seaweed import FaultProxy
    proxy = FaultProxy(seaweedfs.endpoint).start()
    try:
        folder = str(tmp_path / "machine1")
        path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                            extra=s3_store_yaml(seaweedfs, folder, endpoint=proxy.endpoint,
                                                write_back="true", retry_time=2, cache_size=0)
                            + "snapshots:\n  interval: 3600\n  on_fsync: false\n")
        m = Mount(path).start()
        bucket = bucket_of(path)
        m.expect_log(r"S3 store|catalog snapshot|upload")
        proxy.fail(10 ** 6)
        files = {os.path.join(m.enc, "f%d" % i): os.urandom(2 * CHUNK + 20000)
                 for i in range(3)}
        started = time.monotonic()
        for p, data in files.items():
            put(p, data)  # closed: staged locally, the service is down
        assert time.monotonic() - started < 2
        assert sorted(os.listdir(os.path.join(m.store, "staging", "ap-guangzhou")))
        fd = os.open(next(iter(files)), os.O_RDONLY)
        try:
            with pytest.raises(OSError) as exc:
                os.fsync(fd)  # waits for the upload, which keeps failing
            assert exc.value.errno == errno.EIO
        finally:
            os.close(fd)
        m.kill9()
        assert not s3_objects(seaweedfs, bucket)
        proxy.fail(0)
        m.start()
        try:
            for p, data in files.items():
                assert get(p) == data
            fd = os.open(next(iter(files)), os.O_RDONLY)
            try:
                os.fsync(fd)  # the queue is on the service now
            finally:
                os.close(fd)
            assert len(s3_objects(seaweedfs, bucket)) == 3 * 3
            assert os.listdir(os.path.join(m.store, "staging", "ap-guangzhou")) == []
        finally:
            m.stop()
    finally:
        proxy.stop()
