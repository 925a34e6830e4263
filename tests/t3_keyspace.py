"""The key-level core (cosfs.keyspace) driven directly, without FUSE or HTTP.

Each test opens a fresh store with the two test buckets (``plain`` without a
default, ``enc`` with AES256) and checks COS object semantics: keys against
the tree, listings against a model of COS listing rules, metadata, ETags,
atomic replacement, copies and multipart uploads, and what reaches the store.
"""

import hashlib
import os
import random
import stat

import pytest
import trio

from cosfs.catalog import ROOT_INODE
from cosfs.errors import CosfsError, http_status
from cosfs.keyspace import EMPTY_MD5, MIN_PART_SIZE, KeySpace
from cosfs.xattrs import SSE_XATTR

from helpers import APPID, ENC, PLAIN, fs_env, tmp_path, trio_test  # noqa: F401

MiB = 1024 * 1024


def ks_of(env):
    return KeySpace(env.fs, env.objects, env.catalog)


async def fails(code, coro):
    """Await ``coro``; it must raise a CosfsError with COS ``code``. Returns the error."""
    with pytest.raises(CosfsError) as ei:
        await coro
    assert ei.value.code == code, "expected %s, got %s (%s)" % (code, ei.value.code, ei.value)
    return ei.value


def fails_sync(code, fn, *args, **kw):
    with pytest.raises(CosfsError) as ei:
        fn(*args, **kw)
    assert ei.value.code == code, "expected %s, got %s (%s)" % (code, ei.value.code, ei.value)
    return ei.value


async def body_of(*pieces):
    for p in pieces:
        await trio.sleep(0)
        yield p


async def get(ks, bucket, key):
    reader = await ks.open_object(bucket, key)
    try:
        return await reader.read(0, reader.info.size + 1)
    finally:
        await reader.aclose()


def ino_of(env, bucket, key):
    ino = env.bucket(bucket)
    for seg in key.rstrip("/").split("/"):
        ino = env.catalog.lookup(ino, seg.encode())
        if ino is None:
            return None
    return ino


async def read_on_mount(env, ino):
    fh = await env.fs.open(ino, os.O_RDONLY)
    try:
        return await env.fs.read(fh, 0, 1 << 30)
    finally:
        await env.fs.release(fh)


def store_holds(env, needle):
    """True if any file of the store folder (blobs, catalog, WAL) contains ``needle``."""
    for folder, _, files in os.walk(env.config.store):
        for f in files:
            with open(os.path.join(folder, f), "rb") as fp:
                if needle in fp.read():
                    return True
    return False


