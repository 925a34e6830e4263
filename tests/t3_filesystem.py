"""The filesystem layer (cosfs.filesystem) driven directly, without FUSE.

Every test opens a fresh store with the two test buckets; the kernel's part
(lookup counts, readdir offsets, forget) is played by the test.
"""

import errno
import logging
import os
import stat

import pytest
import trio

from cosfs import names
from cosfs.catalog import ROOT_INODE
from cosfs.errors import CosfsError, FsError
from cosfs.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE, Ctx
from cosfs.xattrs import BUCKET_ENC_XATTR, SSE_XATTR
from cosfs.names import MAX_KEY_BYTES

from helpers import APPID, ENC, PLAIN, fs_env, tmp_path, trio_test  # noqa: F401

CTX = Ctx(uid=os.getuid(), gid=os.getgid(), umask=0o022)
REG = stat.S_IFREG | 0o644


async def fails(err, coro):
    """Await ``coro`` and check it raises a CosfsError with ``err``; returns the error."""
    with pytest.raises(CosfsError) as ei:
        await coro
    assert ei.value.errno == err, "expected %s, got %s (%s)" % (
        errno.errorcode[err], errno.errorcode.get(ei.value.errno), ei.value)
    return ei.value


def fails_sync(err, fn, *args, **kw):
    with pytest.raises(CosfsError) as ei:
        fn(*args, **kw)
    assert ei.value.errno == err
    return ei.value


async def mkfile(fs, parent, name, data=b""):
    fh, inode = await fs.create(parent, name, 0o644, os.O_RDWR, CTX)
    if data:
        await fs.write(fh, 0, data)
    await fs.release(fh)
    return inode.id


def exists(env, ino):
    try:
        env.catalog.get_inode(ino)
        return True
    except FsError:
        return False


def names_in(env, ino):
    return [n for n, _ in env.catalog.list_dir(ino)]


# -- buckets -------------------------------------------------------------------------
@trio_test
async def test_root_lists_configured_buckets(tmp_path):
    async with fs_env(tmp_path) as env:
        assert names_in(env, ROOT_INODE) == [ENC.encode(), PLAIN.encode()]
        root = await env.fs.getattr(ROOT_INODE)
        assert root.nlink == 4
        assert env.fs.get_bucket_encryption(env.bucket(ENC)).startswith(b"<")
        fails_sync(errno.ENODATA, env.fs.get_bucket_encryption, env.bucket(PLAIN))


