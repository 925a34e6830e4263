"""Object versions (cosfs.versions) through the filesystem layer and the key-level core.

No FUSE, no HTTP: a store opened in-process. Checks that writes on the mount and
PUTs by key make the versions COS makes (one per write session, a delete marker
per delete, ``null`` ids before versioning and while suspended), that every old
version reads back with the content and encryption it was written with, that
deleting versions for good promotes the newest remaining one, and that shared
blobs are only collected once no version uses them.
"""

import os

import pytest

from cosfs.errors import CosfsError

from helpers import ENC, PLAIN, Ctx, fs_env, tmp_path, trio_test  # noqa: F401
from t3_keyspace import body_of, fails, fails_sync, get, ino_of, ks_of


def enable(ks, bucket, status="Enabled"):
    ks.put_bucket_versioning(bucket, status.encode())


async def write_file(env, name, data, bucket=PLAIN):
    """create-or-truncate, write, close: one write session on the mount."""
    ino = ino_of(env, bucket, name)
    if ino is None:
        parent = env.bucket(bucket)
        *dirs, leaf = name.split("/")
        for d in dirs:
            child = env.catalog.lookup(parent, d.encode())
            if child is None:
                child = (await env.fs.mkdir(parent, d.encode(), 0o755, Ctx())).id
            parent = child
        fh, ino = await env.new_file(leaf, bucket, parent=parent)
    else:
        fh = await env.fs.open(ino, os.O_RDWR | os.O_TRUNC)
    await env.fs.write(fh, 0, data)
    await env.fs.flush(fh)
    await env.fs.release(fh)
    return ino


async def read_version(ks, bucket, key, vid):
    reader = await ks.open_version(bucket, key, vid)
    try:
        return await reader.read(0, reader.info.size + 1), reader.info
    finally:
        await reader.aclose()


def versions(ks, bucket, key=None, **kw):
    listing = ks.list_object_versions(bucket, prefix=key or "", **kw)
    return [(v.key, v.version_id, v.is_latest, v.is_delete_marker) for v in listing.versions
            if key is None or v.key == key]