# -- buckets -------------------------------------------------------------------------------
@trio_test
async def test_buckets(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        assert [b.name for b in ks.list_buckets()] == [ENC, PLAIN]
        assert all(b.region == "ap-guangzhou" and b.created_ns > 0 for b in ks.list_buckets())
        fails_sync("NoSuchBucket", ks.bucket, "nope-" + APPID)
        new = await ks.create_bucket("photos-" + APPID, "ap-shanghai")
        assert new.name == "photos-" + APPID and new.region == "ap-shanghai"
        assert ks.bucket("photos-" + APPID) == new
        assert env.catalog.bucket_by_name("photos-" + APPID) is not None
        await fails("BucketAlreadyOwnedByYou", ks.create_bucket("photos-" + APPID, "ap-shanghai"))
        await fails("InvalidBucketName", ks.create_bucket("Bad_Name-" + APPID, "ap-shanghai"))
        await fails("InvalidBucketName", ks.create_bucket("photos-99", "ap-shanghai"))
        await fails("InvalidRegionName", ks.create_bucket("x-" + APPID, "ap-tokyo"))
        await fails("InvalidRegionName", ks.create_bucket("x-" + APPID, "Tokyo"))
        e = await fails("BucketAlreadyOwnedByYou", ks.create_bucket(ENC, "ap-guangzhou"))
        assert e.http_status == 409
        await ks.put_object("photos-" + APPID, "a", b"x")
        e = await fails("BucketNotEmpty", ks.delete_bucket("photos-" + APPID))
        assert http_status(e) == 409
        await ks.delete_object("photos-" + APPID, "a")
        await ks.delete_bucket("photos-" + APPID)
        await fails("NoSuchBucket", ks.delete_bucket("photos-" + APPID))
        assert env.catalog.lookup(ROOT_INODE, ("photos-" + APPID).encode()) is None


@trio_test
async def test_bucket_encryption(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        e = fails_sync("NoSuchEncryptionConfiguration", ks.get_bucket_encryption, PLAIN)
        assert e.http_status == 404
        assert b"AES256" in ks.get_bucket_encryption(ENC)
        doc = (b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
               b"<SSEAlgorithm>SM4</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
               b"</ServerSideEncryptionConfiguration>")
        await ks.put_bucket_encryption(PLAIN, doc)
        assert b"SM4" in ks.get_bucket_encryption(PLAIN)
        # the same record the bucket xattr shows
        assert b"SM4" in await env.fs.getxattr(env.bucket(PLAIN), b"user.cos.bucket-encryption")
        e = await fails("MalformedXML", ks.put_bucket_encryption(PLAIN, b"AES256"))
        assert e.http_status == 400
        await fails("MalformedXML", ks.put_bucket_encryption(PLAIN, b"<Nope/>"))
        assert b"SM4" in ks.get_bucket_encryption(PLAIN)
        await ks.delete_bucket_encryption(PLAIN)
        await ks.delete_bucket_encryption(PLAIN)  # none: no error
        fails_sync("NoSuchEncryptionConfiguration", ks.get_bucket_encryption, PLAIN)
        await fails("NoSuchBucket", ks.put_bucket_encryption("no-" + APPID, doc))


# -- objects -------------------------------------------------------------------------------
@trio_test
async def test_put_head_get_and_the_mount_agree(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        data = os.urandom(200 * 1024 + 17)  # several 64 KiB chunks and a tail
        info = await ks.put_object(PLAIN, "docs/2024/report.bin",
                                   body_of(data[:1000], data[1000:150000], data[150000:]),
                                   content_md5=hashlib.md5(data).digest())
        assert info.etag == hashlib.md5(data).hexdigest() and info.size == len(data)
        assert info.sse is None and not info.is_dir_marker
        head = await ks.head_object(PLAIN, "docs/2024/report.bin")
        assert (head.etag, head.size, head.key) == (info.etag, len(data), "docs/2024/report.bin")
        assert await get(ks, PLAIN, "docs/2024/report.bin") == data
        # on the mount at once: directories made as mkdir makes them, the file, its ETag
        ino = ino_of(env, PLAIN, "docs/2024/report.bin")
        inode = env.catalog.get_inode(ino)
        assert stat.S_IMODE(inode.mode) == 0o644 and inode.nlink == 1
        d = env.catalog.get_inode(ino_of(env, PLAIN, "docs"))
        assert d.is_dir and stat.S_IMODE(d.mode) == 0o755 and d.nlink == 3
        assert await read_on_mount(env, ino) == data
        assert await env.fs.getxattr(ino, b"user.cos.etag") == info.etag.encode()
        # and the other way: a file closed on the mount is an object
        fh, fino = await env.new_file("m.txt", parent=ino_of(env, PLAIN, "docs"))
        await env.fs.write(fh, 0, b"from the mount")
        await env.fs.release(fh)
        assert await get(ks, PLAIN, "docs/m.txt") == b"from the mount"
        assert (await ks.head_object(PLAIN, "docs/m.txt")).etag == \
            hashlib.md5(b"from the mount").hexdigest()
        await fails("NoSuchKey", ks.head_object(PLAIN, "docs/none"))
        e = await fails("NoSuchKey", ks.open_object(PLAIN, "docs"))
        assert e.http_status == 404
        await fails("NoSuchBucket", ks.head_object("nope-" + APPID, "x"))
        # an empty object
        info = await ks.put_object(PLAIN, "empty", b"")
        assert info.etag == EMPTY_MD5 and info.size == 0
        assert await get(ks, PLAIN, "empty") == b""


@trio_test
async def test_encryption_of_puts(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        secret = b"top secret payload " * 5000
        info = await ks.put_object(PLAIN, "s", secret, sse="AES256")
        assert info.sse == "AES256"
        ino = ino_of(env, PLAIN, "s")
        assert await env.fs.getxattr(ino, SSE_XATTR) == b"AES256"
        assert env.catalog.get_inode(ino).enc_request == "AES256"
        info = await ks.put_object(ENC, "d", secret)  # the bucket default
        assert info.sse == "AES256" and env.catalog.get_inode(ino_of(env, ENC, "d")).enc_request \
            is None
        assert (await ks.head_object(ENC, "d")).sse == "AES256"
        info = await ks.put_object(PLAIN, "sm4", b"x" * 10, sse="SM4")
        assert info.sse == "SM4"
        info = await ks.put_object(PLAIN, "kms", b"x" * 10, sse="cos/kms", kms_key_id="k1")
        assert info.sse == "cos/kms"
        info = await ks.put_object(ENC, "empty", b"")
        assert info.sse == "AES256"  # even an empty object, as COS does
        await fails("InvalidArgument", ks.put_object(PLAIN, "bad", b"x", sse="aes256"))
        await fails("InvalidArgument", ks.put_object(PLAIN, "bad", b"x", sse="AES256",
                                                     kms_key_id="k"))
        await fails("InvalidArgument", ks.put_object(PLAIN, "bad", b"x", kms_key_id="k"))
        await fails("NoSuchKey", ks.head_object(PLAIN, "bad"))
        assert await get(ks, PLAIN, "s") == secret
        await env.objects.commit_all()
        assert not store_holds(env, b"top secret payload top secret")


@trio_test
async def test_metadata_round_trip(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        meta = {"Color": "blue", "x-y-1": "caf\u00e9"}
        headers = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-cache",
                   "content-disposition": "attachment", "content-encoding": "gzip",
                   "expires": "Thu, 01 Dec 2030 16:00:00 GMT"}
        info = await ks.put_object(PLAIN, "m", b"data", meta=meta, headers=headers)
        assert info.meta == {"color": "blue", "x-y-1": "caf\u00e9"}
        assert info.headers == headers
        head = await ks.head_object(PLAIN, "m")
        assert head.meta == info.meta and head.headers == headers
        ino = ino_of(env, PLAIN, "m")
        assert await env.fs.getxattr(ino, b"user.color") == b"blue"
        assert await env.fs.getxattr(ino, b"user.mime_type") == b"text/plain; charset=utf-8"
        assert await env.fs.getxattr(ino, b"user.http.cache-control") == b"no-cache"
        # an xattr set on the mount is metadata if its name is a metadata name
        await env.fs.setxattr(ino, b"user.owner-team", b"infra")
        await env.fs.setxattr(ino, b"user.Not_Meta", b"x")
        await env.fs.setxattr(ino, b"user.bin", b"\xff\xfe")
        head = await ks.head_object(PLAIN, "m")
        assert head.meta == {"color": "blue", "x-y-1": "caf\u00e9", "owner-team": "infra"}
        # a PUT replaces all metadata: the new object has only what it was given
        info = await ks.put_object(PLAIN, "m", b"data2", meta={"a": "1"})
        assert info.meta == {"a": "1"} and info.headers == {}
        assert await env.fs.listxattr(ino_of(env, PLAIN, "m")) == [b"user.a"]
        for bad in ({"under_score": "x"}, {"dot.ted": "x"}, {"": "x"}, {"cos.x": "y"}):
            await fails("InvalidArgument", ks.put_object(PLAIN, "bad", b"x", meta=bad))
        await fails("InvalidArgument", ks.put_object(PLAIN, "bad", b"x",
                                                     headers={"x-custom": "v"}))
        await fails("MetadataTooLarge", ks.put_object(PLAIN, "bad", b"x", meta={"a": "v" * 2049}))
        await fails("MetadataTooLarge", ks.put_object(
            PLAIN, "bad", b"x", meta={"k%d" % i: "v" * 1000 for i in range(5)}))
        await fails("NoSuchKey", ks.head_object(PLAIN, "bad"))


@trio_test
async def test_wrong_md5_leaves_the_old_object(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        old = os.urandom(150 * 1024)
        await ks.put_object(PLAIN, "k", old, meta={"v": "1"})
        ino = ino_of(env, PLAIN, "k")
        inodes = env.catalog.inode_count()
        new = os.urandom(300 * 1024)
        e = await fails("BadDigest", ks.put_object(PLAIN, "k", body_of(new[:100], new[100:]),
                                                   content_md5=hashlib.md5(b"other").digest()))
        assert e.http_status == 400
        assert ino_of(env, PLAIN, "k") == ino
        assert await get(ks, PLAIN, "k") == old
        assert (await ks.head_object(PLAIN, "k")).meta == {"v": "1"}
        assert env.catalog.inode_count() == inodes  # the draft is gone
        await fails("InvalidDigest", ks.put_object(PLAIN, "k", new, content_md5=b"short"))
        # a new key with a wrong digest: no object and no directory left behind
        await fails("BadDigest", ks.put_object(PLAIN, "newdir/x", new,
                                               content_md5=hashlib.md5(b"o").digest()))
        assert ino_of(env, PLAIN, "newdir") is None
        await env.objects.commit_all()
        await env.drain_gc()
        assert not store_holds(env, new[:4096])


@trio_test
async def test_replacement_is_atomic_and_readers_keep_their_version(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        v1 = os.urandom(300 * 1024)
        v2 = os.urandom(100 * 1024)
        await ks.put_object(PLAIN, "a/k", v1)
        ino = ino_of(env, PLAIN, "a/k")
        await env.fs.setattr(ino, mode=0o600)
        reader = await ks.open_object(PLAIN, "a/k")
        await ks.put_object(PLAIN, "a/k", v2)
        new = env.catalog.get_inode(ino_of(env, PLAIN, "a/k"))
        assert new.id != ino and stat.S_IMODE(new.mode) == 0o600  # the old mode kept
        assert await reader.read(0, len(v1)) == v1
        assert env.catalog.get_inode(ino).nlink == 0  # nameless, kept for the reader
        await reader.aclose()
        with pytest.raises(CosfsError):
            env.catalog.get_inode(ino)  # purged once the reader let go
        assert await get(ks, PLAIN, "a/k") == v2


@trio_test
async def test_the_kernel_is_told_about_created_replaced_and_removed_names(tmp_path):
    async with fs_env(tmp_path) as env:
        told = []
        ks = KeySpace(env.fs, env.objects, env.catalog,
                      invalidate_entry=lambda parent, name: told.append((parent, name)))
        await ks.put_object(PLAIN, "d/caf\uf7e9", b"1")
        d = ino_of(env, PLAIN, "d")
        # new names too: the kernel may hold a negative entry for them
        assert told == [(env.bucket(PLAIN), b"d"), (d, b"caf\xe9")]
        del told[:]
        await ks.put_object(PLAIN, "d/caf\uf7e9", b"2")
        await ks.delete_object(PLAIN, "d/caf\uf7e9")  # d/ existed only for it: it goes too
        await ks.delete_object(PLAIN, "d/")
        assert sorted(told) == sorted([(d, b"caf\xe9"), (d, b"caf\xe9"),
                                       (env.bucket(PLAIN), b"d")])


@trio_test
async def test_two_writers_of_one_key_never_mix(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        a, b = b"A" * (200 * 1024), b"B" * (260 * 1024)

        async def slow(data):
            for i in range(0, len(data), 10000):
                await trio.sleep(0.001)
                yield data[i:i + 10000]

        async with trio.open_nursery() as n:
            n.start_soon(ks.put_object, PLAIN, "race", slow(a))
            n.start_soon(ks.put_object, PLAIN, "race", slow(b))
        assert await get(ks, PLAIN, "race") in (a, b)
        assert len([1 for _ in env.catalog.list_dir(env.bucket(PLAIN))]) == 1


@trio_test
async def test_cancelled_put_leaves_nothing(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        inodes = env.catalog.inode_count()

        async def endless():
            while True:
                yield b"x" * 50000
                await trio.sleep(0)

        with trio.move_on_after(0.2):
            await ks.put_object(PLAIN, "dir/never", endless())
        assert ino_of(env, PLAIN, "dir") is None
        assert env.catalog.inode_count() == inodes
        assert env.catalog.unlinked_inodes() == []


@trio_test
async def test_a_put_whose_encryption_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    """An upload's part is written with the encryption fixed at Initiate; if that cannot be
    set up (here: a failing key), the nameless inode must not stay behind, held open."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        upload = await ks.create_upload(PLAIN, "big", sse="AES256")
        inodes = env.catalog.inode_count()

        def broken(ino, spec, crypt=None):
            raise CosfsError("no data key", code="KeyUnavailable")
        monkeypatch.setattr(env.objects, "begin_with", broken)
        with pytest.raises(CosfsError):
            await ks.upload_part(PLAIN, "big", upload, 1, b"x" * 1000)
        assert env.catalog.inode_count() == inodes
        assert env.catalog.unlinked_inodes() == []
        assert not [s for s in env.objects.states.values() if s.open_count]


# -- keys and the tree --------------------------------------------------------------------
@trio_test
async def test_a_failed_purge_after_the_name_keeps_the_new_object(tmp_path, monkeypatch):
    """Once a PUT has named its object, a failure to purge what it replaced (a full
    catalog) must not take the new object with it: the PUT succeeds, the old one goes
    at the next purge."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await ks.put_object(ENC, "k", b"old")
        old = ino_of(env, ENC, "k")
        real = env.objects.forget_object

        def full(inode):
            monkeypatch.setattr(env.objects, "forget_object", real)
            raise CosfsError("the catalog is full", code="InternalError")
        monkeypatch.setattr(env.objects, "forget_object", full)
        await ks.put_object(ENC, "k", b"new")
        assert await get(ks, ENC, "k") == b"new"
        assert old in env.catalog.unlinked_inodes()
        env.fs.purge_unlinked()
        assert env.catalog.unlinked_inodes() == []
        assert await get(ks, ENC, "k") == b"new"


@trio_test
async def test_announced_part_sizes_beyond_cos_limits_are_ignored(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        uid = await ks.create_upload(ENC, "k")
        parts = [part_bytes(1), b"end"]
        listed = [(n, await ks.upload_part(ENC, "k", uid, n, body_of(p), size=1 << 62))
                  for n, p in enumerate(parts, 1)]
        await ks.complete_upload(ENC, "k", uid, listed)
        assert await get(ks, ENC, "k") == b"".join(parts)


@trio_test
async def test_keys_the_tree_cannot_hold(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        refused = {
            "": "InvalidObjectName", "/a": "InvalidObjectName", "a//b": "InvalidObjectName",
            "a/./b": "InvalidObjectName", "a/../b": "InvalidObjectName", ".": "InvalidObjectName",
            "..": "InvalidObjectName", "a\x00b": "InvalidObjectName",
            "a\x1bb": "InvalidObjectName", "bad\udcff": "InvalidObjectName",
            "\uf7c3\uf7a9": "InvalidObjectName",  # escaped bytes spelling UTF-8 "é"
            "k" * 851: "KeyTooLong", "a/" + "s" * 256: "KeyTooLong",
        }
        for key, code in refused.items():
            e = await fails(code, ks.put_object(PLAIN, key, b"x"))
            assert e.http_status == 400
            await fails(code, ks.head_object(PLAIN, key))
        assert env.catalog.list_dir(env.bucket(PLAIN)) == []
        # the longest keys that fit
        longest = ("s" * 200 + "/") * 4 + "t" * 46
        assert len(longest) == 850
        await ks.put_object(PLAIN, longest, b"x")
        await fails("KeyTooLong", ks.put_object(PLAIN, longest + "t", b"x"))
        await fails("KeyTooLong", ks.put_object(PLAIN, longest + "/", b""))
        await ks.put_object(PLAIN, "d/" + "s" * 255, b"x")
        # an escaped byte is a Latin-1 name on the mount
        await ks.put_object(PLAIN, "caf\uf7e9", b"latin")
        assert env.catalog.lookup(env.bucket(PLAIN), "caf\uf7e9".encode()) is not None
        assert any(n == b"caf\xe9" for n, *_ in env.fs.readdir(
            await env.fs.opendir(env.bucket(PLAIN)), 2))


@trio_test
async def test_conflicts_between_keys(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await ks.put_object(PLAIN, "a", b"file a")
        e = await fails("PathConflict", ks.put_object(PLAIN, "a/b", b"x"))
        assert e.http_status == 409
        await fails("PathConflict", ks.put_object(PLAIN, "a/", b""))
        await fails("PathConflict", ks.create_upload(PLAIN, "a/b"))
        await ks.put_object(PLAIN, "d/x", b"x")
        await fails("PathConflict", ks.put_object(PLAIN, "d", b"x"))
        await ks.put_object(PLAIN, "e/", b"")
        await fails("PathConflict", ks.put_object(PLAIN, "e", b"x"))
        # a symlink on the mount is no object: not readable, not replaceable, not deletable
        await env.fs.symlink(env.bucket(PLAIN), b"ln", b"a", env_ctx())
        await fails("NoSuchKey", ks.head_object(PLAIN, "ln"))
        await fails("PathConflict", ks.put_object(PLAIN, "ln", b"x"))
        await ks.delete_object(PLAIN, "ln")
        assert ino_of(env, PLAIN, "ln") is not None
        assert await get(ks, PLAIN, "a") == b"file a"
        assert [c.key for c in ks.list_objects(PLAIN).contents] == ["a", "d/x", "e/"]


def env_ctx():
    from cosfs.filesystem import Ctx
    return Ctx()


@trio_test
async def test_directory_markers(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        info = await ks.put_object(PLAIN, "photos/2024/", b"", meta={"k": "v"},
                                   content_md5=hashlib.md5(b"").digest())
        assert info.is_dir_marker and info.size == 0 and info.etag == EMPTY_MD5
        ino = ino_of(env, PLAIN, "photos/2024")
        assert env.catalog.get_inode(ino).is_dir
        head = await ks.head_object(PLAIN, "photos/2024/")
        assert head.is_dir_marker and head.meta == {"k": "v"}
        await fails("NoSuchKey", ks.head_object(PLAIN, "photos/"))  # not empty: no marker
        await fails("NoSuchKey", ks.head_object(PLAIN, "photos/2024"))
        await ks.put_object(PLAIN, "photos/2024/", b"")  # again: nothing changes
        await fails("InvalidArgument", ks.put_object(PLAIN, "photos/x/", b"data"))
        await fails("InvalidArgument", ks.put_object(PLAIN, "photos/x/", body_of(b"", b"d")))
        assert ino_of(env, PLAIN, "photos/x") is None
        await fails("BadDigest", ks.put_object(PLAIN, "photos/y/", b"",
                                               content_md5=hashlib.md5(b"z").digest()))
        assert [c.key for c in ks.list_objects(PLAIN).contents] == ["photos/2024/"]
        assert await get(ks, PLAIN, "photos/2024/") == b""
        # deleting: a non-empty directory has no marker; an empty one goes
        await ks.put_object(PLAIN, "photos/2024/a.jpg", b"jpg")
        await ks.delete_object(PLAIN, "photos/2024/")
        assert ino_of(env, PLAIN, "photos/2024") == ino
        await ks.delete_object(PLAIN, "photos/2024/a.jpg")
        await ks.delete_object(PLAIN, "photos/2024/a.jpg")  # missing: no error
        await ks.delete_object(PLAIN, "no/such/key")
        assert [c.key for c in ks.list_objects(PLAIN).contents] == ["photos/2024/"]
        await ks.delete_object(PLAIN, "photos/2024/")
        assert ino_of(env, PLAIN, "photos/2024") is None
        # photos/ was only there for photos/2024/ (COS has no such object): it goes too
        assert ino_of(env, PLAIN, "photos") is None
        assert ks.list_objects(PLAIN).contents == []


# -- listing ----------------------------------------------------------------------------------
TRICKY = ["a", "a-b", "a.b", "a0", "ab/c", "b/a-b", "b/a.b", "b/a/b", "b/a/c/", "b/a0",
          "b/\u00e9t\u00e9", "b/\u4e2d\u6587/x", "c/d/e/f", "c/d-e", "c/d.e/x", "c/d/", "z",
          "\u00e9", "e/", "a b", "a!", "b/a-/x", "b/a./y"]


def model_listing(keys, prefix="", delimiter=None, marker=None, max_keys=1000):
    """COS listing rules over a sorted set of keys (the reference for the walk)."""
    enc = sorted(keys, key=lambda k: k.encode())
    entries = []
    for k in enc:
        if not k.startswith(prefix):
            continue
        entry = (k, False)
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                entry = (k[:i + len(delimiter)], True)
        if marker is not None and entry[0].encode() <= marker.encode():
            continue
        if entries and entries[-1] == entry:
            continue
        entries.append(entry)
    page = entries[:max_keys]
    return ([k for k, p in page if not p], [k for k, p in page if p], len(entries) > max_keys)


async def tricky_tree(ks):
    for key in TRICKY:
        await ks.put_object(PLAIN, key, b"" if key.endswith("/") else key.encode())


def model_keys():
    """What the tree lists: directories with content have no marker of their own."""
    keys = set(TRICKY)
    return {k for k in keys if not (k.endswith("/") and any(
        o != k and o.startswith(k) for o in keys))}


@trio_test
async def test_listing_order_and_options(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await tricky_tree(ks)
        keys = model_keys()
        full = ks.list_objects(PLAIN)
        assert [c.key for c in full.contents] == model_listing(keys)[0]
        assert [c.key for c in full.contents][:6] == ["a", "a b", "a!", "a-b", "a.b", "a0"]
        assert not full.is_truncated and full.next_marker is None
        by_key = {c.key: c for c in full.contents}
        assert by_key["a-b"].size == 3 and by_key["a-b"].etag == hashlib.md5(b"a-b").hexdigest()
        assert by_key["e/"].is_dir_marker
        cands = ["", "a", "b/", "b/a", "c/d", "\u00e9", "zz", "b/a/"]
        markers = [None, "a", "a-b", "b/a", "b/a/", "b/a/b", "c/d/", "c", "\u00e9", "0"]
        for prefix in cands:
            for delimiter in (None, "/", "-", "a/", "."):
                for marker in markers:
                    got = ks.list_objects(PLAIN, prefix=prefix, delimiter=delimiter,
                                          marker=marker)
                    want = model_listing(keys, prefix, delimiter, marker)
                    assert ([c.key for c in got.contents], got.common_prefixes,
                            got.is_truncated) == want, (prefix, delimiter, marker)


@trio_test
async def test_listing_pages(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await tricky_tree(ks)
        keys = model_keys()
        for prefix, delimiter in (("", None), ("", "/"), ("b/", "/"), ("", "-"), ("c", None)):
            c_all, p_all, _ = model_listing(keys, prefix, delimiter)
            for size in (1, 2, 3, 7):
                got_c, got_p, marker, pages = [], [], None, 0
                while True:
                    page = ks.list_objects(PLAIN, prefix=prefix, delimiter=delimiter,
                                           marker=marker, max_keys=size)
                    assert len(page.contents) + len(page.common_prefixes) <= size
                    got_c += [c.key for c in page.contents]
                    got_p += page.common_prefixes
                    pages += 1
                    if not page.is_truncated:
                        assert page.next_marker is None
                        break
                    marker = page.next_marker
                assert (got_c, got_p) == (c_all, p_all), (prefix, delimiter, size)
        empty = ks.list_objects(PLAIN, max_keys=0)
        assert empty.contents == [] and not empty.is_truncated
        assert len(ks.list_objects(PLAIN, max_keys=5000).contents) == len(keys)
        with pytest.raises(CosfsError) as ei:
            ks.list_objects(PLAIN, max_keys=-1)
        assert ei.value.code == "InvalidArgument"
        fails_sync("NoSuchBucket", ks.list_objects, "no-" + APPID)


@trio_test
async def test_listing_is_lazy(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        for i in range(300):
            await ks.put_object(PLAIN, "big/%04d" % i, b"")
        await ks.put_object(PLAIN, "small", b"")
        calls = []
        real = env.catalog.list_dir

        def counting(parent, after=None, limit=None):
            rows = real(parent, after=after, limit=limit)
            calls.append(len(rows))
            return rows

        env.catalog.list_dir = counting
        try:
            page = ks.list_objects(PLAIN, max_keys=2)
            assert [c.key for c in page.contents] == ["big/0000", "big/0001"]
            assert sum(calls) < 40
            calls.clear()
            page = ks.list_objects(PLAIN, marker="big/0297", max_keys=5)
            assert [c.key for c in page.contents] == ["big/0298", "big/0299", "small"]
            assert sum(calls) < 40  # seeks to the marker, does not scan from the start
            calls.clear()
            page = ks.list_objects(PLAIN, delimiter="/")
            assert page.common_prefixes == ["big/"] and sum(calls) < 40  # not walked into
        finally:
            env.catalog.list_dir = real


@trio_test
async def test_fill_etags_of_mount_written_objects(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        fh, ino = await env.new_file("m")
        await env.fs.write(fh, 0, b"mount data")
        await env.fs.release(fh)
        listing = ks.list_objects(PLAIN)
        assert listing.contents[0].etag == ""
        listing = await ks.fill_etags(PLAIN, listing)
        assert listing.contents[0].etag == hashlib.md5(b"mount data").hexdigest()
        assert ks.list_objects(PLAIN).contents[0].etag == listing.contents[0].etag  # cached


# -- copy ---------------------------------------------------------------------------------------
@trio_test
async def test_copy(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        data = os.urandom(180 * 1024)
        await ks.put_object(ENC, "src", data, meta={"a": "1"}, headers={"content-type": "x/y"})
        # to a plain bucket: the destination default applies (COS carries no SSE over)
        info = await ks.copy_object(ENC, "src", PLAIN, "dst/copy")
        assert info.sse is None and info.etag == hashlib.md5(data).hexdigest()
        assert info.meta == {"a": "1"} and info.headers == {"content-type": "x/y"}
        assert await get(ks, PLAIN, "dst/copy") == data
        info = await ks.copy_object(ENC, "src", PLAIN, "c2", sse="SM4", replace_metadata=True,
                                    meta={"b": "2"})
        assert info.sse == "SM4" and info.meta == {"b": "2"} and info.headers == {}
        assert await get(ks, PLAIN, "c2") == data
        await fails("NoSuchKey", ks.copy_object(ENC, "none", PLAIN, "c3"))
        await fails("InvalidArgument", ks.copy_object(ENC, "src", PLAIN, "c3", sse="bad"))
        await fails("InvalidArgument", ks.copy_object(ENC, "src", PLAIN, "dir/"))
        await fails("NoSuchKey", ks.head_object(PLAIN, "c3"))


@trio_test
async def test_copy_onto_itself(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        data = b"re-encrypt me " * 20000
        await ks.put_object(PLAIN, "k", data, meta={"a": "1"})
        ino = ino_of(env, PLAIN, "k")
        e = await fails("InvalidRequest", ks.copy_object(PLAIN, "k", PLAIN, "k"))
        assert e.http_status == 400
        blobs = {c.blob for c in env.catalog.chunks(ino)}
        info = await ks.copy_object(PLAIN, "k", PLAIN, "k", sse="AES256")
        assert info.sse == "AES256" and info.meta == {"a": "1"}
        assert ino_of(env, PLAIN, "k") == ino  # in place, as the xattr does it
        assert await env.fs.getxattr(ino, SSE_XATTR) == b"AES256"
        assert not blobs & {c.blob for c in env.catalog.chunks(ino)}
        assert await get(ks, PLAIN, "k") == data
        # new metadata only: the encryption stays
        info = await ks.copy_object(PLAIN, "k", PLAIN, "k", replace_metadata=True,
                                    meta={"b": "2"})
        assert info.sse == "AES256" and info.meta == {"b": "2"}
        assert await get(ks, PLAIN, "k") == data


# -- multipart ------------------------------------------------------------------------------------
def part_bytes(n, size=MIN_PART_SIZE):
    rnd = random.Random(n)
    return rnd.randbytes(size)


@trio_test
async def test_multipart_upload(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await ks.put_object(PLAIN, "big", b"old")
        uid = await ks.create_upload(PLAIN, "big", meta={"m": "v"},
                                     headers={"content-type": "a/b"})
        p1, p2, p3 = part_bytes(1), part_bytes(2), b"tail of it"
        e3 = await ks.upload_part(PLAIN, "big", uid, 3, p3)
        e1 = await ks.upload_part(PLAIN, "big", uid, 1, body_of(p1[:1000], p1[1000:]))
        e2 = await ks.upload_part(PLAIN, "big", uid, 2, b"wrong content of part 2")
        e2 = await ks.upload_part(PLAIN, "big", uid, 2, p2,
                                  content_md5=hashlib.md5(p2).digest())  # replaces it
        assert (e1, e2, e3) == tuple(hashlib.md5(p).hexdigest() for p in (p1, p2, p3))
        await fails("BadDigest", ks.upload_part(PLAIN, "big", uid, 4, b"x",
                                                content_md5=hashlib.md5(b"y").digest()))
        for n in (0, 10001, -1):
            await fails("InvalidArgument", ks.upload_part(PLAIN, "big", uid, n, b"x"))
        await fails("NoSuchUpload", ks.upload_part(PLAIN, "big", "nope", 1, b"x"))
        await fails("NoSuchUpload", ks.upload_part(PLAIN, "other", uid, 1, b"x"))
        listed = ks.list_parts(PLAIN, "big", uid)
        assert [(p.number, p.etag, p.size) for p in listed.parts] == \
            [(1, e1, len(p1)), (2, e2, len(p2)), (3, e3, len(p3))]
        assert not listed.is_truncated
        page = ks.list_parts(PLAIN, "big", uid, marker=1, max_parts=1)
        assert [p.number for p in page.parts] == [2] and page.is_truncated and \
            page.next_marker == 2
        # parts are not objects: nothing new on the mount or in listings
        assert [c.key for c in ks.list_objects(PLAIN).contents] == ["big"]
        assert await get(ks, PLAIN, "big") == b"old"
        # wrong completions change nothing
        await fails("InvalidPart", ks.complete_upload(PLAIN, "big", uid, [(1, e2), (2, e2)]))
        await fails("InvalidPart", ks.complete_upload(PLAIN, "big", uid, [(1, e1), (5, e1)]))
        await fails("InvalidPartOrder", ks.complete_upload(PLAIN, "big", uid,
                                                           [(2, e2), (1, e1)]))
        await fails("MalformedXML", ks.complete_upload(PLAIN, "big", uid, []))
        info = await ks.complete_upload(PLAIN, "big", uid,
                                        [(1, '"%s"' % e1), (2, e2.upper()), (3, e3)])
        want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in (p1, p2, p3))).hexdigest()
        assert info.etag == want + "-3" and info.size == len(p1) + len(p2) + len(p3)
        assert info.meta == {"m": "v"} and info.headers == {"content-type": "a/b"}
        assert await get(ks, PLAIN, "big") == p1 + p2 + p3
        assert (await ks.head_object(PLAIN, "big")).etag == want + "-3"
        ino = ino_of(env, PLAIN, "big")
        assert await env.fs.getxattr(ino, b"user.cos.etag") == (want + "-3").encode()
        # the upload and its parts are gone
        fails_sync("NoSuchUpload", ks.list_parts, PLAIN, "big", uid)
        await fails("NoSuchUpload", ks.abort_upload(PLAIN, "big", uid))
        assert ks.list_uploads(PLAIN).uploads == []
        assert env.catalog.upload_parts(uid) == []
        assert env.catalog.unlinked_inodes() == []
        # changed on the mount: a plain MD5 again
        fh = await env.fs.open(ino, os.O_WRONLY)
        await env.fs.write(fh, 0, b"X")
        await env.fs.release(fh)
        new = b"X" + (p1 + p2 + p3)[1:]
        assert await env.fs.getxattr(ino, b"user.cos.etag") == \
            hashlib.md5(new).hexdigest().encode()


@trio_test
async def test_multipart_errors_and_abort(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        uid = await ks.create_upload(PLAIN, "k")
        small = b"small part"
        e1 = await ks.upload_part(PLAIN, "k", uid, 1, small)
        e2 = await ks.upload_part(PLAIN, "k", uid, 2, b"last")
        e = await fails("EntityTooSmall", ks.complete_upload(PLAIN, "k", uid,
                                                             [(1, e1), (2, e2)]))
        assert e.http_status == 400
        info = await ks.complete_upload(PLAIN, "k", uid, [(1, e1)])  # one small part is fine
        assert info.size == len(small) and info.etag.endswith("-1")
        await fails("InvalidArgument", ks.create_upload(PLAIN, "dir/"))
        await fails("InvalidArgument", ks.create_upload(PLAIN, "x", sse="nope"))
        await fails("InvalidArgument", ks.create_upload(PLAIN, "x", meta={"a_b": "1"}))
        await fails("NoSuchBucket", ks.create_upload("no-" + APPID, "x"))
        inodes = env.catalog.inode_count()
        uid = await ks.create_upload(PLAIN, "gone")
        await ks.upload_part(PLAIN, "gone", uid, 1, part_bytes(7))
        await ks.upload_part(PLAIN, "gone", uid, 2, b"b")
        e = await fails("BucketNotEmpty", ks.delete_bucket(PLAIN))
        await ks.delete_object(PLAIN, "k")
        await fails("BucketNotEmpty", ks.delete_bucket(PLAIN))
        await ks.abort_upload(PLAIN, "gone", uid)
        await fails("NoSuchUpload", ks.abort_upload(PLAIN, "gone", uid))
        e = await fails("NoSuchUpload", ks.complete_upload(PLAIN, "gone", uid, [(1, "x")]))
        assert e.http_status == 404
        await fails("NoSuchUpload", ks.upload_part(PLAIN, "gone", uid, 3, b"x"))
        assert env.catalog.inode_count() == inodes - 1  # "k" is gone too
        await fails("NoSuchKey", ks.head_object(PLAIN, "gone"))
        await ks.delete_bucket(PLAIN)


@trio_test
async def test_list_uploads(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        ids = {}
        for key in ("b", "a/1", "a/2", "a-x", "a", "b"):
            ids.setdefault(key, []).append(await ks.create_upload(PLAIN, key))
        got = ks.list_uploads(PLAIN)
        assert [u.key for u in got.uploads] == ["a", "a-x", "a/1", "a/2", "b", "b"]
        assert [u.upload_id for u in got.uploads if u.key == "b"] == ids["b"]  # by initiation
        assert not got.is_truncated and got.common_prefixes == []
        got = ks.list_uploads(PLAIN, delimiter="/")
        assert [u.key for u in got.uploads] == ["a", "a-x", "b", "b"]
        assert got.common_prefixes == ["a/"]
        got = ks.list_uploads(PLAIN, prefix="a/")
        assert [u.key for u in got.uploads] == ["a/1", "a/2"]
        got = ks.list_uploads(PLAIN, key_marker="a/1")
        assert [u.key for u in got.uploads] == ["a/2", "b", "b"]
        got = ks.list_uploads(PLAIN, key_marker="b", upload_id_marker=ids["b"][0])
        assert [u.upload_id for u in got.uploads] == [ids["b"][1]]
        # pages
        seen, km, im = [], None, None
        while True:
            page = ks.list_uploads(PLAIN, key_marker=km, upload_id_marker=im, max_uploads=2,
                                   delimiter="/")
            seen += sorted([u.key for u in page.uploads] + page.common_prefixes,
                           key=lambda k: k.encode())
            if not page.is_truncated:
                break
            km, im = page.next_key_marker, page.next_upload_id_marker
        assert seen == ["a", "a-x", "a/", "b", "b"]
        assert ks.list_uploads(ENC).uploads == []


@trio_test
async def test_upload_part_copy(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        src = part_bytes(3, MIN_PART_SIZE + 5000)
        await ks.put_object(ENC, "src", src)
        uid = await ks.create_upload(PLAIN, "dst")
        c1 = await ks.upload_part_copy(PLAIN, "dst", uid, 1, ENC, "src",
                                       range=(0, MIN_PART_SIZE))
        etag, mtime = c1
        assert etag == hashlib.md5(src[:MIN_PART_SIZE]).hexdigest() and mtime > 0
        c2 = await ks.upload_part_copy(PLAIN, "dst", uid, 2, ENC, "src",
                                       range_=(MIN_PART_SIZE, len(src)))
        await fails("InvalidRange", ks.upload_part_copy(PLAIN, "dst", uid, 3, ENC, "src",
                                                        range=(10, len(src) + 1)))
        await fails("NoSuchKey", ks.upload_part_copy(PLAIN, "dst", uid, 3, ENC, "none"))
        c3 = await ks.upload_part_copy(PLAIN, "dst", uid, 3, ENC, "src")
        assert c3.etag == hashlib.md5(src).hexdigest()
        info = await ks.complete_upload(PLAIN, "dst", uid, [(1, c1.etag), (2, c2.etag)])
        assert await get(ks, PLAIN, "dst") == src and info.sse is None


@trio_test
async def test_multipart_parts_are_sealed_and_survive_a_restart(tmp_path):
    secret = b"MULTIPART-PLAINTEXT-" * (MIN_PART_SIZE // 20 + 1)
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        cfg = env.config
        uid = await ks.create_upload(PLAIN, "sealed/obj", sse="AES256")
        uid2 = await ks.create_upload(ENC, "by-default")
        await ks.put_bucket_encryption(ENC, b"<ServerSideEncryptionConfiguration><Rule>"
                                       b"<ApplyServerSideEncryptionByDefault><SSEAlgorithm>SM4"
                                       b"</SSEAlgorithm></ApplyServerSideEncryptionByDefault>"
                                       b"</Rule></ServerSideEncryptionConfiguration>")
        e1 = await ks.upload_part(PLAIN, "sealed/obj", uid, 1, secret)
        await ks.upload_part(ENC, "by-default", uid2, 1, secret[:1000])
        await env.objects.commit_all()
        assert not store_holds(env, b"MULTIPART-PLAINTEXT-MULTIPART")
    async with fs_env(tmp_path, reopen_config=cfg) as env:
        env.fs.purge_unlinked()  # as the mount does at start: the parts must stay
        ks = ks_of(env)
        assert [u.upload_id for u in ks.list_uploads(PLAIN).uploads] == [uid]
        e2 = await ks.upload_part(PLAIN, "sealed/obj", uid, 2, b"the end")
        assert not store_holds(env, b"MULTIPART-PLAINTEXT-MULTIPART")
        info = await ks.complete_upload(PLAIN, "sealed/obj", uid, [(1, e1), (2, e2)])
        assert info.sse == "AES256"
        ino = ino_of(env, PLAIN, "sealed/obj")
        assert env.catalog.get_inode(ino).enc_request == "AES256"
        assert await get(ks, PLAIN, "sealed/obj") == secret + b"the end"
        # the default at Initiate holds, not the one at Complete
        parts = ks.list_parts(ENC, "by-default", uid2).parts
        info = await ks.complete_upload(ENC, "by-default", uid2, [(1, parts[0].etag)])
        assert info.sse == "AES256"
        await env.objects.commit_all()
        await env.drain_gc()
        assert not store_holds(env, b"MULTIPART-PLAINTEXT-MULTIPART")


def chunk_blobs(env, ino):
    """Blob ids of the chunks of ``ino`` that live in the store (not packed)."""
    return {ch.blob for ch in env.catalog.chunks(ino) if not ch.packed}


async def verify_object(env, ino):
    """Every chunk of ``ino`` opens under the object's own identity (what fsck --verify
    checks): read each chunk through a data path with no cache."""
    from cosfs.objects import ObjectStore
    fresh = ObjectStore(env.catalog, env.store.stores, env.store.keys,
                        chunk_size=env.objects.chunk_size, cache_size=0, write_buffer=0)
    size = env.catalog.get_inode(ino).size
    return await fresh.read(ino, 0, size + 1)


@trio_test
async def test_complete_links_parts_written_at_their_place(tmp_path):
    """Parts of one size (a multiple of the chunk size) are sealed at their offset in the
    final object under the upload's identity, so Complete links their chunks instead of
    sealing every byte again; a short last part that arrived first, when the part size
    was not known yet, is sealed again at its real place. Either way the object reads
    back whole, opens under its own identity, and nothing of the parts is left."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        for bucket in (ENC, PLAIN):
            uid = await ks.create_upload(bucket, "linked")
            parts = [part_bytes(n) for n in range(1, 5)] + [b"the short last part"]
            order = [5, 3, 1, 4, 2]  # the short last part first: it lands at offset 0
            etags = {}
            for n in order:
                etags[n] = await ks.upload_part(bucket, "linked", uid, n,
                                                body_of(parts[n - 1]), size=len(parts[n - 1]))
            etags[3] = await ks.upload_part(bucket, "linked", uid, 3, parts[2])  # again
            before = env.catalog.referenced_blobs()
            info = await ks.complete_upload(bucket, "linked", uid, sorted(etags.items()))
            ino = ino_of(env, bucket, "linked")
            whole = b"".join(parts)
            assert info.size == len(whole) and await get(ks, bucket, "linked") == whole
            assert await verify_object(env, ino) == whole
            blobs = chunk_blobs(env, ino)
            per_part = MIN_PART_SIZE // env.objects.chunk_size
            # the four whole parts' chunks are linked; the last part's one is packed again
            assert len(blobs & before) == 4 * per_part and not blobs - before
            assert env.catalog.unlinked_inodes() == []
            assert env.catalog.upload_parts(uid) == [] and env.catalog.get_upload(uid) is None
            assert (await ks.head_object(bucket, "linked")).sse == \
                ("AES256" if bucket == ENC else None)
            if bucket == ENC:
                enc_blobs = blobs
        await env.objects.commit_all()
        await env.drain_gc()
        assert await get(ks, ENC, "linked") == whole
        # deleting the object releases the linked blobs
        held = env.blobs()
        await ks.delete_object(ENC, "linked")
        await env.objects.commit_all()
        await env.drain_gc()
        assert enc_blobs <= held and not enc_blobs & env.blobs()


@trio_test
async def test_a_failed_complete_leaves_the_parts_whole(tmp_path, monkeypatch):
    """The links and the name are one transaction: when it fails, the object is not
    there, every part still reads back, and Complete can be sent again."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        parts = [part_bytes(n) for n in (1, 2)] + [b"end"]
        uid = await ks.create_upload(ENC, "k")
        listed = [(n, await ks.upload_part(ENC, "k", uid, n, p))
                  for n, p in enumerate(parts, 1)]
        real = env.catalog.delete_upload

        def broken(upload_id):
            real(upload_id)
            raise CosfsError("the catalog is full", code="InternalError")
        monkeypatch.setattr(env.catalog, "delete_upload", broken)
        await fails("InternalError", ks.complete_upload(ENC, "k", uid, listed))
        monkeypatch.setattr(env.catalog, "delete_upload", real)
        await fails("NoSuchKey", ks.head_object(ENC, "k"))
        assert [p.size for p in ks.list_parts(ENC, "k", uid).parts] == [len(p) for p in parts]
        await env.objects.commit_all()
        await env.drain_gc()
        info = await ks.complete_upload(ENC, "k", uid, listed)
        assert info.size == sum(map(len, parts))
        assert await get(ks, ENC, "k") == b"".join(parts)
        assert await verify_object(env, ino_of(env, ENC, "k")) == b"".join(parts)
        assert env.catalog.unlinked_inodes() == []


@trio_test
async def test_complete_of_parts_that_cannot_be_linked(tmp_path):
    """Parts of mixed sizes, sizes that are not a multiple of the chunk size, parts
    numbered with gaps, and an upload without an announced size: the object is whole."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        cs = env.objects.chunk_size
        cases = {
            "mixed": [(1, part_bytes(1, MIN_PART_SIZE + cs)), (2, part_bytes(2)),
                      (3, b"end")],
            "odd": [(1, part_bytes(3, MIN_PART_SIZE + 1)), (2, part_bytes(4, MIN_PART_SIZE + 1)),
                    (3, b"tail")],
            "gaps": [(2, part_bytes(5)), (5, part_bytes(6)), (9, b"last")],
            "one": [(7, b"a single part")],
        }
        for key, parts in cases.items():
            uid = await ks.create_upload(ENC, key)
            listed = []
            for n, data in reversed(parts):
                listed.append((n, await ks.upload_part(ENC, key, uid, n, body_of(data))))
            await ks.complete_upload(ENC, key, uid, sorted(listed))
            whole = b"".join(d for _, d in parts)
            assert await get(ks, ENC, key) == whole, key
            assert await verify_object(env, ino_of(env, ENC, key)) == whole, key
        assert env.catalog.unlinked_inodes() == []


@trio_test
async def test_an_upload_initiated_before_parts_shared_an_identity(tmp_path):
    """An upload from a catalog written before uploads had an identity (no part 0): its
    parts are sealed each under its own identity and Complete seals them again."""
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        uid = await ks.create_upload(ENC, "old")
        ident = env.catalog.upload_identity(uid)
        with env.catalog.transaction():  # as an older cosfs left it
            env.catalog.db.execute("DELETE FROM upload_parts WHERE number=0")
            env.catalog.update_inode(ident, nlink=0)
        env.fs.purge_if_unused(ident)
        parts = [part_bytes(1), part_bytes(2), b"end"]
        listed = [(n, await ks.upload_part(ENC, "old", uid, n, p))
                  for n, p in enumerate(parts, 1)]
        ids = {env.catalog.get_inode(ino).object_id
               for _, ino, *_ in env.catalog.upload_parts(uid)}
        assert len(ids) == 3  # nothing shared
        await ks.complete_upload(ENC, "old", uid, listed)
        assert await get(ks, ENC, "old") == b"".join(parts)
        assert await verify_object(env, ino_of(env, ENC, "old")) == b"".join(parts)
        assert env.catalog.unlinked_inodes() == []


@trio_test
async def test_uploads_in_progress_are_not_counted_as_objects(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        uid = await ks.create_upload(PLAIN, "k")
        for n in (1, 2, 3):
            await ks.upload_part(PLAIN, "k", uid, n, part_bytes(n))
        assert ks.usage()[PLAIN] == {}
        await ks.complete_upload(PLAIN, "k", uid, [(p.number, p.etag) for p in
                                                   ks.list_parts(PLAIN, "k", uid).parts])
        assert ks.usage()[PLAIN] == {None: (1, 3 * MIN_PART_SIZE)}
        # the same scan through a connection of its own, in a worker thread
        assert ks.last_usage is None
        assert await ks.usage_apart() == ks.usage() == ks.last_usage


@trio_test
async def test_uploads_of_a_removed_bucket_are_dropped(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await ks.create_bucket("tmp-" + APPID, "ap-guangzhou")
        uid = await ks.create_upload("tmp-" + APPID, "k")
        await ks.upload_part("tmp-" + APPID, "k", uid, 1, b"part")
        inodes = env.catalog.inode_count()
        await env.fs.rmdir(ROOT_INODE, ("tmp-" + APPID).encode())  # rmdir on the mount
        ks = ks_of(env)
        assert env.catalog.get_upload(uid) is None
        # the bucket, the part and the inode holding the upload's sealing identity
        assert env.catalog.inode_count() == inodes - 3


@trio_test
async def test_deepest_keys_list(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        key = "a/" * 424 + "b"  # 849 bytes, 425 levels
        await ks.put_object(PLAIN, key, b"x")
        assert [c.key for c in ks.list_objects(PLAIN).contents] == [key]
        assert [c.key for c in ks.list_objects(PLAIN, marker="a/" * 300).contents] == [key]
        assert ks.list_objects(PLAIN, delimiter="/").common_prefixes == ["a/"]


@trio_test
async def test_writes_with_fsync_on_close(tmp_path):
    async with fs_env(tmp_path, fsync_on_close=True) as env:
        ks = ks_of(env)
        assert env.fs.fsync_on_close
        await ks.put_object(PLAIN, "k", b"durable")
        uid = await ks.create_upload(PLAIN, "m")
        etag = await ks.upload_part(PLAIN, "m", uid, 1, b"part")
        await ks.complete_upload(PLAIN, "m", uid, [(1, etag)])
        assert await get(ks, PLAIN, "m") == b"part"


@trio_test
async def test_directories_made_for_keys_go_with_their_last_key(tmp_path):
    from cosfs.filesystem import Ctx
    async with fs_env(tmp_path) as env:
        ks = ks_of(env)
        await ks.put_object(PLAIN, "a/b/c", b"x")
        await ks.put_object(PLAIN, "a/d", b"y")
        await ks.delete_object(PLAIN, "a/b/c")
        assert ino_of(env, PLAIN, "a/b") is None  # emptied: gone, as in COS
        assert ino_of(env, PLAIN, "a") is not None  # still holds a/d
        await ks.delete_object(PLAIN, "a/d")
        assert ino_of(env, PLAIN, "a") is None
        # a directory made on the mount, or by a dir/ PUT, is an object of its own: it stays
        await env.fs.mkdir(env.bucket(PLAIN), b"m", 0o755, Ctx())
        await ks.put_object(PLAIN, "m/x", b"z")
        await ks.put_object(PLAIN, "d/", b"")
        await ks.put_object(PLAIN, "d/e/f", b"z")
        await ks.delete_object(PLAIN, "m/x")
        await ks.delete_object(PLAIN, "d/e/f")
        assert ino_of(env, PLAIN, "m") is not None
        assert ino_of(env, PLAIN, "d") is not None and ino_of(env, PLAIN, "d/e") is None
        assert [i.key for i in ks.list_objects(PLAIN).contents] == ["d/", "m/"]
        await ks.delete_object(PLAIN, "d/")
        await ks.delete_object(PLAIN, "m/")
        await ks.delete_bucket(PLAIN)  # what an S3 client's "remove bucket" does
