"""Mount tests on an S3 store (a real SeaweedFS): a selection of the POSIX, SSE and fsck
test bodies, run unchanged with the default region's chunks on S3, and what only an S3
store has (no local blobs, the service never sees a marker, orphans and missing blobs in
the bucket, a service that stops answering under a running mount).

The imported test functions are the very bodies of ``t4_posix`` and ``t4_sse``; their
``mount`` fixture resolves to this module's ``config_path``, which puts ap-guangzhou (the
region of both test buckets) on a fresh SeaweedFS bucket.
"""

import errno
import os
import re

import pytest

from conftest import Mount, get, mounted, put, s3_store_yaml, write_config
from seaweed import FaultProxy
# the shared bodies (pytest collects them here as well, with this module's fixtures)
from t4_posix import (test_concurrent_writers_share_chunks, test_fsync_survives_a_daemon_kill,  # noqa: F401
                      test_hard_links, test_many_files_survive_remount,
                      test_rename_replaces_atomically, test_statfs, test_unlink_while_open,
                      test_write_anywhere_holes_truncate)
from t4_sse import (make_marker, marker_data, pieces, test_default_applies_to_new_content_only,  # noqa: F401
                    test_metadata_changes_never_change_encryption)

pytestmark = pytest.mark.timeout(180)

CHUNK = 64 * 1024


@pytest.fixture(params=["write-through", "write-back"])
def config_path(seaweedfs, tmp_path, request):
    folder = str(tmp_path / "fs")
    extra = {"write_back": "true"} if request.param == "write-back" else {}
    return write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=s3_store_yaml(seaweedfs, folder, cache_size="1MiB", **extra))


def bucket_of(config_path):
    with open(config_path) as f:
        return re.search(r"bucket: (\S+)", f.read()).group(1)


def s3_objects(server, bucket, meta=False):
    """{key: bytes} of every blob in the S3 bucket (with ``meta``, also the store's own
    objects below ``.cosfs/``: catalog snapshots and the lease)."""
    client = server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            if not meta and "/.cosfs/" in "/" + obj["Key"]:
                continue
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_chunks_go_to_the_bucket_and_never_in_plaintext(mount, seaweedfs):
    marker = make_marker()
    data = marker_data(marker, 5 * CHUNK + 100)
    put(os.path.join(mount.enc, "secret"), data)
    put(os.path.join(mount.plain, "open"), b"p" * (3 * CHUNK))
    mount.stop()
    local = os.path.join(mount.store, "blobs", "ap-guangzhou")
    assert not os.path.exists(local) or not any(files for _, _, files in os.walk(local))
    objects = s3_objects(seaweedfs, bucket_of(mount.config), meta=True)
    assert len(objects) >= 5 + 3 and all(k.startswith("blobs/") for k in objects)
    needles = pieces(marker)
    assert not [k for k, v in objects.items() if any(n in v for n in needles)]
    mount.start()
    assert get(os.path.join(mount.enc, "secret")) == data


def test_removed_data_leaves_the_bucket(mount, seaweedfs):
    bucket = bucket_of(mount.config)
    for i in range(3):
        put(os.path.join(mount.plain, "f%d" % i), os.urandom(3 * CHUNK))
    os.sync()
    mount.stop()
    before = set(s3_objects(seaweedfs, bucket))
    assert len(before) == 9
    mount.start()
    for i in range(3):
        os.unlink(os.path.join(mount.plain, "f%d" % i))
    mount.stop()  # the final collection deletes the released blobs (one batch)
    assert s3_objects(seaweedfs, bucket) == {}


def fsck(m, *args):
    return m.cli("fsck", "--config", m.config, *args, check=False)


def test_fsck_on_s3(mount, seaweedfs):
    bucket = bucket_of(mount.config)
    contents = {}
    for name in ("plain", "enc"):
        p = os.path.join(getattr(mount, name), "obj")
        contents[p] = os.urandom(2 * CHUNK + 7)
        put(p, contents[p])
    mount.stop()
    client = seaweedfs.client()
    client.put_object(Bucket=bucket, Key="blobs/" + "ab" * 16, Body=b"orphan")
    res = fsck(mount, "--verify")
    assert res.returncode == 0, res.stderr
    assert "removed 1 orphan blob" in res.stdout and "DAMAGED" not in res.stdout
    assert "blobs/" + "ab" * 16 not in s3_objects(seaweedfs, bucket)
    res = fsck(mount, "--verify")
    assert "removed 0 orphan blob" in res.stdout and "DAMAGED" not in res.stdout
    victim = sorted(s3_objects(seaweedfs, bucket))[0]
    client.delete_object(Bucket=bucket, Key=victim)
    res = fsck(mount, "--dry-run")
    assert "DAMAGED" in res.stdout and "missing blob " + victim[len("blobs/"):] in res.stdout
    mount.start()
    mount.expect_log("missing")


def test_wrong_credentials_at_mount_time(seaweedfs, tmp_path):
    folder = str(tmp_path / "fs")
    path = write_config(folder, extra=s3_store_yaml(seaweedfs, folder, retry_time=2))
    with open(os.path.join(folder, "s3.credentials"), "w") as f:
        f.write("access_key_id = nobody\nsecret_access_key = wrong-wrong-wrong\n")
    m = Mount(path)
    res = m.cli("mount", path, check=False)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "credentials" in lines[0] and seaweedfs.endpoint in lines[0], \
        res.stderr
    os.chmod(os.path.join(folder, "s3.credentials"), 0o644)
    res = m.cli("mount", path, check=False)
    assert res.returncode != 0 and "chmod 600" in res.stderr