@trio_test
async def test_unversioned_buckets_keep_nothing(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        assert b"<Status>" not in ks.get_bucket_versioning(PLAIN)
        await write_file(env, "a", b"one")
        await write_file(env, "a", b"two")
        assert versions(ks, PLAIN) == [("a", "null", True, False)]
        assert await ks.delete_object(PLAIN, "a") == (None, False)
        assert versions(ks, PLAIN) == []


@trio_test
async def test_one_write_session_one_version_and_old_ones_readable(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await write_file(env, "before", b"from before versioning")
        enable(ks, PLAIN)
        assert b"<Status>Enabled</Status>" in ks.get_bucket_versioning(PLAIN)
        await write_file(env, "before", b"first versioned")
        ino = await write_file(env, "doc", b"v1")
        # a session with fsyncs and several writes is still one version
        fh = await env.fs.open(ino, os.O_RDWR | os.O_TRUNC)
        await env.fs.write(fh, 0, b"v2-part")
        await env.fs.fsync(fh)
        await env.fs.write(fh, 7, b"-more")
        await env.fs.flush(fh)
        await env.fs.release(fh)
        got = versions(ks, PLAIN, "doc")
        assert [g[2] for g in got] == [True, False] and len(got) == 2
        assert await get(ks, PLAIN, "doc") == b"v2-part-more"
        old = got[1][1]
        data, info = await read_version(ks, PLAIN, "doc", old)
        assert data == b"v1"
        assert [g[1] for g in versions(ks, PLAIN, "before")][-1] == "null"
        data, _ = await read_version(ks, PLAIN, "before", "null")
        assert data == b"from before versioning"
        head = await ks.head_object(PLAIN, "doc")
        assert head.version_id == got[0][1]
        await fails("NoSuchVersion", ks.open_version(PLAIN, "doc", "nope"))


@trio_test
async def test_delete_markers_and_permanent_deletes_promote(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        enable(ks, PLAIN)
        await write_file(env, "d/k", b"one")
        await write_file(env, "d/k", b"two")
        ino = ino_of(env, PLAIN, "d/k")
        parent = ino_of(env, PLAIN, "d")
        await env.fs.unlink(parent, b"k")
        got = versions(ks, PLAIN, "d/k")
        assert [(g[2], g[3]) for g in got] == [(True, True), (False, False), (False, False)]
        await fails("NoSuchKey", ks.head_object(PLAIN, "d/k"))
        await fails("MethodNotAllowed", ks.open_version(PLAIN, "d/k", got[0][1]))
        # deleting the marker for good brings the newest content back under its name
        assert await ks.delete_object(PLAIN, "d/k", version_id=got[0][1]) == (got[0][1], True)
        assert await get(ks, PLAIN, "d/k") == b"two"
        assert ino_of(env, PLAIN, "d/k") not in (None, ino)
        # deleting the current version for good makes the older one current
        assert (await ks.delete_object(PLAIN, "d/k", version_id=got[1][1]))[1] is False
        assert await get(ks, PLAIN, "d/k") == b"one"
        assert versions(ks, PLAIN, "d/k") == [("d/k", got[2][1], True, False)]
        # a delete of a missing key still leaves a marker
        vid, marker = await ks.delete_object(PLAIN, "never")
        assert marker and versions(ks, PLAIN, "never") == [("never", vid, True, True)]


@trio_test
async def test_put_copy_rename_and_restore(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        enable(ks, ENC)
        a = await ks.put_object(ENC, "k", b"put one")
        b = await ks.put_object(ENC, "k", body_of(b"put ", b"two"))
        assert a.version_id != b.version_id and b.sse == "AES256"
        await ks.copy_object(ENC, "k", ENC, "k", src_version_id=a.version_id)
        assert await get(ks, ENC, "k") == b"put one"
        assert len(versions(ks, ENC, "k")) == 3
        # rename on the mount: a marker for the old key, a new version for the new one
        bucket = env.bucket(ENC)
        await env.fs.rename(bucket, b"k", bucket, b"moved")
        assert versions(ks, ENC, "k")[0][3] is True
        assert versions(ks, ENC, "moved")[0][2] is True
        assert await get(ks, ENC, "moved") == b"put one"
        # every version keeps the encryption it was written with
        for _, vid, _, marker in versions(ks, ENC, "k"):
            if not marker:
                _, info = await read_version(ks, ENC, "k", vid)
                assert info.sse == "AES256"


@trio_test
async def test_suspended_versioning_keeps_one_null_version(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        enable(ks, PLAIN)
        await write_file(env, "s", b"enabled-1")
        enable(ks, PLAIN, "Suspended")
        await write_file(env, "s", b"null-1")
        await write_file(env, "s", b"null-2")
        got = versions(ks, PLAIN, "s")
        assert [g[1] for g in got][0] == "null" and len(got) == 2
        assert await get(ks, PLAIN, "s") == b"null-2"
        fails_sync("MalformedXML", ks.put_bucket_versioning, PLAIN, b"Off")


@trio_test
async def test_shared_blobs_are_collected_only_when_unused(tmp_path):
    async with fs_env(tmp_path, chunk_size="64KiB") as env:
        ks = ks_of(env)
        enable(ks, PLAIN)
        big = os.urandom(200 * 1024)
        ino = await write_file(env, "big", big)
        # rewrite one chunk in place: the other chunks are shared with the old version
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 0, b"X" * 10)
        await env.fs.release(fh)
        await env.drain_gc()
        old = versions(ks, PLAIN, "big")[1][1]
        data, _ = await read_version(ks, PLAIN, "big", old)
        assert data == big
        assert (await get(ks, PLAIN, "big"))[:10] == b"X" * 10
        before = len(env.blobs())
        await ks.delete_object(PLAIN, "big", version_id=old)
        await env.drain_gc()
        assert len(env.blobs()) == before - 1  # only the replaced first chunk was its own
        assert (await get(ks, PLAIN, "big"))[10:] == big[10:]


@trio_test
async def test_listing_pages_and_bucket_delete(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        enable(ks, PLAIN)
        for i in range(3):
            await write_file(env, "p%d" % i, b"a")
            await write_file(env, "p%d" % i, b"b")
        await ks.delete_object(PLAIN, "p1")
        full = versions(ks, PLAIN)
        assert len(full) == 7
        seen, km, vm = [], None, None
        while True:
            page = ks.list_object_versions(PLAIN, key_marker=km, version_id_marker=vm,
                                           max_keys=2)
            seen += [(v.key, v.version_id, v.is_latest, v.is_delete_marker)
                     for v in page.versions]
            if not page.is_truncated:
                break
            km, vm = page.next_key_marker, page.next_version_id_marker
        assert seen == full
        # a bucket with versions left is not empty
        for i in range(3):
            parent = env.bucket(PLAIN)
            if ino_of(env, PLAIN, "p%d" % i):
                await env.fs.unlink(parent, b"p%d" % i)
        with pytest.raises(CosfsError) as ei:
            await env.fs.rmdir(1, PLAIN.encode())
        assert ei.value.code == "BucketNotEmpty"


# -- replication (cosfs.services.replication) driven by hand -----------------------------
DEST = "backup-" + PLAIN.rsplit("-", 1)[1]
DEST_ENC = "backup-enc-" + PLAIN.rsplit("-", 1)[1]


def rule_doc(dest, prefix="", region="ap-shanghai"):
    return ("<ReplicationConfiguration><Role>qcs::cam::uin/1:uin/1</Role><Rule><ID>r1</ID>"
            "<Status>Enabled</Status><Prefix>%s</Prefix><Destination><Bucket>qcs::cos:%s::%s"
            "</Bucket></Destination></Rule></ReplicationConfiguration>"
            % (prefix, region, dest)).encode()


def replicator(env):
    from cosfs.catalog import now_ns
    from cosfs.services.replication import Replicator
    rep = Replicator(ks_of(env), clock=lambda: now_ns() + 10 ** 12)
    env.fs.replication = rep
    return rep


@trio_test
async def test_replication_rules_are_checked(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        fails_sync("BucketVersionNotOpen", ks.put_bucket_replication, PLAIN, rule_doc(DEST))
        enable(ks, PLAIN)
        fails_sync("BucketVersionNotOpen", ks.put_bucket_replication, PLAIN, rule_doc(DEST))
        enable(ks, DEST)
        fails_sync("NoSuchBucket", ks.put_bucket_replication, PLAIN, rule_doc("nope-1250000000"))
        fails_sync("InvalidArgument", ks.put_bucket_replication, PLAIN,
                   rule_doc(DEST, region="ap-guangzhou"))
        fails_sync("MalformedXML", ks.put_bucket_replication, PLAIN, b"<Replication/>")
        fails_sync("ReplicationConfigurationNotFoundError", ks.get_bucket_replication, PLAIN)
        ks.put_bucket_replication(PLAIN, rule_doc(DEST))
        assert DEST.encode() in ks.get_bucket_replication(PLAIN)
        fails_sync("InvalidBucketState", ks.put_bucket_versioning, PLAIN, b"Suspended")
        ks.delete_bucket_replication(PLAIN)
        fails_sync("ReplicationConfigurationNotFoundError", ks.get_bucket_replication, PLAIN)


@trio_test
async def test_replication_copies_versions_and_markers(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        env.fs.create_bucket(DEST_ENC, region="ap-shanghai", encryption="AES256")
        await write_file(env, "old", b"written before the rule")
        for b in (PLAIN, ENC, DEST, DEST_ENC):
            enable(ks, b)
        ks.put_bucket_replication(PLAIN, rule_doc(DEST, prefix="docs/"))
        ks.put_bucket_replication(ENC, rule_doc(DEST_ENC))
        rep = replicator(env)
        await write_file(env, "docs/a", b"alpha")
        await write_file(env, "docs/a", b"alpha 2")
        await write_file(env, "notes/b", b"not matched")
        await ks.put_object(ENC, "secret", b"sealed")
        assert (await ks.head_object(PLAIN, "docs/a")).replication == "PENDING"
        assert (await ks.head_object(PLAIN, "notes/b")).replication is None
        assert env.catalog.replication_queue_length() == 3
        await rep.run_due()
        assert env.catalog.replication_queue_length() == 0
        head = await ks.head_object(PLAIN, "docs/a")
        assert head.replication == "COMPLETED"
        replica = await ks.head_object(DEST, "docs/a")
        assert replica.replication == "REPLICA" and replica.version_id == head.version_id
        assert await get(ks, DEST, "docs/a") == b"alpha 2"
        # both versions arrived, in order
        src_ids = [v[1] for v in versions(ks, PLAIN, "docs/a")]
        assert [v[1] for v in versions(ks, DEST, "docs/a")] == src_ids
        await fails("NoSuchKey", ks.head_object(DEST, "notes/b"))
        await fails("NoSuchKey", ks.head_object(DEST, "old"))
        assert (await ks.head_object(DEST_ENC, "secret")).sse == "AES256"
        # a delete replicates a delete marker; the replica's data stays as a version
        vid, _ = await ks.delete_object(PLAIN, "docs/a")
        await rep.run_due()
        got = versions(ks, DEST, "docs/a")
        assert got[0] == ("docs/a", vid, True, True) and len(got) == 3
        # replicas do not replicate again, and a rerun of a done copy changes nothing
        assert env.catalog.replication_queue_length() == 0


@trio_test
async def test_replication_encryption_rule_five(tmp_path):
    """Seed rule 5: plain sources get the destination default; encrypted ones keep theirs."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        env.fs.create_bucket(DEST_ENC, region="ap-shanghai", encryption="SM4")
        for b in (PLAIN, DEST, DEST_ENC):
            enable(ks, b)
        rep = replicator(env)
        expected = {}
        for dest in (DEST, DEST_ENC):
            ks.put_bucket_replication(PLAIN, rule_doc(dest))
            for sse in (None, "AES256"):
                key = "%s-%s" % (dest, sse)
                await ks.put_object(PLAIN, key, b"data", sse=sse)
                expected[(dest, key)] = sse or ("SM4" if dest == DEST_ENC else None)
            await rep.run_due()
            ks.delete_bucket_replication(PLAIN)
        for (dest, key), sse in expected.items():
            assert (await ks.head_object(dest, key)).sse == sse, (dest, key)
            assert await get(ks, dest, key) == b"data"


@trio_test
async def test_replication_failure_is_retried_then_failed(tmp_path):
    import cosfs.services.replication as replication
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        enable(ks, PLAIN)
        enable(ks, DEST)
        ks.put_bucket_replication(PLAIN, rule_doc(DEST))
        rep = replicator(env)
        now = [rep.clock()]
        rep.clock = lambda: now[0]
        # the destination path is a directory: the copy cannot be published
        await ks.put_object(DEST, "clash/inner", b"x")
        await ks.put_object(PLAIN, "clash", b"y")
        for _ in range(replication.MAX_ATTEMPTS):
            await rep.run_due()
            now[0] += int(2 * replication.RETRY_MAX * 1e9)
        assert (await ks.head_object(PLAIN, "clash")).replication == "FAILED"
        assert env.catalog.replication_queue_length() == 0
        assert rep.failed == 1 and "clash" in rep.last_error


@trio_test
async def test_a_reader_holding_the_file_does_not_merge_write_sessions(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        enable(ks, PLAIN)
        ino = await write_file(env, "f", b"v1")
        reader = await env.fs.open(ino, os.O_RDONLY)  # like tail -f
        try:
            await write_file(env, "f", b"v2")
            await write_file(env, "f", b"v3")
        finally:
            await env.fs.release(reader)
        contents = []
        for _, vid, _, _ in versions(ks, PLAIN, "f"):
            contents.append((await read_version(ks, PLAIN, "f", vid))[0])
        assert contents == [b"v3", b"v2", b"v1"]


@trio_test
async def test_a_replica_holds_committed_content_only(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        enable(ks, PLAIN)
        enable(ks, DEST)
        ks.put_bucket_replication(PLAIN, rule_doc(DEST))
        rep = replicator(env)
        ino = await write_file(env, "f", b"A" * 200_000)
        fh = await env.fs.open(ino, os.O_RDWR)  # a writer with buffers not committed yet
        await env.fs.write(fh, 70_000, b"B" * 100_000)
        await rep.run_due()
        assert await get(ks, DEST, "f") == b"A" * 200_000
        await env.fs.release(fh)  # its commit is a new version, copied in turn
        await rep.run_due()
        assert (await get(ks, DEST, "f"))[70_000:170_000] == b"B" * 100_000
        assert len(versions(ks, DEST, "f")) == 2


@trio_test
async def test_versions_of_one_key_replicate_in_order(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        env.fs.create_bucket(DEST, region="ap-shanghai")
        enable(ks, PLAIN)
        enable(ks, DEST)
        ks.put_bucket_replication(PLAIN, rule_doc(DEST))
        rep = replicator(env)
        await ks.put_object(PLAIN, "k", b"one")
        await ks.put_object(PLAIN, "k", b"two")
        await ks.put_object(PLAIN, "other", b"x")
        first = env.catalog.replication_tasks()[0]
        with env.catalog.transaction():  # the first version is being retried later
            env.catalog.delay_replication(first[0], 1, rep.clock() + 10 ** 15, "test")
        await rep.run_due()
        await get(ks, DEST, "other")
        await fails("NoSuchKey", ks.head_object(DEST, "k"))  # "two" waits for "one"
        with env.catalog.transaction():
            env.catalog.delay_replication(first[0], 1, 0, "test")
        await rep.run_due()
        assert await get(ks, DEST, "k") == b"two"
        assert [v[2] for v in versions(ks, DEST, "k")] == [True, False]