@trio_test
async def test_mkdir_at_root_creates_bucket(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        inode = await fs.mkdir(ROOT_INODE, b"photos-" + APPID.encode(), 0o755, CTX)
        assert inode.is_dir and inode.bucket == inode.id and inode.nlink == 2
        assert env.catalog.bucket_by_name("photos-" + APPID)[2] == "ap-guangzhou"
        assert (await fs.getattr(ROOT_INODE)).nlink == 5
        assert fs.lookups[inode.id] == 1
        await fails(errno.EEXIST, fs.mkdir(ROOT_INODE, b"photos-" + APPID.encode(), 0o755, CTX))
        # an empty bucket can be removed
        await fs.rmdir(ROOT_INODE, b"photos-" + APPID.encode())
        assert env.catalog.bucket_by_name("photos-" + APPID) is None
        assert (await fs.getattr(ROOT_INODE)).nlink == 4


@pytest.mark.parametrize("name", [
    b"Photos-" + APPID.encode(),        # upper case
    b"photos",                          # no APPID
    b"photos-1250000001",               # another APPID
    b"-photos-" + APPID.encode(),       # leading dash
    b"photos_x-" + APPID.encode(),      # underscore
    b"a" * 40 + b"-" + APPID.encode(),  # endpoint too long
    b"\xff\xfe-" + APPID.encode(),      # not UTF-8
])
@trio_test
async def test_invalid_bucket_names(tmp_path, caplog, name):
    async with fs_env(tmp_path) as env:
        with caplog.at_level(logging.WARNING, logger="cosfs.filesystem"):
            err = await fails(errno.EINVAL, env.fs.mkdir(ROOT_INODE, name, 0o755, CTX))
        assert err.code in ("InvalidBucketName", "BucketNameTooLong")
        assert any(r.levelno == logging.WARNING and "mount root" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert env.catalog.lookup(ROOT_INODE, name) is None


@trio_test
async def test_non_empty_bucket_cannot_be_removed(tmp_path, caplog):
    async with fs_env(tmp_path) as env:
        await mkfile(env.fs, env.bucket(), b"f")
        with caplog.at_level(logging.WARNING, logger="cosfs.filesystem"):
            err = await fails(errno.ENOTEMPTY, env.fs.rmdir(ROOT_INODE, PLAIN.encode()))
        assert err.code == "BucketNotEmpty"
        assert "BucketNotEmpty" in caplog.text


@trio_test
async def test_no_files_at_root(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        await fails(errno.EPERM, fs.create(ROOT_INODE, b"file", 0o644, os.O_RDWR, CTX))
        await fails(errno.EPERM, fs.symlink(ROOT_INODE, b"link", b"target", CTX))
        await fails(errno.EPERM, fs.mknod(ROOT_INODE, b"fifo", stat.S_IFIFO | 0o644, 0, CTX))
        ino = await mkfile(fs, env.bucket(), b"f")
        await fails(errno.EPERM, fs.link(ino, ROOT_INODE, b"hard", CTX))
        assert names_in(env, ROOT_INODE) == [ENC.encode(), PLAIN.encode()]


@trio_test
async def test_bucket_rename_refused(tmp_path):
    async with fs_env(tmp_path) as env:
        await fails(errno.EPERM, env.fs.rename(ROOT_INODE, PLAIN.encode(), ROOT_INODE,
                                               b"other-" + APPID.encode()))
        await fails(errno.EXDEV, env.fs.rename(ROOT_INODE, PLAIN.encode(), env.bucket(ENC),
                                               b"x"))


# -- names ------------------------------------------------------------------------------
@trio_test
async def test_key_length_limit(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        await fails(errno.ENAMETOOLONG, fs.create(env.bucket(), b"n" * 256, 0o644, 0, CTX))
        # nest directories so the key approaches the COS limit of 850 bytes
        parent = env.bucket()
        used = 0
        while used + 201 < MAX_KEY_BYTES - 50:
            parent = (await fs.mkdir(parent, b"d" * 200, 0o755, CTX)).id
            used += 201
        room = MAX_KEY_BYTES - used
        assert fs.key_of(parent, b"x" * room) and len(fs.key_of(parent, b"x" * room)) == 850
        await mkfile(fs, parent, b"x" * room)
        err = await fails(errno.ENAMETOOLONG, fs.create(parent, b"y" * (room + 1), 0o644, 0, CTX))
        assert err.code == "KeyTooLong"
        await fails(errno.ENAMETOOLONG, fs.mkdir(parent, b"y" * (room + 1), 0o755, CTX))
        await fails(errno.ENAMETOOLONG, fs.symlink(parent, b"y" * (room + 1), b"t", CTX))
        # renaming into the long directory is checked too
        short = await mkfile(fs, env.bucket(), b"short")
        await fails(errno.ENAMETOOLONG, fs.rename(env.bucket(), b"short", parent,
                                                  b"y" * (room + 1)))
        assert env.catalog.lookup(env.bucket(), b"short") == short


@pytest.mark.parametrize("name,err", [(b".", errno.EINVAL), (b"..", errno.EINVAL),
                                      (b"a\x1bb", errno.EINVAL),
                                      ("\uf7ff".encode(), errno.EINVAL)])
@trio_test
async def test_invalid_object_names(tmp_path, name, err):
    async with fs_env(tmp_path) as env:
        await fails(err, env.fs.create(env.bucket(), name, 0o644, 0, CTX))


def key(name):
    return names.name_to_key(name).encode()


@trio_test
async def test_names_that_are_not_utf8(tmp_path):
    """Below a bucket every name is kept under its mapped key and given back as it came."""
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        f = await mkfile(fs, b, b"caf\xe9", b"latin-1")
        d = (await fs.mkdir(b, b"d\xe9j\xe0", 0o755, CTX)).id
        inner = await mkfile(fs, d, b"\xff\xfe", b"inner")
        mixed = await mkfile(fs, b, b"na\xc3\xafve-\xe9")
        link = await fs.symlink(d, b"ln\xff", b"../t\xff", CTX)  # the target stays bytes
        fifo = await fs.mknod(d, b"fifo\x80", stat.S_IFIFO | 0o644, 0, CTX)
        await fs.link(f, d, b"hard\xe9", CTX)
        # the catalog holds keys: valid UTF-8, escaped bytes as U+F780..U+F7FF
        assert env.catalog.lookup(b, "caf\uf7e9".encode()) == f
        assert env.catalog.lookup(b, b"caf\xe9") is None
        assert env.catalog.lookup(b, "na\u00efve-\uf7e9".encode()) == mixed
        assert fs.key_of(d, key(b"\xff\xfe")) == "d\uf7e9j\uf7e0/\uf7ff\uf7fe".encode()
        for parent in (b, d):
            for k, _ in env.catalog.list_dir(parent):
                names.validate_key(fs.key_of(parent, k))
        # lookups by the kernel's names
        assert (await fs.lookup(b, b"caf\xe9")).id == f
        assert (await fs.lookup(d, b"\xff\xfe")).id == inner
        assert (await fs.lookup(d, b"ln\xff")).id == link.id
        assert await fs.readlink(link.id) == b"../t\xff"
        assert (await fs.lookup(d, b"fifo\x80")).id == fifo.id
        assert (await fs.lookup(d, b"hard\xe9")).id == f
        await fails(errno.ENOENT, fs.lookup(b, b"caf\xe8"))
        await fails(errno.ENOENT, fs.lookup(b, "caf\u00e9".encode()))  # another name
        await fails(errno.EEXIST, fs.create(b, b"caf\xe9", 0o644, 0, CTX))
        # readdir gives the names back byte for byte
        fh = await fs.opendir(d)
        listed, _ = read_some(fs, fh, 0, 100)
        await fs.releasedir(fh)
        assert sorted(listed[2:]) == sorted([b"\xff\xfe", b"ln\xff", b"fifo\x80", b"hard\xe9"])
        fh = await fs.opendir(b)
        listed, _ = read_some(fs, fh, 0, 100)
        await fs.releasedir(fh)
        assert {b"caf\xe9", b"d\xe9j\xe0", b"na\xc3\xafve-\xe9"} <= set(listed)
        # rename, exchange, unlink, rmdir
        await fs.rename(b, b"caf\xe9", d, b"\xe9t\xe9")
        assert (await fs.lookup(d, b"\xe9t\xe9")).id == f
        await fs.rename(d, b"\xe9t\xe9", d, b"\xff\xfe", RENAME_EXCHANGE)
        assert (await fs.lookup(d, b"\xff\xfe")).id == f
        assert (await fs.lookup(d, b"\xe9t\xe9")).id == inner
        for name in (b"\xff\xfe", b"\xe9t\xe9", b"ln\xff", b"fifo\x80", b"hard\xe9"):
            await fs.unlink(d, name)
        await fs.rmdir(b, b"d\xe9j\xe0")
        assert env.catalog.lookup(b, key(b"d\xe9j\xe0")) is None


@trio_test
async def test_readdir_resumes_among_escaped_names(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        made = set()
        for i in range(40):
            name = bytes([0x61 + i % 3]) + bytes([0x80 + i]) + (b"\xc3\xa9" if i % 2 else b"")
            await mkfile(fs, b, name)
            made.add(name)
        fh = await fs.opendir(b)
        seen, nxt = read_some(fs, fh, 0, 7)
        while True:
            more, nxt = read_some(fs, fh, nxt, 7)
            if not more:
                break
            seen += more
        await fs.releasedir(fh)
        assert len(seen) == 42 and set(seen[2:]) == made


@trio_test
async def test_name_limits_with_escaped_bytes(tmp_path, caplog):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        # NAME_MAX counts the kernel's bytes: 255 escaped bytes are a 765-byte key
        await mkfile(fs, b, b"\xe9" * 255)
        await fails(errno.ENAMETOOLONG, fs.create(b, b"\xe9" * 256, 0o644, 0, CTX))
        await fails(errno.ENAMETOOLONG, fs.lookup(b, b"\xe9" * 256))
        # the 850-byte key limit counts the mapped key: 3 bytes per escaped byte
        d = (await fs.mkdir(b, b"d" * 200, 0o755, CTX)).id        # "ddd.../": 201 bytes
        await mkfile(fs, d, b"\xe9" * 216)                         # 201 + 648 = 849
        err = await fails(errno.ENAMETOOLONG, fs.create(d, b"\xe9" * 217, 0o644, 0, CTX))
        assert err.code == "KeyTooLong"
        await mkfile(fs, d, b"x" + b"\xe9" * 216)                  # 850
        # a directory counts with its "/": 851
        await fails(errno.ENAMETOOLONG, fs.mkdir(d, b"y" + b"\xe9" * 216, 0o755, CTX))
        await fails(errno.ENAMETOOLONG, fs.rename(b, b"\xe9" * 255, d, b"yy" + b"\xe9" * 216))
        # the reserved characters: EINVAL, and the log says why
        reserved = "x\uf7e9".encode()
        ino = await mkfile(fs, b, b"src")
        with caplog.at_level(logging.WARNING, logger="cosfs.filesystem"):
            for call in (fs.create(b, reserved, 0o644, 0, CTX),
                         fs.mkdir(b, reserved, 0o755, CTX),
                         fs.mknod(b, reserved, stat.S_IFIFO | 0o644, 0, CTX),
                         fs.symlink(b, reserved, b"t", CTX),
                         fs.link(ino, b, reserved, CTX),
                         fs.rename(b, b"src", b, reserved),
                         fs.lookup(b, reserved),
                         fs.unlink(b, reserved)):
                err = await fails(errno.EINVAL, call)
                assert err.code == "InvalidObjectName"
        assert "U+F7E9" in caplog.text and "reserved" in caplog.text
        assert [n for n, _ in env.catalog.list_dir(b)] == sorted(
            [b"d" * 200, b"src", key(b"\xe9" * 255)])
        # bucket names are not mapped: the COS rules refuse anything that is not ASCII
        err = await fails(errno.EINVAL, fs.mkdir(ROOT_INODE, b"caf\xe9-" + APPID.encode(),
                                                 0o755, CTX))
        assert err.code == "InvalidBucketName"


# -- lookup counts and purge ------------------------------------------------------------
@trio_test
async def test_lookup_counts(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(), b"f")  # create counts one
        assert fs.lookups[ino] == 1
        for _ in range(3):
            assert (await fs.lookup(env.bucket(), b"f")).id == ino
        assert fs.lookups[ino] == 4
        await fails(errno.ENOENT, fs.lookup(env.bucket(), b"nope"))
        assert (await fs.lookup(env.bucket(), b".")).id == env.bucket()
        assert (await fs.lookup(env.bucket(), b"..")).id == ROOT_INODE
        fs.forget([(ino, 3)])
        assert fs.lookups[ino] == 1
        fs.forget([(ino, 1)])
        assert ino not in fs.lookups
        assert exists(env, ino)  # still named: forget never deletes


@pytest.mark.parametrize("order", ["forget-then-release", "release-then-forget"])
@trio_test
async def test_unlinked_inode_purged_after_forget_and_release(tmp_path, order):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fh, inode = await fs.create(env.bucket(), b"f", 0o644, os.O_RDWR, CTX)
        ino = inode.id
        await fs.write(fh, 0, b"data" * 50000)
        await fs.flush(fh)
        blobs = {c.blob for c in env.catalog.chunks(ino)}
        await fs.unlink(env.bucket(), b"f")
        assert exists(env, ino) and env.catalog.get_inode(ino).nlink == 0
        assert await fs.read(fh, 0, 4) == b"data"  # an open unlinked file stays readable
        if order == "forget-then-release":
            fs.forget([(ino, 1)])
            assert exists(env, ino)
            await fs.write(fh, 0, b"more")
            await fs.release(fh)
        else:
            await fs.release(fh)
            assert exists(env, ino)
            fs.forget([(ino, 1)])
        assert not exists(env, ino)
        assert env.catalog.chunks(ino) == []
        await env.drain_gc()
        assert not blobs & env.blobs()


@trio_test
async def test_purge_unlinked_at_start(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fh, inode = await fs.create(env.bucket(), b"f", 0o644, os.O_RDWR, CTX)
        await fs.write(fh, 0, b"x" * 1000)
        await fs.flush(fh)
        await fs.unlink(env.bucket(), b"f")
        cfg = env.config
        # the daemon dies here: the handle and lookup are never released
        env.fs.handles.clear()
        env.fs.lookups.clear()
        env.objects.states.clear()
    async with fs_env(tmp_path, reopen_config=cfg) as env:
        assert env.catalog.unlinked_inodes() == [inode.id]
        env.fs.purge_unlinked()
        assert not exists(env, inode.id)
        await env.drain_gc()
        assert env.blobs() == env.catalog.referenced_blobs()


@trio_test
async def test_forgotten_objects_are_purged_in_batches(tmp_path, monkeypatch):
    """With a background runner, nameless objects the kernel forgets are purged together
    (one catalog transaction for many), at once when a batch is full and after a short
    delay otherwise; an object looked up, opened or named again meanwhile is kept, and
    a purge the catalog refuses keeps them queued."""
    from cosfs import filesystem
    monkeypatch.setattr(filesystem, "PURGE_BATCH", 5)
    monkeypatch.setattr(filesystem, "PURGE_DELAY", 0.05)
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fs.attach(env.nursery)
        b = env.bucket(ENC)
        inos = [await mkfile(fs, b, b"f%d" % i, b"x" * (i * 40000)) for i in range(7)]
        for i in range(7):
            await fs.unlink(b, b"f%d" % i)
        blobs = {ch.blob for i in inos for ch in env.catalog.chunks(i) if not ch.packed}
        assert blobs and set(env.catalog.unlinked_inodes()) == set(inos)
        transactions = []
        real = env.catalog.transaction
        monkeypatch.setattr(env.catalog, "transaction",
                            lambda *a, **k: transactions.append(env.catalog._depth) or
                            real(*a, **k))
        fs.forget([(i, 1) for i in inos[:3]])
        assert all(exists(env, i) for i in inos)  # queued, not purged yet
        fs.forget([(i, 1) for i in inos[3:5]])  # the batch is full: purged at once
        assert not any(exists(env, i) for i in inos[:5]) and transactions.count(0) == 1
        fh = await fs.open(inos[5], os.O_RDONLY, CTX)  # the kernel still knows it
        fs.forget([(inos[5], 1), (inos[6], 1)])
        await trio.sleep(0.3)
        assert not exists(env, inos[6]) and exists(env, inos[5])
        assert transactions.count(0) == 2
        await fs.release(fh)  # the last user of a nameless object purges it
        assert not exists(env, inos[5])
        await env.drain_gc()
        assert not blobs & env.blobs()
        assert env.catalog.unlinked_inodes() == []

        # a purge the catalog refuses: nothing is lost, the inodes stay queued
        ino = await mkfile(fs, b, b"g", b"y" * 50000)
        await fs.unlink(b, b"g")

        def full(inodes):
            raise CosfsError("catalog full", code="CatalogFull")
        monkeypatch.setattr(env.objects, "forget_objects", full)
        fs.forget([(ino, 1)])
        with pytest.raises(CosfsError):
            fs.purge_queued()
        assert exists(env, ino) and ino in fs._queued
        monkeypatch.undo()
        fs.purge_queued()
        assert not exists(env, ino)


@trio_test
async def test_batched_purges_survive_errors_and_bucket_removal(tmp_path, monkeypatch, caplog):
    """A purge batch that fails unexpectedly is logged and kept (the mount stays up);
    removing a bucket first purges the queued objects that were in it, while the
    bucket still tells where their data is."""
    import sqlite3
    from cosfs import filesystem
    monkeypatch.setattr(filesystem, "PURGE_DELAY", 0.01)
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fs.attach(env.nursery)
        b = (await fs.mkdir(ROOT_INODE, b"gone-" + APPID.encode(), 0o755, CTX)).id
        ino = await mkfile(fs, b, b"f", b"z" * 300000)
        blobs = {ch.blob for ch in env.catalog.chunks(ino)}
        await fs.unlink(b, b"f")

        def broken(inodes):
            raise sqlite3.OperationalError("disk I/O error")
        monkeypatch.setattr(env.objects, "forget_objects", broken)
        with caplog.at_level(logging.WARNING):
            fs.forget([(ino, 1)])
            await trio.sleep(0.2)  # the background batch fails and says so
        assert "disk I/O error" in caplog.text
        assert exists(env, ino) and ino in fs._queued
        monkeypatch.undo()
        monkeypatch.setattr(filesystem, "PURGE_DELAY", 10)  # only rmdir purges now
        await fs.rmdir(ROOT_INODE, b"gone-" + APPID.encode())
        assert not exists(env, ino) and not fs._queued
        await env.drain_gc()
        assert not blobs & env.blobs()


# -- link / unlink -------------------------------------------------------------------
@trio_test
async def test_hard_links(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        sub = (await fs.mkdir(b, b"sub", 0o755, CTX)).id
        ino = await mkfile(fs, b, b"a", b"content")
        inode = await fs.link(ino, sub, b"b", CTX)
        assert inode.nlink == 2 and fs.lookups[ino] == 2
        await fails(errno.EEXIST, fs.link(ino, sub, b"b", CTX))
        await fails(errno.EXDEV, fs.link(ino, env.bucket(ENC), b"c", CTX))
        await fails(errno.EPERM, fs.link(sub, b, b"dirlink", CTX))
        await fs.unlink(b, b"a")
        assert env.catalog.get_inode(ino).nlink == 1
        fs.forget([(ino, 2)])
        assert exists(env, ino)  # one name left
        fh = await fs.open((await fs.lookup(sub, b"b")).id, os.O_RDONLY)
        assert await fs.read(fh, 0, 100) == b"content"
        await fs.release(fh)
        await fs.unlink(sub, b"b")
        fs.forget([(ino, 1)])
        assert not exists(env, ino)


@trio_test
async def test_unlink_and_rmdir_errors(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        d = (await fs.mkdir(b, b"d", 0o755, CTX)).id
        await mkfile(fs, d, b"f")
        await fails(errno.EISDIR, fs.unlink(b, b"d"))
        await fails(errno.ENOTDIR, fs.rmdir(d, b"f"))
        await fails(errno.ENOTEMPTY, fs.rmdir(b, b"d"))
        await fails(errno.ENOENT, fs.unlink(b, b"missing"))
        await fails(errno.ENOENT, fs.rmdir(b, b"missing"))
        f = env.catalog.lookup(d, b"f")
        await fails(errno.ENOTDIR, fs.unlink(f, b"x"))
        await fails(errno.ENOTDIR, fs.mkdir(f, b"x", 0o755, CTX))


# -- directory link counts -----------------------------------------------------------
@trio_test
async def test_directory_nlink(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        nl = lambda ino: env.catalog.get_inode(ino).nlink  # noqa: E731
        assert nl(b) == 2
        a = (await fs.mkdir(b, b"a", 0o755, CTX)).id
        c = (await fs.mkdir(b, b"c", 0o755, CTX)).id
        await mkfile(fs, b, b"file")
        assert nl(b) == 4  # files do not count
        x = (await fs.mkdir(a, b"x", 0o755, CTX)).id
        assert (nl(a), nl(x)) == (3, 2)
        await fs.rename(a, b"x", c, b"x")  # move a directory between parents
        assert (nl(a), nl(c), nl(b)) == (2, 3, 4)
        await fs.rename(c, b"x", c, b"y")  # same parent
        assert nl(c) == 3
        await fs.mkdir(a, b"empty", 0o755, CTX)
        await fs.rename(c, b"y", a, b"empty")  # replace an empty directory elsewhere
        assert (nl(a), nl(c)) == (3, 2)
        await fs.rmdir(a, b"empty")
        assert nl(a) == 2
        await fs.rmdir(b, b"a")
        assert nl(b) == 3


# -- rename -------------------------------------------------------------------------
@trio_test
async def test_rename_replaces_file(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        src = await mkfile(fs, b, b"src", b"new")
        dst = await mkfile(fs, b, b"dst", b"old" * 100000)
        old_blobs = {c.blob for c in env.catalog.chunks(dst)}
        await fs.rename(b, b"src", b, b"dst")
        assert env.catalog.lookup(b, b"dst") == src
        assert env.catalog.lookup(b, b"src") is None
        assert env.catalog.get_inode(dst).nlink == 0
        assert exists(env, dst)  # the kernel still knows it
        fs.forget([(dst, 1)])
        assert not exists(env, dst)
        await env.drain_gc()
        assert not old_blobs & env.blobs()


@trio_test
async def test_rename_errors(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        d = (await fs.mkdir(b, b"d", 0o755, CTX)).id
        sub = (await fs.mkdir(d, b"sub", 0o755, CTX)).id
        full = (await fs.mkdir(b, b"full", 0o755, CTX)).id
        await mkfile(fs, full, b"inside")
        await mkfile(fs, b, b"f")
        await mkfile(fs, env.bucket(ENC), b"g")
        await fails(errno.EXDEV, fs.rename(b, b"f", env.bucket(ENC), b"f"))
        await fails(errno.EXDEV, fs.rename(env.bucket(ENC), b"g", b, b"g"))
        await fails(errno.EINVAL, fs.rename(b, b"d", d, b"d2"))      # into itself
        await fails(errno.EINVAL, fs.rename(b, b"d", sub, b"deeper"))  # into its subtree
        await fails(errno.ENOTEMPTY, fs.rename(b, b"d", b, b"full"))
        await fails(errno.EISDIR, fs.rename(b, b"f", b, b"d"))
        await fails(errno.ENOTDIR, fs.rename(b, b"d", b, b"f"))
        await fails(errno.ENOENT, fs.rename(b, b"missing", b, b"x"))
        await fails(errno.EEXIST, fs.rename(b, b"f", b, b"d", RENAME_NOREPLACE))
        await fails(errno.EINVAL, fs.rename(b, b"f", b, b"x", 8))
        await fails(errno.ENOENT, fs.rename(b, b"f", b, b"absent", RENAME_EXCHANGE))
        # nothing moved
        assert names_in(env, b) == [b"d", b"f", b"full"]
        assert names_in(env, d) == [b"sub"]


@trio_test
async def test_rename_noreplace_and_same_inode(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        ino = await mkfile(fs, b, b"a")
        await fs.rename(b, b"a", b, b"b", RENAME_NOREPLACE)
        assert names_in(env, b) == [b"b"]
        await fs.link(ino, b, b"c", CTX)
        await fs.rename(b, b"b", b, b"c")  # both names are the same inode: nothing happens
        assert names_in(env, b) == [b"b", b"c"]
        assert env.catalog.get_inode(ino).nlink == 2


@trio_test
async def test_rename_exchange(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        p = (await fs.mkdir(b, b"p", 0o755, CTX)).id
        q = (await fs.mkdir(b, b"q", 0o755, CTX)).id
        f = await mkfile(fs, p, b"f", b"file")
        d = (await fs.mkdir(q, b"d", 0o755, CTX)).id
        await mkfile(fs, d, b"inner")
        await fs.rename(p, b"f", q, b"d", RENAME_EXCHANGE)
        assert env.catalog.lookup(p, b"f") == d
        assert env.catalog.lookup(q, b"d") == f
        nl = lambda ino: env.catalog.get_inode(ino).nlink  # noqa: E731
        assert (nl(p), nl(q)) == (3, 2)
        assert env.catalog.parent_of(d) == (p, b"f")
        assert fs.key_of(d, b"inner") == b"p/f/inner"
        await fails(errno.EINVAL, fs.rename(b, b"p", p, b"f", RENAME_EXCHANGE))  # into itself


@trio_test
async def test_rename_moves_keys_of_subtree(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        d = (await fs.mkdir(b, b"dir", 0o755, CTX)).id
        await mkfile(fs, d, b"obj", b"payload")
        await fs.rename(b, b"dir", b, b"moved")
        inode = await fs.lookup(d, b"obj")
        assert fs.key_of(d, b"obj") == b"moved/obj"
        fh = await fs.open(inode.id, os.O_RDONLY)
        assert await fs.read(fh, 0, 10) == b"payload"
        await fs.release(fh)


# -- readdir ----------------------------------------------------------------------------
def read_some(fs, fh, start, n):
    """Play the kernel: take up to ``n`` entries from ``start``; returns (names, next)."""
    got = []
    nxt = start
    for name, inode, next_id, counted in fs.readdir(fh, start):
        if len(got) == n:
            break
        got.append(name)
        nxt = next_id
        if counted:
            fs.readdir_sent(fh, name, inode.id)
    return got, nxt


@trio_test
async def test_readdir_basic(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        for i in range(5):
            await mkfile(fs, b, b"f%d" % i)
        fs.forget(list(fs.lookups.items()))
        fh = await fs.opendir(b)
        names, nxt = read_some(fs, fh, 0, 100)
        assert names == [b".", b"..", b"f0", b"f1", b"f2", b"f3", b"f4"]
        assert read_some(fs, fh, nxt, 100) == ([], nxt)
        # entries (not . and ..) count as lookups
        assert sorted(fs.lookups.values()) == [1] * 5
        await fs.releasedir(fh)
        fails_sync(errno.EBADF, lambda: list(fs.readdir(fh, 0)))
        ino = env.catalog.lookup(b, b"f0")
        await fails(errno.ENOTDIR, fs.opendir(ino))


@trio_test
async def test_readdir_resumes_across_changes(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        for i in range(0, 20, 2):
            await mkfile(fs, b, b"e%02d" % i)
        fh = await fs.opendir(b)
        first, nxt = read_some(fs, fh, 0, 6)  # . .. e00 e02 e04 e06
        assert first[2:] == [b"e00", b"e02", b"e04", b"e06"]
        # changes between two calls: before and after the cursor
        await fs.unlink(b, b"e02")        # already sent
        await fs.unlink(b, b"e06")        # the last one sent
        await fs.unlink(b, b"e10")        # not yet sent: must not appear
        await mkfile(fs, b, b"e01")       # before the cursor: not required
        await mkfile(fs, b, b"e07")       # after the cursor: must appear
        await mkfile(fs, b, b"e99")
        rest, nxt2 = read_some(fs, fh, nxt, 3)
        rest2, _ = read_some(fs, fh, nxt2, 100)
        after = rest + rest2
        assert after == [b"e07", b"e08", b"e12", b"e14", b"e16", b"e18", b"e99"]
        # a repeated call at an old offset (the kernel re-reads) gives the same entries
        again, _ = read_some(fs, fh, nxt, 100)
        assert again == after
        await fs.releasedir(fh)


@trio_test
async def test_readdir_large_directory_in_batches(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        d = (await fs.mkdir(b, b"big", 0o755, CTX)).id
        with env.catalog.transaction():  # quicker than 2500 creates
            for i in range(2500):
                inode = env.catalog.new_inode(mode=REG, uid=0, gid=0, bucket=b,
                                              object_id=os.urandom(16))
                env.catalog.add_dentry(d, b"n%05d" % i, inode.id)
        fh = await fs.opendir(d)
        seen = []
        nxt = 0
        while True:
            names, nxt = read_some(fs, fh, nxt, 333)
            if not names:
                break
            seen += names
        assert seen[2:] == [b"n%05d" % i for i in range(2500)]


# -- attributes -----------------------------------------------------------------------
@trio_test
async def test_setattr(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        ino = await mkfile(fs, b, b"f", b"0123456789")
        inode = await fs.setattr(ino, mode=0o600, uid=7, gid=8, mtime_ns=10 ** 18)
        assert stat.S_ISREG(inode.mode) and stat.S_IMODE(inode.mode) == 0o600
        assert (inode.uid, inode.gid, inode.mtime_ns) == (7, 8, 10 ** 18)
        inode = await fs.setattr(ino, size=4)
        assert inode.size == 4
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 100) == b"0123"
        await fs.release(fh)
        await fails(errno.EISDIR, fs.setattr(b, size=0))
        fh = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        assert (await fs.getattr(ino)).size == 0
        await fs.release(fh)
        await fails(errno.EISDIR, fs.open(b, os.O_RDONLY))
        await fails(errno.EBADF, fs.read(12345, 0, 1))


@trio_test
async def test_symlink_and_mknod(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        link = await fs.symlink(b, b"ln", b"../target", CTX)
        assert stat.S_ISLNK(link.mode) and link.size == len(b"../target")
        assert await fs.readlink(link.id) == b"../target"
        ino = await mkfile(fs, b, b"f")
        await fails(errno.EINVAL, fs.readlink(ino))
        fifo = await fs.mknod(b, b"fifo", stat.S_IFIFO | 0o644, 0, CTX)
        assert stat.S_ISFIFO(fifo.mode)
        await fails(errno.EINVAL, fs.mknod(b, b"dir", stat.S_IFDIR | 0o755, 0, CTX))


@trio_test
async def test_statfs(tmp_path):
    async with fs_env(tmp_path) as env:
        st = await env.fs.statfs()
        assert st["f_namemax"] == 255 and st["f_bsize"] > 0


# -- xattrs ------------------------------------------------------------------------------
@trio_test
async def test_user_xattrs(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(), b"f")
        await fails(errno.ENODATA, fs.getxattr(ino, b"user.color"))
        await fs.setxattr(ino, b"user.color", b"blue")
        assert await fs.getxattr(ino, b"user.color") == b"blue"
        assert b"user.color" in await fs.listxattr(ino)
        await fs.setxattr(ino, b"user.color", b"red")
        assert await fs.getxattr(ino, b"user.color") == b"red"
        await fs.removexattr(ino, b"user.color")
        await fails(errno.ENODATA, fs.removexattr(ino, b"user.color"))
        await fails(errno.E2BIG, fs.setxattr(ino, b"user.big", b"x" * (64 * 1024 + 1)))
        for i in range(3):
            await fs.setxattr(ino, b"user.v%d" % i, b"x" * 64 * 1024)
        await fails(errno.ENOSPC, fs.setxattr(ino, b"user.v3", b"x" * 64 * 1024))
        d = (await fs.mkdir(env.bucket(), b"d", 0o755, CTX)).id
        await fs.setxattr(d, b"user.dir", b"ok")  # directories carry user xattrs too
        assert await fs.getxattr(d, b"user.dir") == b"ok"


@pytest.mark.parametrize("name", [b"trusted.x", b"security.selinux", b"system.posix_acl_access",
                                  b"os2.x", b"userx"])
@trio_test
async def test_other_namespaces_not_supported(tmp_path, name):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(), b"f")
        await fails(errno.ENOTSUP, fs.getxattr(ino, name))
        await fails(errno.ENOTSUP, fs.setxattr(ino, name, b"v"))
        await fails(errno.ENOTSUP, fs.removexattr(ino, name))


@trio_test
async def test_status_xattrs_read_only(tmp_path):
    import hashlib
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(), b"f", b"hello")
        assert await fs.getxattr(ino, b"user.cos.etag") == hashlib.md5(b"hello").hexdigest().encode()
        assert await fs.getxattr(ino, b"user.cos.version-id") == b"null"
        for name in (b"user.cos.etag", b"user.cos.version-id", b"user.cos.replication-status"):
            await fails(errno.EPERM, fs.setxattr(ino, name, b"forged"))
            await fails(errno.EPERM, fs.removexattr(ino, name))
        await fails(errno.ENODATA, fs.getxattr(ino, b"user.cos.unknown"))
        await fails(errno.EINVAL, fs.setxattr(ino, b"user.cos.unknown", b"v"))
        listed = await fs.listxattr(ino)
        assert b"user.cos.etag" not in listed and b"user.cos.version-id" not in listed
        # bucket region
        b = env.bucket()
        assert await fs.getxattr(b, b"user.cos.bucket-region") == b"ap-guangzhou"
        await fails(errno.EPERM, fs.setxattr(b, b"user.cos.bucket-region", b"ap-shanghai"))


@trio_test
async def test_sse_override_reencrypts(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        data = os.urandom(300000)
        ino = await mkfile(fs, env.bucket(), b"f", data)
        await fails(errno.ENODATA, fs.getxattr(ino, SSE_XATTR))
        assert SSE_XATTR not in await fs.listxattr(ino)
        await fs.setxattr(ino, SSE_XATTR, b"AES256\0")  # setfattr may add a NUL
        assert env.catalog.get_inode(ino).enc == "AES256"
        assert await fs.getxattr(ino, SSE_XATTR) == b"AES256"
        assert SSE_XATTR in await fs.listxattr(ino)
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(data) + 1) == data
        await fs.release(fh)
        # a plaintext copy must not survive in the store
        await env.drain_gc()
        for blob in env.blobs():
            assert data[1000:1064] not in env.region_store.get(blob)
        await fs.removexattr(ino, SSE_XATTR)
        assert env.catalog.get_inode(ino).enc is None
        await fails(errno.ENODATA, fs.getxattr(ino, SSE_XATTR))
        await fails(errno.ENODATA, fs.removexattr(ino, SSE_XATTR))
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(data) + 1) == data
        await fs.release(fh)


@trio_test
async def test_sse_override_in_encrypted_bucket(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(ENC), b"f", b"secret")
        assert await fs.getxattr(ino, SSE_XATTR) == b"AES256"
        # dropping a request that was never made keeps the bucket default
        await fs.removexattr(ino, SSE_XATTR)
        assert await fs.getxattr(ino, SSE_XATTR) == b"AES256"


@pytest.mark.parametrize("value", [b"DES", b"", b"aes256", b"AES256 extra", b"\xff"])
@trio_test
async def test_sse_override_invalid(tmp_path, caplog, value):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(), b"f", b"x")
        await fails(errno.EINVAL, fs.setxattr(ino, SSE_XATTR, value))
        inode = env.catalog.get_inode(ino)
        assert inode.enc is None and inode.enc_request is None
        d = (await fs.mkdir(env.bucket(), b"d", 0o755, CTX)).id
        await fails(errno.EINVAL, fs.setxattr(d, SSE_XATTR, b"AES256"))


@trio_test
async def test_bucket_encryption_xattr(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        await fails(errno.ENODATA, fs.getxattr(b, BUCKET_ENC_XATTR))
        await fails(errno.ENODATA, fs.removexattr(b, BUCKET_ENC_XATTR))
        await fs.setxattr(b, BUCKET_ENC_XATTR, b"AES256\n")
        doc = await fs.getxattr(b, BUCKET_ENC_XATTR)
        assert b"<SSEAlgorithm>AES256</SSEAlgorithm>" in doc
        # a full document works too, and a new object gets the default
        await fs.setxattr(b, BUCKET_ENC_XATTR, doc)
        ino = await mkfile(fs, b, b"new", b"data")
        assert env.catalog.get_inode(ino).enc == "AES256"
        await fails(errno.EINVAL, fs.setxattr(b, BUCKET_ENC_XATTR, b"<Nope/>"))
        await fails(errno.EINVAL, fs.setxattr(b, BUCKET_ENC_XATTR, b"DES"))
        assert await fs.getxattr(b, BUCKET_ENC_XATTR) == doc  # unchanged by the failures
        await fs.removexattr(b, BUCKET_ENC_XATTR)
        await fails(errno.ENODATA, fs.getxattr(b, BUCKET_ENC_XATTR))
        assert env.catalog.get_inode(ino).enc == "AES256"  # stored objects keep theirs
        # only on bucket directories
        d = (await fs.mkdir(b, b"d", 0o755, CTX)).id
        await fails(errno.ENODATA, fs.getxattr(d, BUCKET_ENC_XATTR))
        await fails(errno.EINVAL, fs.setxattr(d, BUCKET_ENC_XATTR, b"AES256"))
        await fails(errno.EINVAL, fs.setxattr(ino, BUCKET_ENC_XATTR, b"AES256"))


@trio_test
async def test_daemon_pid_xattr(tmp_path):
    async with fs_env(tmp_path) as env:
        env.fs.daemon_info = {"pid": 4242}
        assert await env.fs.getxattr(ROOT_INODE, b"user.cos.daemon-pid") == b"4242"


@trio_test
async def test_empty_object_gets_bucket_default(tmp_path):
    """COS encrypts every upload without SSE headers by the bucket default, empty ones too."""
    async with fs_env(tmp_path) as env:
        fs = env.fs
        ino = await mkfile(fs, env.bucket(ENC), b"touched")
        assert await fs.getxattr(ino, SSE_XATTR) == b"AES256"
        assert SSE_XATTR in await fs.listxattr(ino)
        node = await fs.mknod(env.bucket(ENC), b"mknod", stat.S_IFREG | 0o644, 0, CTX)
        assert await fs.getxattr(node.id, SSE_XATTR) == b"AES256"
        plain = await mkfile(fs, env.bucket(PLAIN), b"touched")
        await fails(errno.ENODATA, fs.getxattr(plain, SSE_XATTR))
        # writing later keeps the state decided at creation
        fh = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, 0, b"now with data")
        await fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"


@trio_test
async def test_metadata_changes_never_touch_encryption(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket(ENC)
        ino = await mkfile(fs, b, b"f", b"secret data" * 1000)
        blobs = env.catalog.referenced_blobs()
        await fs.removexattr(b, BUCKET_ENC_XATTR)  # the default goes away
        await fs.setattr(ino, mode=0o600, uid=5, gid=6, atime_ns=1, mtime_ns=2)
        await fs.setxattr(ino, b"user.tag", b"v")
        await fs.removexattr(ino, b"user.tag")
        d = (await fs.mkdir(b, b"d", 0o755, CTX)).id
        await fs.rename(b, b"f", d, b"g")
        await fs.link(ino, b, b"h", CTX)
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, 6) == b"secret"
        await fs.release(fh)
        inode = env.catalog.get_inode(ino)
        assert inode.enc == "AES256" and inode.mtime_ns == 2
        assert env.catalog.referenced_blobs() == blobs


def kernel_now(path):
    """The time the kernel gives a file it is told to stamp now (``touch``)."""
    os.utime(path, None)
    return os.stat(path).st_mtime_ns


@trio_test
async def test_stamps_agree_with_the_kernels_clock(tmp_path):
    """What the filesystem stamps lies between the kernel's file stamps just before and
    just after the request; explicit times are kept to the nanosecond."""
    probe = tmp_path / "probe"
    probe.touch()
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        for i in range(100):
            k0 = kernel_now(probe)
            fh, inode = await fs.create(b, b"f%d" % i, 0o644, os.O_RDWR, CTX)
            k1 = kernel_now(probe)
            assert k0 <= inode.mtime_ns == inode.ctime_ns <= k1
            assert k0 <= (await fs.getattr(b)).mtime_ns <= k1
            await fs.write(fh, 0, b"data")
            await fs.release(fh)
            k2 = kernel_now(probe)
            assert k1 <= env.catalog.get_inode(inode.id).mtime_ns <= k2
            explicit = k2 - 10 ** 10 + i
            got = await fs.setattr(inode.id, atime_ns=explicit, mtime_ns=explicit + 1)
            k3 = kernel_now(probe)
            assert (got.atime_ns, got.mtime_ns) == (explicit, explicit + 1)
            assert k2 <= got.ctime_ns <= k3
            await fs.setxattr(inode.id, b"user.x", b"1")
            sub = await fs.mkdir(b, b"d%d" % i, 0o755, CTX)
            await fs.rename(b, b"f%d" % i, sub.id, b"g")
            k4 = kernel_now(probe)
            assert k3 <= sub.mtime_ns <= env.catalog.get_inode(sub.id).mtime_ns <= k4
            assert k3 <= env.catalog.get_inode(inode.id).ctime_ns <= k4


@trio_test
async def test_utimens_before_close_is_kept(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fh, inode = await fs.create(env.bucket(), b"f", 0o644, os.O_RDWR, CTX)
        await fs.write(fh, 0, b"copied")
        await fs.setattr(inode.id, mtime_ns=123456789)  # cp -p: write, utimens, close
        await fs.release(fh)
        assert env.catalog.get_inode(inode.id).mtime_ns == 123456789


@trio_test
async def test_uncommitted_size_visible_in_getattr(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        fh, inode = await fs.create(env.bucket(), b"f", 0o666, os.O_RDWR, CTX)
        assert stat.S_IMODE(inode.mode) == 0o644  # umask applied
        await fs.write(fh, 1000, b"x")
        assert (await fs.getattr(inode.id)).size == 1001
        assert (await fs.lookup(env.bucket(), b"f")).size == 1001
        await fs.release(fh)


@trio_test
async def test_removed_bucket_inode_purged_on_forget(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        name = b"temp-" + APPID.encode()
        ino = (await fs.mkdir(ROOT_INODE, name, 0o755, CTX)).id
        await fs.setxattr(ino, BUCKET_ENC_XATTR, b"AES256")
        await fs.rmdir(ROOT_INODE, name)
        assert exists(env, ino)
        fs.forget([(ino, 1)])
        assert not exists(env, ino)
        # the name can be used again; the new bucket inherits nothing (even if the
        # inode number is reused, which is allowed once the kernel forgot it)
        new = (await fs.mkdir(ROOT_INODE, name, 0o755, CTX)).id
        await fails(errno.ENODATA, fs.getxattr(new, BUCKET_ENC_XATTR))
        assert names_in(env, new) == []


@trio_test
async def test_rename_directory_key_limit(tmp_path):
    async with fs_env(tmp_path) as env:
        fs = env.fs
        b = env.bucket()
        d = (await fs.mkdir(b, b"d", 0o755, CTX)).id
        await mkfile(fs, d, b"f" * 250)
        deep = b
        for _ in range(3):
            deep = (await fs.mkdir(deep, b"p" * 190, 0o755, CTX)).id
        # "ppp.../ppp.../ppp.../d/fff..." would be 573 + 2 + 251 = 826 bytes: allowed
        await fs.rename(b, b"d", deep, b"d")
        # a longer directory name pushes the object's key past 850 bytes
        await fails(errno.ENAMETOOLONG, fs.rename(deep, b"d", deep, b"d" * 30))
        assert env.catalog.lookup(deep, b"d") == d


@trio_test
async def test_sse_override_when_store_is_full(tmp_path):
    from helpers import REGION
    async with fs_env(tmp_path, faulty=True) as env:
        fs = env.fs
        data = os.urandom(200000)
        ino = await mkfile(fs, env.bucket(), b"f", data)
        env.faulty[REGION].fail("put", errno.ENOSPC)
        await fails(errno.ENOSPC, fs.setxattr(ino, SSE_XATTR, b"AES256"))
        assert env.catalog.get_inode(ino).enc is None
        await fails(errno.ENODATA, fs.getxattr(ino, SSE_XATTR))  # reports the actual state
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 0, len(data)) == data
        await fs.release(fh)
        env.faulty[REGION].heal()
        await fs.setxattr(ino, SSE_XATTR, b"AES256")
        assert await fs.getxattr(ino, SSE_XATTR) == b"AES256"
        await env.drain_gc()
        assert env.blobs() == env.catalog.referenced_blobs()


# -- access(2), asked only where the kernel leaves permission checks out ------------
@trio_test
async def test_access_follows_the_kernels_rules(tmp_path):
    R, W, X = os.R_OK, os.W_OK, os.X_OK
    async with fs_env(tmp_path) as env:
        fs, b = env.fs, env.bucket(PLAIN)
        f = await mkfile(fs, b, b"f")
        await fs.setattr(f, mode=0o640, uid=1000, gid=2000)
        d = (await fs.mkdir(b, b"d", 0o000, CTX)).id
        script = await mkfile(fs, b, b"script")
        await fs.setattr(script, mode=0o701, uid=1000, gid=2000)
        # root: anything but executing what has no execute bit; any directory is searchable
        assert fs.access(f, R | W, 0, 0) and fs.access(f, 0, 0, 0)
        assert not fs.access(f, X, 0, 0) and fs.access(script, X, 0, 0)
        assert fs.access(d, R | W | X, 0, 0)
        # the owner's bits, else the group's (own or supplementary), else everyone's
        assert fs.access(f, R | W, 1000, 5) and not fs.access(f, X, 1000, 5)
        assert fs.access(f, R, 1001, 2000) and not fs.access(f, W, 1001, 2000)
        assert fs.access(f, R, 1001, 5, {7, 2000}) and not fs.access(f, R, 1001, 5, {7})
        assert fs.access(f, 0, 1001, 5) and not fs.access(d, X, 1001, 5)
        assert fs.access(script, R | W | X, 1000, 5)
        assert not fs.access(script, R, 1001, 2000) and fs.access(script, X, 1001, 5)
        # the owner gets the owner's bits even where the group's would allow more
        await fs.setattr(script, mode=0o070)
        assert not fs.access(script, R, 1000, 2000) and fs.access(script, R, 1001, 2000)
        await fs.setattr(script, mode=0o001)  # root may execute what anyone may
        assert fs.access(script, X, 0, 0) and not fs.access(script, X, 1000, 2000)
        # a chmod of an open file counts at once, committed or not
        fh = await fs.open(f, os.O_RDWR, CTX)
        await fs.write(fh, 0, b"x")
        await fs.setattr(f, mode=0o604)
        assert fs.access(f, R, 1001, 5)
        await fs.release(fh)
        assert fs.access(f, R, 1001, 5) and not fs.access(f, R, 1001, 2000)
        fails_sync(errno.ENOENT, fs.access, 999999, R, 0, 0)


@trio_test
async def test_root_only_adapter_refuses_other_file_system_uids(tmp_path, caplog):
    """Without the kernel's checks the FUSE adapter lets only root act: a request with
    another file-system uid (an NFS or SMB server acting for a user) is refused, and the
    first refusal per uid is logged, naming the setting that serves such users."""
    import types

    import pyfuse3

    from cosfs.fuse.ops import Operations
    async with fs_env(tmp_path) as env:
        b = env.bucket(PLAIN)
        f = await mkfile(env.fs, b, b"f")

        def ctx(uid):
            return types.SimpleNamespace(uid=uid, gid=0, pid=os.getpid(), umask=0o022)
        checked, root_only = Operations(env.fs), Operations(env.fs, root_only=True)
        assert (await checked.getattr(f, ctx(1000))).st_ino == f
        assert (await root_only.getattr(f, ctx(0))).st_ino == f
        assert await root_only.access(f, os.R_OK, ctx(0))
        caplog.set_level(logging.WARNING)
        for call in (lambda: root_only.getattr(f, ctx(1000)),
                     lambda: root_only.lookup(b, b"f", ctx(1000)),
                     lambda: root_only.open(f, os.O_RDONLY, ctx(1000)),
                     lambda: root_only.unlink(b, b"f", ctx(1001)),
                     lambda: root_only.getxattr(f, b"user.x", ctx(1000)),
                     lambda: root_only.setxattr(f, b"user.x", b"1", ctx(1000)),
                     lambda: root_only.removexattr(f, b"user.x", ctx(1000))):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await call()
            assert info.value.errno == errno.EACCES
        refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(refusals) == 2 and "uid 1000" in refusals[0], refusals
        assert "default_permissions: true" in refusals[0]
        assert exists(env, f)


@trio_test
async def test_adapter_refuses_other_xattr_namespaces_first(tmp_path):
    """Attributes outside the user namespace are refused (ENOTSUP) before anything else:
    the kernel's ``security.capability`` lookup before every write(2) costs no caller
    check, no core call and no timing; ``user.`` names take the full way."""
    import types

    import pyfuse3

    from cosfs import metrics
    from cosfs.fuse.ops import Operations
    async with fs_env(tmp_path) as env:
        b = env.bucket(PLAIN)
        f = await mkfile(env.fs, b, b"f")
        ops = Operations(env.fs, root_only=True)
        nobody = types.SimpleNamespace(uid=1000, gid=0, pid=os.getpid(), umask=0o022)

        def timed():
            return metrics.REGISTRY.get_sample_value(
                "cosfs_fuse_request_seconds_count", {"operation": "getxattr"}) or 0
        before = timed()
        for call in (lambda: ops.getxattr(f, b"security.capability", nobody),
                     lambda: ops.getxattr(f, b"system.posix_acl_access", None),
                     lambda: ops.setxattr(f, b"trusted.x", b"1", nobody),
                     lambda: ops.removexattr(f, b"security.selinux", nobody)):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await call()
            assert info.value.errno == errno.ENOTSUP
        assert timed() == before
        await ops.setxattr(f, b"user.k", b"v", None)
        assert await ops.getxattr(f, b"user.k", None) == b"v"
        assert timed() == before + 1
        await ops.removexattr(f, b"user.k", None)


@trio_test
async def test_negative_lookup_raises_nothing_for_the_adapter(tmp_path):
    """A name that does not exist: ENOENT for the core's callers, None for the FUSE
    adapter (``missing_ok``), which answers the kernel a cached negative entry."""
    from cosfs.fuse.ops import Operations
    async with fs_env(tmp_path) as env:
        b = env.bucket(PLAIN)
        await mkfile(env.fs, b, b"there")
        assert await env.fs.lookup(b, b"absent", missing_ok=True) is None
        await fails(errno.ENOENT, env.fs.lookup(b, b"absent"))
        assert (await env.fs.lookup(b, b"there", missing_ok=True)).size == 0
        e = await Operations(env.fs).lookup(b, b"absent", None)
        assert e.st_ino == 0 and e.entry_timeout > 0
        await fails(errno.ENAMETOOLONG, env.fs.lookup(b, b"n" * 300, missing_ok=True))