def test_a_failing_service_gives_eio_and_the_mount_stays_up(seaweedfs, tmp_path):
    proxy = FaultProxy(seaweedfs.endpoint).start()
    try:
        folder = str(tmp_path / "fs")
        path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                            extra=s3_store_yaml(seaweedfs, folder, endpoint=proxy.endpoint,
                                                retry_time=1, cache_size=0))
        gen = mounted(path)
        m = next(gen)
        try:
            kept = os.path.join(m.enc, "kept")
            data = os.urandom(3 * CHUNK)
            put(kept, data)
            fd = os.open(kept, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            proxy.fail(2)                                   # a short outage is retried
            put(os.path.join(m.enc, "retried"), os.urandom(2 * CHUNK))
            m.expect_log(r"S3 store .*(failed|SlowDown)")
            m.expect_log(r"cannot store chunk|commit|EIO|Input/output")
            proxy.fail(10 ** 6)                              # a long one fails the write
            with pytest.raises(OSError) as exc:
                with open(os.path.join(m.enc, "lost"), "wb") as f:
                    f.write(os.urandom(3 * CHUNK))
                    f.flush()
                    os.fsync(f.fileno())
            assert exc.value.errno == errno.EIO
            proxy.fail(0)
            assert get(kept) == data                        # nothing acknowledged was lost
            assert os.path.getsize(os.path.join(m.enc, "retried")) == 2 * CHUNK
            put(os.path.join(m.enc, "after"), b"the service is back")
            assert get(os.path.join(m.enc, "after")) == b"the service is back"
        finally:
            for _ in gen:
                pass
    finally:
        proxy.stop()


def test_bucket_deleted_under_a_running_mount(seaweedfs, tmp_path):
    folder = str(tmp_path / "fs")
    path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=s3_store_yaml(seaweedfs, folder, retry_time=1, cache_size=0))
    gen = mounted(path)
    m = next(gen)
    try:
        kept = os.path.join(m.enc, "kept")
        put(kept, os.urandom(3 * CHUNK))
        bucket = bucket_of(path)
        client = seaweedfs.client()
        for key in s3_objects(seaweedfs, bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)
        m.expect_log(r"NoSuchBucket|cannot store chunk|S3 store|missing|read|fsync|chunk")
        with pytest.raises(OSError) as exc:
            with open(os.path.join(m.enc, "new"), "wb") as f:
                f.write(os.urandom(3 * CHUNK))
        assert exc.value.errno == errno.EIO
        with pytest.raises(OSError) as exc:
            get(kept)
        assert exc.value.errno == errno.EIO
        assert sorted(os.listdir(m.enc)) == ["kept", "new"]  # the mount stays up
        put(os.path.join(m.enc, "tiny"), b"packed chunks live in the catalog")
        assert get(os.path.join(m.enc, "tiny")) == b"packed chunks live in the catalog"
    finally:
        for _ in gen:
            pass


def test_tampered_blobs_in_the_bucket_read_as_eio(seaweedfs, tmp_path):
    """The service can alter, truncate or swap blobs: every such read is EIO, never wrong
    bytes, and the other objects stay readable (no read cache, so reads hit the service)."""
    folder = str(tmp_path / "fs")
    path = write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                        extra=s3_store_yaml(seaweedfs, folder, cache_size=0))
    gen = mounted(path)
    m = next(gen)
    try:
        bucket = bucket_of(path)
        client = seaweedfs.client()
        names = ["flipped", "truncated", "swapped-a", "swapped-b", "intact"]
        data = {n: os.urandom(2 * CHUNK + 20000) for n in names}
        keys = {}
        for n in names:
            before = set(s3_objects(seaweedfs, bucket))
            put(os.path.join(m.enc, n), data[n])
            os.sync()
            keys[n] = sorted(set(s3_objects(seaweedfs, bucket)) - before)
            assert len(keys[n]) == 3, keys  # three chunks each (none packed), a blob each
        blobs = s3_objects(seaweedfs, bucket)
        first = keys["flipped"][0]
        body = bytearray(blobs[first])
        body[len(body) // 2] ^= 1
        client.put_object(Bucket=bucket, Key=first, Body=bytes(body))
        first = keys["truncated"][0]
        client.put_object(Bucket=bucket, Key=first, Body=blobs[first][:-100])
        a, b = keys["swapped-a"][0], keys["swapped-b"][0]
        client.put_object(Bucket=bucket, Key=a, Body=blobs[b])
        client.put_object(Bucket=bucket, Key=b, Body=blobs[a])
        m.expect_log(r"cannot read object|authentication|truncated|chunk")
        for n in names[:-1]:
            with pytest.raises(OSError) as exc:
                get(os.path.join(m.enc, n))
            assert exc.value.errno == errno.EIO, n
        assert get(os.path.join(m.enc, "intact")) == data["intact"]
    finally:
        for _ in gen:
            pass
