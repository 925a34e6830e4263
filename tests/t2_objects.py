"""The object data path (cosfs.objects) under trio, without FUSE.

Content is checked against plain bytearray models; the chunk store is
inspected directly to check the invariants of the design (no plaintext in
the store for encrypted objects, data before metadata, superseded blobs
collected, bounded memory) and wrapped in FaultyStore to check failures.
"""

import errno
import os
import random
import subprocess
import sys
import threading
import time

import pytest
import trio

from cosfs import cipher, durable
from cosfs import objects as objects_module
from cosfs import reader as reader_module
from cosfs.chunkbuf import PartialChunk, held
from cosfs.errors import CosfsError, StoreError
from cosfs.objects import ObjectState, ObjectStore

import helpers
from helpers import ENC, PLAIN, REGION, fs_env, tmp_path, trio_test  # noqa: F401

KiB = 1024
MiB = 1024 * KiB
CS = 128 * KiB  # chunk size of most tests: two cipher segments per chunk


def pattern(n, seed=0):
    """``n`` bytes that are unlikely to appear by chance (for plaintext-leak checks)."""
    return random.Random(seed).randbytes(n)


async def write_file(env, name, data, bucket=PLAIN, piece=None):
    fh, ino = await env.new_file(name, bucket=bucket)
    step = piece or max(1, len(data))
    for off in range(0, len(data), step):
        await env.fs.write(fh, off, data[off:off + step])
    await env.fs.release(fh)
    return ino


def committed_reader(env):
    """A second data path over the same catalog: it sees only committed state."""
    return ObjectStore(env.catalog, env.store.stores, env.store.keys,
                       chunk_size=env.objects.chunk_size, cache_size=0, write_buffer=0)


async def read_all(objects, ino):
    return await objects.read(ino, 0, objects.size_of(ino) + 1)


def referenced(env):
    return env.catalog.referenced_blobs()


def assert_no_plaintext(env, data, probe=48):
    """No ``probe``-byte window of ``data`` (sampled) appears in any blob."""
    store = env.region_store
    windows = {data[i:i + probe] for i in range(0, max(1, len(data) - probe), 997)}
    for blob in store.list():
        raw = store.get(blob)
        for w in windows:
            assert w not in raw, "plaintext found in blob %s" % blob.hex()


# -- round trips --------------------------------------------------------------------
SIZES = [0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, CS - 1, CS, CS + 1, 5 * CS + 123]


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_round_trip_sizes(tmp_path, bucket):
    files = {}
    async with fs_env(tmp_path, chunk_size=CS) as env:
        for n, size in enumerate(SIZES):
            data = pattern(size, n)
            ino = await write_file(env, "f%d" % size, data, bucket=bucket, piece=48 * KiB)
            files[ino] = data
            assert await read_all(env.objects, ino) == data
            inode = env.catalog.get_inode(ino)
            assert inode.size == size
            assert inode.enc == ("AES256" if bucket == ENC and size else inode.enc)
            if bucket == ENC and size:
                assert inode.enc == "AES256" and inode.wrapped_key
            if bucket == PLAIN:
                assert inode.enc is None
            assert len(env.catalog.chunks(ino)) == -(-size // CS)
        if bucket == ENC:
            assert_no_plaintext(env, b"".join(files.values()))
        cfg = env.config
    # a fresh process sees the same content
    async with fs_env(tmp_path, reopen_config=cfg) as env:
        for ino, data in files.items():
            assert await read_all(env.objects, ino) == data
            for off in (0, 1, CS - 3, CS, len(data) // 2):
                assert await env.objects.read(ino, off, 70000) == data[off:off + 70000]


@trio_test
async def test_encrypted_blobs_have_sealed_size(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        ino = await write_file(env, "f", pattern(3 * CS + 5), bucket=ENC)
        chunks = env.catalog.chunks(ino)
        for ch in chunks[:3]:
            assert not ch.packed
            assert env.region_store.size(ch.blob) == cipher.sealed_size(ch.length)
        # the 5-byte tail is packed into the catalog, sealed the same way
        assert chunks[3].packed and len(chunks[3].data) == cipher.sealed_size(5)
        assert pattern(3 * CS + 5)[-5:] not in chunks[3].data


@trio_test
async def test_sparse_write_reads_zeros(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        for bucket in (PLAIN, ENC):
            fh, ino = await env.new_file("sparse", bucket=bucket)
            await env.fs.write(fh, 10 * CS + 7, b"end")
            await env.fs.write(fh, 3, b"start")
            await env.fs.release(fh)
            data = await read_all(env.objects, ino)
            expect = bytearray(10 * CS + 10)
            expect[3:8] = b"start"
            expect[-3:] = b"end"
            assert data == bytes(expect)
            assert len(env.catalog.chunks(ino)) == 2  # holes take no blobs


# -- random access against a model ----------------------------------------------------
def _rand_len(rng):
    return rng.choice([1, 2, 100, 4096, 64 * KiB - 1, 64 * KiB + 1, CS - 1, CS, CS + 1,
                       rng.randrange(1, 3 * CS)])


@pytest.mark.parametrize("bucket,seed", [(PLAIN, 1), (ENC, 2), (PLAIN, 3), (ENC, 4)])
@trio_test
async def test_random_ops_match_model(tmp_path, bucket, seed):
    rng = random.Random(seed)
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS) as env:
        fs = env.fs
        fh, ino = await env.new_file("model", bucket=bucket)
        model = bytearray()
        for step in range(160):
            op = rng.random()
            if op < 0.45:
                off = rng.randrange(0, len(model) + 2 * CS)
                data = rng.randbytes(_rand_len(rng))
                assert await fs.write(fh, off, data) == len(data)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
            elif op < 0.7:
                off = rng.randrange(0, len(model) + CS)
                n = _rand_len(rng)
                got = await fs.read(fh, off, n)
                assert got == bytes(model[off:off + n]), "step %d read %d+%d" % (step, off, n)
            elif op < 0.77:
                size = rng.choice([0, rng.randrange(0, len(model) + 1),
                                   rng.randrange(0, len(model) + 2 * CS),
                                   (len(model) // CS) * CS])
                await fs.setattr(ino, size=size)
                if size < len(model):
                    del model[size:]
                else:
                    model.extend(bytes(size - len(model)))
            elif op < 0.85:
                off = rng.choice([rng.randrange(0, len(model) + CS),
                                  rng.randrange(0, len(model) // CS + 2) * CS])
                n = _rand_len(rng)
                mode = rng.choice([0, KEEP_SIZE, PUNCH_HOLE | KEEP_SIZE, ZERO_RANGE,
                                   ZERO_RANGE | KEEP_SIZE])
                await fs.fallocate(fh, off, n, mode)
                if mode & (PUNCH_HOLE | ZERO_RANGE):
                    end = min(off + n, len(model))
                    if off < end:
                        model[off:end] = bytes(end - off)
                if not mode & KEEP_SIZE and off + n > len(model):
                    model.extend(bytes(off + n - len(model)))
            elif op < 0.92:
                await fs.flush(fh)
                assert await read_all(committed_reader(env), ino) == bytes(model)
            else:
                await fs.release(fh)
                fh = await fs.open(ino, os.O_RDWR)
            assert (await fs.getattr(ino)).size == len(model)
        await fs.release(fh)
        assert await read_all(env.objects, ino) == bytes(model)
        assert await read_all(committed_reader(env), ino) == bytes(model)
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_a_small_files_commit_does_not_pass_through_the_scheduler(tmp_path):
    """A reader's close commits nothing and never waits, and the commit of a small file
    (one chunk, sealed inline) does not wait either: neither passes through trio's
    scheduler (a checkpoint would raise Cancelled here). A commit that must wait for a
    worker (a chunk too large to seal inline) does."""
    async with fs_env(tmp_path, chunk_size=256 * KiB) as env:
        ino = await write_file(env, "r", b"data")
        fh = await env.fs.open(ino, os.O_RDWR)
        with trio.CancelScope() as scope:
            scope.cancel()
            await env.objects.commit(ino)
            await env.fs.release(fh)
        assert not scope.cancelled_caught
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 0, b"more")
        with trio.CancelScope() as scope:
            scope.cancel()
            await env.objects.commit(ino)
        assert not scope.cancelled_caught
        assert await read_all(committed_reader(env), ino) == b"more"
        big = pattern(objects_module.INLINE_WRITE_LIMIT + 1)  # one chunk, sealed in a worker
        await env.fs.write(fh, 0, big)
        with trio.CancelScope() as scope:
            scope.cancel()
            await env.objects.commit(ino)
        assert scope.cancelled_caught
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == big


# -- fallocate -------------------------------------------------------------------------
KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE = 0x01, 0x02, 0x10


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_punched_chunks_are_stored_as_nothing(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(6 * CS + 100)
        ino = await write_file(env, "p", data, bucket=bucket)
        fs = env.fs
        fh = await fs.open(ino, os.O_RDWR)
        before = env.catalog.stored_length(ino)
        # chunks 1 to 3 wholly, the end of chunk 0 and the start of chunk 4
        await fs.fallocate(fh, CS - 1000, 3 * CS + 2000, PUNCH_HOLE | KEEP_SIZE)
        expect = bytearray(data)
        expect[CS - 1000:4 * CS + 1000] = bytes(3 * CS + 2000)
        assert (await fs.getattr(ino)).size == len(data)
        assert await read_all(committed_reader(env), ino) == bytes(expect)
        idxs = [c.idx for c in env.catalog.chunks(ino)]
        assert idxs == [0, 4, 5, 6]
        # chunk 0 was cut where the hole starts; chunk 4 holds zeros, then data
        assert env.catalog.chunk(ino, 0).length == CS - 1000
        assert env.catalog.chunk(ino, 4).length == CS
        assert env.catalog.stored_length(ino) == before - 3 * CS - 1000
        # the tail of the file, past its last chunk: the size stays, the bytes go
        await fs.fallocate(fh, 6 * CS, 10 * CS, PUNCH_HOLE | KEEP_SIZE)
        expect[6 * CS:] = bytes(100)
        assert [c.idx for c in env.catalog.chunks(ino)] == [0, 4, 5]
        await fs.release(fh)
        assert await read_all(committed_reader(env), ino) == bytes(expect)
        assert (await fs.getattr(ino)).size == len(data)
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_fallocate_modes_and_sizes(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        fs = env.fs
        fh, ino = await env.new_file("m", bucket=ENC)
        await fs.write(fh, 0, b"x" * 5000)
        await fs.fallocate(fh, 0, 3 * CS, 0)  # grows; nothing stored for the new bytes
        assert (await fs.getattr(ino)).size == 3 * CS
        assert [c.idx for c in env.catalog.chunks(ino)] == [0]
        await fs.fallocate(fh, 0, 10 * CS, KEEP_SIZE)
        assert (await fs.getattr(ino)).size == 3 * CS
        with pytest.raises(CosfsError) as info:  # no disk has room for a pebibyte
            await fs.fallocate(fh, 0, 1 << 50, 0)
        assert info.value.errno == errno.ENOSPC
        assert (await fs.getattr(ino)).size == 3 * CS
        await fs.fallocate(fh, 100, 100, ZERO_RANGE)  # inside the data: zeroed, stored
        await fs.fallocate(fh, 4 * CS, 10, ZERO_RANGE)  # past the end: grows
        assert (await fs.getattr(ino)).size == 4 * CS + 10
        await fs.fallocate(fh, 5 * CS, 10, ZERO_RANGE | KEEP_SIZE)
        assert (await fs.getattr(ino)).size == 4 * CS + 10
        expect = b"x" * 100 + bytes(100) + b"x" * 4800
        assert await fs.read(fh, 0, 5000) == expect
        t = (await fs.getattr(ino)).mtime_ns
        await fs.fallocate(fh, 0, 1, KEEP_SIZE)
        assert (await fs.getattr(ino)).mtime_ns >= t  # the times move, as on ext4
        for off, n, mode, code in [(-1, 10, 0, errno.EINVAL), (0, 0, 0, errno.EINVAL),
                                   (0, 10, PUNCH_HOLE, errno.EOPNOTSUPP),
                                   (0, 10, PUNCH_HOLE | ZERO_RANGE | KEEP_SIZE,
                                    errno.EOPNOTSUPP),
                                   (0, 10, 0x08, errno.EOPNOTSUPP),  # collapse
                                   (0, 10, 0x20, errno.EOPNOTSUPP),  # insert
                                   (1 << 62, 1 << 62, 0, errno.EFBIG)]:
            with pytest.raises(CosfsError) as info:
                await fs.fallocate(fh, off, n, mode)
            assert info.value.errno == code, (off, n, mode)
        await fs.release(fh)
        ro = await fs.open(ino, os.O_RDONLY)
        with pytest.raises(CosfsError) as info:
            await fs.fallocate(ro, 0, 10, 0)
        assert info.value.errno == errno.EBADF
        await fs.release(ro)
        assert await read_all(committed_reader(env), ino) == expect + bytes(4 * CS + 10 - 5000)


@trio_test
async def test_a_punch_that_cannot_load_its_end_chunk_changes_nothing(tmp_path):
    """The chunk at the far end of the range is damaged: the fallocate fails with EIO
    before it changes anything (the near end, which a careless order would cut first,
    stays)."""
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(4 * CS, 4)
        ino = await write_file(env, "d", data, bucket=ENC)
        path = env.region_store._path(env.catalog.chunk(ino, 3).blob)
        raw = bytearray(open(path, "rb").read())
        raw[cipher.HEADER_SIZE + 100] ^= 1
        open(path, "wb").write(raw)
        fh = await env.fs.open(ino, os.O_RDWR)
        with pytest.raises(CosfsError) as info:
            await env.fs.fallocate(fh, CS - 1000, 2 * CS + 2000, PUNCH_HOLE | KEEP_SIZE)
        assert info.value.errno == errno.EIO
        st = env.objects.states[ino]
        assert not st.pending and all(  # chunk 0 may stay loaded, as it was
            bytes(buf) == data[i * CS:(i + 1) * CS] for i, buf in st.dirty.items())
        await env.fs.release(fh)
        assert await committed_reader(env).read(ino, 0, 3 * CS) == data[:3 * CS]
        assert [c.idx for c in env.catalog.chunks(ino)] == [0, 1, 2, 3]


@trio_test
async def test_a_punch_wins_over_a_seal_under_way(tmp_path, monkeypatch):
    """A chunk being sealed (in a worker) when a hole is punched over it: the seal's
    result is discarded, the hole is what the commit records."""
    cs = 256 * KiB  # sealed in a worker thread (objects.INLINE_WRITE_LIMIT)
    async with fs_env(tmp_path, chunk_size=cs) as env:
        fs = env.fs
        data = pattern(3 * cs)
        ino = await write_file(env, "s", data)
        fh = await fs.open(ino, os.O_RDWR)
        await fs.write(fh, cs, b"y" * cs)  # a whole-chunk buffer for chunk 1
        st = env.objects.states[ino]
        started, go = threading.Event(), threading.Event()
        real = objects_module.seal_put

        def slow_put(*args):
            started.set()
            go.wait(10)
            return real(*args)
        monkeypatch.setattr(objects_module, "seal_put", slow_put)
        async with trio.open_nursery() as n:
            n.start_soon(env.objects._flush_chunk, st, 1)
            await trio.to_thread.run_sync(started.wait, 10)
            n.start_soon(fs.fallocate, fh, cs, cs, PUNCH_HOLE | KEEP_SIZE)
            await trio.sleep(0.05)
            assert 1 not in st.dirty and st.pending.get(1, 0) is None
            go.set()
        await fs.release(fh)
        expect = data[:cs] + bytes(cs) + data[2 * cs:]
        assert await read_all(committed_reader(env), ino) == expect
        assert [c.idx for c in env.catalog.chunks(ino)] == [0, 2]
        await env.drain_gc()
        assert env.blobs() == referenced(env)


# -- truncate --------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_truncate_down_and_up(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(3 * CS + 100)
        ino = await write_file(env, "t", data, bucket=bucket)
        fs = env.fs
        for size, expect in [
            (2 * CS + 10, data[:2 * CS + 10]),
            (2 * CS + 10 + 5000, data[:2 * CS + 10] + bytes(5000)),  # old bytes never come back
            (CS, data[:CS]),
            (CS + 1, data[:CS] + b"\0"),
            (5, data[:5]),
            (0, b""),
            (4 * CS, bytes(4 * CS)),
        ]:
            await fs.setattr(ino, size=size)
            assert env.catalog.get_inode(ino).size == size
            assert await read_all(env.objects, ino) == expect
            assert await read_all(committed_reader(env), ino) == expect
            chunks = env.catalog.chunks(ino)
            assert all(c.idx * CS < max(size, 1) for c in chunks)
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_truncate_with_uncommitted_data(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        fh, ino = await env.new_file("t", bucket=ENC)
        data = pattern(3 * CS)
        await env.fs.write(fh, 0, data)
        await env.fs.setattr(ino, size=CS + 3)
        await env.fs.write(fh, 2 * CS, b"tail")
        await env.fs.release(fh)
        expect = data[:CS + 3] + bytes(CS - 3) + b"tail"
        assert await read_all(committed_reader(env), ino) == expect


# -- concurrency -------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_two_handles_write_concurrently(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS) as env:
        fs = env.fs
        fh0, ino = await env.new_file("shared", bucket=bucket)
        fh1 = await fs.open(ino, os.O_RDWR)
        size = 4 * CS
        piece = 3000
        a = pattern(size, 1)
        b = pattern(size, 2)
        expect = bytearray(size)
        # handle 0 writes the even pieces, handle 1 the odd ones: they share every chunk
        for off in range(0, size, piece):
            src = a if (off // piece) % 2 == 0 else b
            expect[off:off + piece] = src[off:off + piece]

        async def writer(fh, src, parity):
            for off in range(parity * piece, size, 2 * piece):
                await fs.write(fh, off, src[off:off + piece])
                await trio.sleep(0)

        async with trio.open_nursery() as n:
            n.start_soon(writer, fh0, a, 0)
            n.start_soon(writer, fh1, b, 1)
        assert await fs.read(fh0, 0, size) == bytes(expect)
        await fs.release(fh0)  # one close commits; the other handle stays usable
        assert await read_all(committed_reader(env), ino) == bytes(expect)
        await fs.write(fh1, 0, b"again")
        expect[:5] = b"again"
        await fs.release(fh1)
        assert await read_all(committed_reader(env), ino) == bytes(expect)
        assert ino not in env.objects.states


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_commits_while_writing(tmp_path, bucket):
    rng = random.Random(7)
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS) as env:
        fh, ino = await env.new_file("busy", bucket=bucket)
        model = bytearray()
        done = trio.Event()

        async def writer():
            for _ in range(120):
                off = rng.randrange(0, len(model) + CS)
                data = rng.randbytes(rng.choice([100, 5000, CS, CS + 7]))
                await env.fs.write(fh, off, data)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + len(data)] = data
                await trio.sleep(0)
            done.set()

        async def committer():
            while not done.is_set():
                await env.fs.flush(fh)
                await trio.sleep(0)

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            n.start_soon(committer)
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == bytes(model)
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_only_sequential_writers_get_chunks_sealed_at_once(tmp_path):
    """A chunk that a write completes is sealed in the background when the writer goes
    on where its last write ended; a random writer that happens to end a chunk keeps
    it buffered (it will likely write into it again)."""
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=16 * CS) as env:
        fh, ino = await env.new_file("f", bucket=ENC)
        st = env.objects.states[ino]
        piece = 32 * KiB
        for off in range(0, 2 * CS, piece):  # sequential: both chunks go to sealing
            await env.fs.write(fh, off, pattern(piece, off))
        await env.objects.commit(ino)
        await env.fs.write(fh, 5 * piece, pattern(piece, 1))  # random, inside chunk 1
        assert 1 in st.dirty
        await env.fs.write(fh, CS - piece, pattern(piece, 2))  # random, ends chunk 0
        await trio.sleep(0.05)
        assert 0 in st.dirty and not st.flushing and not st.pending
        await env.fs.write(fh, 0, pattern(piece, 3))  # chunk 0 written again, in memory
        sealed = []
        real = env.objects._flush_bg

        async def counting(st_, idx):
            sealed.append(idx)
            await real(st_, idx)
        env.objects._flush_bg = counting
        await env.fs.write(fh, piece, pattern(CS - piece, 4))  # on from there to the chunk's end
        await trio.sleep(0.05)
        assert sealed == [0]
        await env.fs.release(fh)
        expect = bytearray(pattern(piece, 3) + pattern(CS - piece, 4))
        second = bytearray(CS)
        for off in range(CS, 2 * CS, piece):
            second[off - CS:off - CS + piece] = pattern(piece, off)
        second[5 * piece - CS:6 * piece - CS] = pattern(piece, 1)
        assert await read_all(committed_reader(env), ino) == bytes(expect + second)


@pytest.mark.parametrize("loads", ["inline", "worker"])
@trio_test
async def test_a_full_write_buffer_seals_the_least_recently_written_chunk(tmp_path, loads,
                                                                         monkeypatch):
    """A random writer's hot chunks stay in memory: when buffers exceed write_buffer the
    chunks written longest ago are sealed (in the background), not those loaded first;
    whether a chunk load runs on the trio thread or in a worker (a slow disk), during
    which the background sealing runs."""
    if loads == "worker":
        monkeypatch.setattr(reader_module, "INLINE_READ_LIMIT", 0)
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=3 * CS) as env:
        data = bytearray(pattern(6 * CS, 8))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = env.objects.states[ino]

        async def poke(idx, seed):
            piece = pattern(100, seed)
            off = idx * CS + 1000 + seed
            await env.fs.write(fh, off, piece)
            data[off:off + 100] = piece

        for seed, idx in enumerate([0, 1, 2, 0, 3]):  # chunk 0 written again before 3
            await poke(idx, seed)
        assert sorted(st.dirty) == [0, 1, 2, 3]  # over the limit: the next write seals
        await poke(4, 9)
        await relieved(env)
        assert sorted(st.dirty) == [0, 3, 4]  # 1 and 2 were the least recently written
        whole = pattern(CS, 10)  # a whole chunk written counts as written too
        await env.fs.write(fh, 2 * CS, whole)
        data[2 * CS:3 * CS] = whole
        await poke(5, 11)
        await relieved(env)
        assert sorted(st.dirty) == [2, 4, 5]  # 0 and 3 went, not 2
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


def whole_chunk_loads(monkeypatch):
    """Writes load whole chunks, never partial ones (cosfs.chunkbuf): for tests of how
    whole buffers are sealed and replaced."""
    monkeypatch.setattr(objects_module, "PARTIAL_MIN", 1 << 62)


def partial_loads(monkeypatch):
    """Writes start partly held chunks (cosfs.chunkbuf) even while the write buffers
    have room for whole ones."""
    monkeypatch.setattr(ObjectStore, "_roomy", lambda self: False)


def reseal_slowly(monkeypatch, env, ino, idx):
    """Ask for AES256 on ``ino`` (a rewrite re-seals it) and make the re-seal of chunk
    ``idx`` take 0.3 s; returns an event set when that re-seal starts."""
    resealing = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = objects_module.reseal

    def slow(store, old, crypt, ch, *args):
        if ch.idx == idx:
            trio.from_thread.run_sync(resealing.set, trio_token=token)
            time.sleep(0.3)
        return real(store, old, crypt, ch, *args)

    monkeypatch.setattr(objects_module, "reseal", slow)
    with env.catalog.transaction():
        env.catalog.update_inode(ino, enc_request="AES256")
    return resealing


def before_each_lock(monkeypatch, st, hook):
    """Run ``await hook(n)`` before the n-th (from 0) acquisition of the object's commit
    lock: a change made just before a commit, or a re-encryption, takes it."""
    lock = st.commit_lock
    real = lock.acquire
    calls = []

    async def acquire():
        calls.append(1)
        await hook(len(calls) - 1)
        await real()

    monkeypatch.setattr(lock, "acquire", acquire)


async def relieved(env):
    """Wait for the background sealing that makes room in the write buffers."""
    with trio.fail_after(10):
        while env.objects._relieving:
            await trio.sleep(0.005)


@pytest.mark.parametrize("loads", ["inline", "worker"])
@trio_test
async def test_a_writer_waits_for_room_only_above_the_hard_limit(tmp_path, loads, monkeypatch):
    """Over write_buffer, sealing runs beside the writer; a writer seals by itself only
    when the buffers pass write_limit, and they come back down to write_buffer. Chunks
    of 256 KiB are sealed (and loaded) in workers, so the two overlap."""
    if loads == "worker":
        monkeypatch.setattr(reader_module, "INLINE_READ_LIMIT", 0)
    whole_chunk_loads(monkeypatch)
    cs = 256 * KiB
    async with fs_env(tmp_path, chunk_size=cs, write_buffer=4 * cs) as env:
        objects = env.objects
        assert objects.write_limit == 6 * cs
        data = bytearray(pattern(12 * cs, 3))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        sealed = {"background": 0, "writer": 0}
        flush = objects._flush_chunk

        async def counting_flush(state, idx, writeback=True):
            sealed["background" if objects._relieving and not writeback else "writer"] += 1
            await flush(state, idx, writeback)

        monkeypatch.setattr(objects, "_flush_chunk", counting_flush)
        real_relieve = objects._relieve
        waits = []

        async def counting_relieve(state, limit):
            waits.append(limit)
            await real_relieve(state, limit)

        monkeypatch.setattr(objects, "_relieve", counting_relieve)
        peak = 0
        for step in range(120):
            idx = (step * 7) % 12
            off = idx * cs + step * 13
            piece = pattern(64, step)
            await env.fs.write(fh, off, piece)
            data[off:off + 64] = piece
            peak = max(peak, objects.budget.total)
        assert objects.write_buffer < peak <= objects.write_limit + cs
        assert all(limit == objects.write_limit for limit in waits)
        await relieved(env)
        assert objects.budget.total <= objects.write_buffer
        assert sealed["background"] > 0 and st.pending  # sealed chunks wait for the commit
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_read_during_background_flush(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS) as env:
        fh, ino = await env.new_file("f", bucket=ENC)
        data = pattern(6 * CS)
        results = []

        async def reader():
            for _ in range(40):
                size = env.objects.size_of(ino)
                got = await env.fs.read(fh, 0, size)
                results.append(got == data[:size])
                await trio.sleep(0)

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            for off in range(0, len(data), 32 * KiB):
                await env.fs.write(fh, off, data[off:off + 32 * KiB])
                await trio.sleep(0)
        assert all(results)
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


# -- encryption state changes -----------------------------------------------------------------
@trio_test
async def test_rewrite_after_enc_request(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(3 * CS + 17)
        ino = await write_file(env, "r", data)
        plain_blobs = {c.blob for c in env.catalog.chunks(ino)}
        with env.catalog.transaction():
            env.catalog.update_inode(ino, enc_request="AES256")
        await env.objects.rewrite(ino)
        inode = env.catalog.get_inode(ino)
        assert inode.enc == "AES256" and inode.size == len(data)
        assert not plain_blobs & referenced(env)
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)
        assert_no_plaintext(env, data)
        # back to plain
        with env.catalog.transaction():
            env.catalog.update_inode(ino, enc_request=None)
        await env.objects.rewrite(ino)
        assert env.catalog.get_inode(ino).enc is None
        assert await read_all(committed_reader(env), ino) == data
        # nothing to do: no new blobs
        before = referenced(env)
        await env.objects.rewrite(ino)
        assert referenced(env) == before


@trio_test
async def test_rewrite_keeps_uncommitted_writes(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        fh, ino = await env.new_file("r")
        await env.fs.write(fh, 0, b"a" * (CS + 5))
        await env.fs.flush(fh)
        await env.fs.write(fh, CS, b"BBBB")
        with env.catalog.transaction():
            env.catalog.update_inode(ino, enc_request="AES256")
        await env.objects.rewrite(ino)
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"
        expect = b"a" * CS + b"BBBB" + b"a"
        assert await read_all(committed_reader(env), ino) == expect


@trio_test
async def test_bucket_default_change_reencrypts_on_next_write(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = bytearray(pattern(4 * CS))
        ino = await write_file(env, "d", bytes(data))
        env.fs.put_bucket_encryption(env.bucket(PLAIN), b"AES256")
        assert env.catalog.get_inode(ino).enc is None  # stored objects are not touched
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, CS + 1, b"x")
        data[CS + 1] = ord("x")
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"  # the whole object, not one chunk
        assert await read_all(committed_reader(env), ino) == bytes(data)
        await env.drain_gc()
        assert_no_plaintext(env, bytes(data))


@trio_test
async def test_small_write_rewrites_one_chunk(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(8 * CS)
        ino = await write_file(env, "s", data, bucket=ENC)
        before = {c.idx: c.blob for c in env.catalog.chunks(ino)}
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 5 * CS + 10, b"zz")
        await env.fs.release(fh)
        after = {c.idx: c.blob for c in env.catalog.chunks(ino)}
        assert [i for i in after if after[i] != before[i]] == [5]


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_a_small_write_loads_its_chunk_in_one_read_and_caches_nothing(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        data = bytearray(pattern(3 * CS + 5000, 3))
        ino = await write_file(env, "s", bytes(data), bucket=bucket)
        store = env.faulty[REGION]
        env.objects.reader.cache = type(env.objects.reader.cache)(16 * MiB)
        store.tells = False  # no RWF_NOWAIT probe: every read is counted once
        store.calls.clear()
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 2 * CS + 10, b"zz")
        data[2 * CS + 10:2 * CS + 12] = b"zz"
        assert store.calls.get("get_range") == 1  # both segments in one read
        # the chunk's old blob is about to be replaced: its plaintext is not cached
        assert len(env.objects.reader.cache.entries) == 0
        # a chunk whose segments are all cached is loaded from the cache
        assert await env.objects.read(ino, CS, CS) == data[CS:2 * CS]
        store.calls.clear()
        await env.fs.write(fh, CS + 70 * KiB, b"yy")
        data[CS + 70 * KiB:CS + 70 * KiB + 2] = b"yy"
        assert "get_range" not in store.calls
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@pytest.mark.parametrize("loads", ["whole", "partial"])
@trio_test
async def test_a_chunk_written_while_a_writer_loads_it_is_not_lost(tmp_path, loads,
                                                                  monkeypatch):
    """A writer's load of a stored chunk waits for the disk; meanwhile another handle
    replaces the whole chunk and commits. The loaded copy is stale then: the first
    writer's bytes go into the new content, never into the old."""
    if loads == "whole":
        whole_chunk_loads(monkeypatch)
    else:  # the one segment a partial chunk loads must go to a worker too
        monkeypatch.setattr(reader_module, "INLINE_READ_LIMIT", 0)
        partial_loads(monkeypatch)
    cs = 4 * 64 * KiB  # loaded in a worker thread (more than an inline read)
    async with fs_env(tmp_path, chunk_size=cs, faulty=True) as env:
        ino = await write_file(env, "f", pattern(2 * cs, 1), bucket=ENC)
        fh1 = await env.fs.open(ino, os.O_RDWR)
        fh2 = await env.fs.open(ino, os.O_RDWR)
        new = pattern(cs, 2)
        env.faulty[REGION].delay = 0.3

        async def replace():
            await trio.sleep(0.05)  # the load is under way
            await env.fs.write(fh2, cs, new)
            await env.objects.commit(ino)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(replace)
            await env.fs.write(fh1, cs + 5, b"zz")
        env.faulty[REGION].delay = 0
        await env.fs.release(fh1)
        await env.fs.release(fh2)
        got = (await read_all(committed_reader(env), ino))[cs:]
        assert got == new[:5] + b"zz" + new[7:]  # the load saw the new chunk


@trio_test
async def test_a_write_into_a_damaged_chunk_fails_and_changes_nothing(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(2 * CS, 4)
        ino = await write_file(env, "d", data, bucket=ENC)
        blob = env.catalog.chunk(ino, 1).blob
        path = env.region_store._path(blob)
        raw = bytearray(open(path, "rb").read())
        raw[cipher.HEADER_SIZE + 100] ^= 1
        with open(path, "wb") as f:
            f.write(raw)
        fh = await env.fs.open(ino, os.O_RDWR)
        with pytest.raises(CosfsError) as ei:
            await env.fs.write(fh, CS + 10, b"zz")
        assert ei.value.errno == errno.EIO
        await env.fs.write(fh, 10, b"ok")  # the mount goes on: other chunks still work
        await env.fs.release(fh)
        assert (await env.objects.read(ino, 0, 20))[10:12] == b"ok"
        assert env.catalog.chunk(ino, 1).blob == blob


@trio_test
async def test_etag_is_md5_of_plaintext(tmp_path):
    import hashlib
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(2 * CS + 3)
        ino = await write_file(env, "e", data, bucket=ENC)
        assert await env.objects.etag(ino) == hashlib.md5(data).hexdigest()
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 0, b"Z")
        await env.fs.release(fh)
        assert await env.objects.etag(ino) == hashlib.md5(b"Z" + data[1:]).hexdigest()


# -- commit atomicity ------------------------------------------------------------------------
@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_commit_points_only_at_stored_blobs(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS) as env:
        fh, ino = await env.new_file("c", bucket=bucket)
        for round_ in range(4):
            data = pattern(3 * CS + round_ * 1000, round_)
            for off in range(0, len(data), 40 * KiB):
                await env.fs.write(fh, off, data[off:off + 40 * KiB])
            await env.fs.flush(fh)
            stored = env.blobs()
            assert referenced(env) <= stored
            assert await read_all(committed_reader(env), ino) == data
            await env.drain_gc()
            assert env.blobs() == referenced(env)  # superseded blobs collected
            assert env.catalog.garbage() == []
        await env.fs.release(fh)


@trio_test
async def test_unlinked_object_blobs_collected(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        await write_file(env, "gone", pattern(3 * CS), bucket=ENC)
        keep = await write_file(env, "kept", pattern(CS, 5), bucket=ENC)
        await env.fs.unlink(env.bucket(ENC), b"gone")
        env.fs.forget([(i, n) for i, n in list(env.fs.lookups.items()) if i != keep])
        await env.drain_gc()
        assert env.blobs() == referenced(env)
        assert {c.blob for c in env.catalog.chunks(keep)} == env.blobs()


# -- memory bound ---------------------------------------------------------------------------
class _Tracked:
    """A data descriptor recording the largest value ever stored in ``_dirty_bytes``
    (the per-object counter behind ``ObjectState.dirty_bytes``)."""

    peak = 0

    def __set_name__(self, owner, name):
        self.name = "_tracked_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else obj.__dict__[self.name]

    def __set__(self, obj, value):
        obj.__dict__[self.name] = value
        _Tracked.peak = max(_Tracked.peak, value)


@trio_test
async def test_sequential_write_memory_is_bounded(tmp_path, monkeypatch):
    tracked = _Tracked()
    tracked.__set_name__(ObjectState, "_dirty_bytes")
    monkeypatch.setattr(ObjectState, "_dirty_bytes", tracked, raising=False)
    _Tracked.peak = 0
    chunk = 1 * MiB
    async with fs_env(tmp_path, chunk_size="1MiB", write_buffer="2MiB") as env:
        limit = env.objects.write_limit + chunk
        fh, ino = await env.new_file("big")
        block = pattern(128 * KiB)
        total = 256 * MiB
        for off in range(0, total, len(block)):
            await env.fs.write(fh, off, block)
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).size == total
        assert _Tracked.peak >= chunk  # the descriptor saw the buffers
        assert _Tracked.peak <= limit, "dirty bytes peaked at %d > %d" % (_Tracked.peak, limit)
        assert env.objects.budget.total == 0
        assert await env.objects.read(ino, total - 1000, 2000) == block[-1000:]


_RANDOM_WRITER = r"""
import os, random, sys
sys.path.insert(0, sys.argv[1])
import trio
from helpers import ENC, fs_env
MiB = 1 << 20

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024

async def main():
    async with fs_env(__import__("pathlib").Path(sys.argv[2]), chunk_size="1MiB",
                      write_buffer="96MiB") as env:
        fh, ino = await env.new_file("big", bucket=ENC)
        block = os.urandom(MiB)
        for off in range(0, 256 * MiB, MiB):
            await env.fs.write(fh, off, block)
        await env.fs.flush(fh)
        base = rss()
        rnd = random.Random(1)
        for _ in range(1500):  # most land in a chunk not buffered: loads and seals
            await env.fs.write(fh, rnd.randrange(256 * MiB // 4096) * 4096, b"x" * 4096)
        print(rss() - base)
        await env.fs.release(fh)

trio.run(main)
"""


def test_random_writes_stay_within_the_write_buffer(tmp_path):
    """Resident memory of a random writer over a file larger than ``write_buffer`` grows
    by about ``write_buffer``, not twice that (chunk buffers made in worker threads'
    malloc arenas did). A fresh interpreter, so other tests' heap does not count."""
    res = subprocess.run([sys.executable, "-c", _RANDOM_WRITER, os.path.dirname(__file__),
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    grown = int(res.stdout.split()[-1])
    assert grown < 135 * MiB, "resident memory grew by %d MiB" % (grown // MiB)


# -- store faults --------------------------------------------------------------------------------
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_failing_put_keeps_old_version(tmp_path, err, bucket):
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=2 * CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        v1 = pattern(3 * CS + 11, 1)
        fh, ino = await env.new_file("f", bucket=bucket)
        await env.fs.write(fh, 0, v1)
        await env.fs.flush(fh)
        old_blobs = referenced(env)
        faulty.fail("put", err)
        v2 = pattern(4 * CS + 99, 2)
        with pytest.raises(StoreError) as ei:
            for off in range(0, len(v2), 32 * KiB):
                await env.fs.write(fh, off, v2[off:off + 32 * KiB])
            await env.fs.flush(fh)
        assert ei.value.errno == err
        # a second attempt fails the same way, with the same errno
        with pytest.raises(StoreError) as ei:
            await env.fs.flush(fh)
        assert ei.value.errno == err
        # the committed version is untouched and readable
        assert referenced(env) == old_blobs
        assert env.catalog.get_inode(ino).size == len(v1)
        assert await read_all(committed_reader(env), ino) == v1
        faulty.heal()
        # after recovery a retry commits what is buffered; then the writer repeats the writes
        # that failed, as an application does, and the new version is complete
        await env.fs.flush(fh)
        mixed = await read_all(committed_reader(env), ino)
        assert any(mixed == v2[:k] + v1[k:] for k in range(32 * KiB, len(v2) + 32 * KiB, 32 * KiB))
        for off in range(0, len(v2), 32 * KiB):
            await env.fs.write(fh, off, v2[off:off + 32 * KiB])
        await env.fs.flush(fh)
        assert await read_all(committed_reader(env), ino) == v2
        await env.fs.release(fh)
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_failing_put_then_retry_without_rewriting(tmp_path):
    """Buffered data that could not be stored stays buffered: a later commit stores it."""
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        fh, ino = await env.new_file("f", bucket=ENC)
        # (whole chunks: a small tail would be packed into the catalog, not put)
        await env.fs.write(fh, 0, b"old" * CS)
        await env.fs.flush(fh)
        await env.fs.write(fh, 0, b"new content" * CS)
        faulty.fail("put", errno.ENOSPC)
        with pytest.raises(StoreError) as ei:
            await env.fs.flush(fh)
        assert ei.value.errno == errno.ENOSPC
        assert await read_all(committed_reader(env), ino) == b"old" * CS
        faulty.heal()
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == b"new content" * CS


@trio_test
async def test_failing_sync_blocks_durable_commit(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        fh, ino = await env.new_file("f")
        await env.fs.write(fh, 0, b"v1")
        await env.fs.fsync(fh)
        await env.fs.write(fh, 0, b"v2")
        faulty.fail("sync_all", errno.EIO)
        with pytest.raises(StoreError) as ei:
            await env.fs.fsync(fh)
        assert ei.value.errno == errno.EIO
        assert await read_all(committed_reader(env), ino) == b"v1"
        faulty.heal()
        await env.fs.fsync(fh)
        assert await read_all(committed_reader(env), ino) == b"v2"
        await env.fs.release(fh)


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_missing_blob_fails_read_only_of_its_object(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        a = pattern(3 * CS, 1)
        b = pattern(2 * CS, 2)
        ino_a = await write_file(env, "a", a, bucket=bucket)
        ino_b = await write_file(env, "b", b, bucket=bucket)
        lost = env.catalog.chunk(ino_a, 1).blob
        env.faulty[REGION].hide(lost)
        reader = committed_reader(env)
        for off, n in [(CS, 10), (CS + 70000, 100), (0, 3 * CS)]:
            with pytest.raises(CosfsError) as ei:
                await reader.read(ino_a, off, n)
            assert ei.value.errno == errno.EIO
        assert await reader.read(ino_a, 0, CS) == a[:CS]
        assert await reader.read(ino_a, 2 * CS, CS) == a[2 * CS:]
        assert await read_all(reader, ino_b) == b
        env.faulty[REGION].heal()


class _DelayClock:
    """``time`` for the reader and the faulty store: ``perf_counter`` advances by what the
    store's ``sleep`` asks for, and by nothing else."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_a_read_that_would_wait_for_the_disk_runs_in_a_worker(tmp_path, bucket,
                                                                   monkeypatch):
    """A small read that misses the page cache stays on the trio thread while the disk
    answers fast; once such reads take over SLOW_DISK on average, they go to a worker
    thread (other requests go on meanwhile), and read the same bytes."""
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        data = pattern(3 * CS, 6)
        ino = await write_file(env, "a", data, bucket=bucket)
        faulty = env.faulty[REGION]
        # the reads' times come from a clock that only the store's delay moves: a busy
        # machine, on which a read without delay can take milliseconds, changes nothing
        clock = _DelayClock()
        monkeypatch.setattr(reader_module, "time", clock)
        monkeypatch.setattr(helpers, "time", clock)
        hops = []
        real = trio.to_thread.run_sync

        async def counting(fn, *args, **kw):
            hops.append(fn)
            return await real(fn, *args, **kw)
        monkeypatch.setattr(trio.to_thread, "run_sync", counting)
        reader = committed_reader(env)
        offsets = iter(range(5, 3 * CS - 100, 9000))

        async def read_one():
            off = next(offsets)
            assert await reader.read(ino, off, 100) == data[off:off + 100]

        faulty.tells = True  # as on a disk file system (tmpfs cannot tell)
        await read_one()  # in the page cache: inline
        faulty.cold = True
        await read_one()  # cold, but the disk has been fast: inline still
        assert hops == [] and faulty.calls["get_range_nowait"] >= 2
        faulty.delay = 0.005
        for _ in range(2):  # the average reaches 1.17 ms
            await read_one()
        assert hops == []
        await read_one()
        assert len(hops) == 1  # one worker call
        faulty.cold = False
        await read_one()  # in the page cache: inline again
        assert len(hops) == 1

        # a file system that cannot tell a miss: every small read counts
        reader = committed_reader(env)
        hops.clear()
        faulty.tells = False
        for _ in range(2):
            await read_one()
        assert hops == []
        await read_one()
        assert len(hops) == 1
        faulty.delay = 0  # the disk got fast: back on the trio thread after a few reads
        for _ in range(8):
            before = len(hops)
            await read_one()
            if len(hops) == before:
                break
        assert len(hops) == before and 1 < before < 8


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_truncated_blob_is_an_error_not_zeros(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS) as env:
        data = pattern(2 * CS, 3)
        ino = await write_file(env, "a", data, bucket=bucket)
        blob = env.catalog.chunk(ino, 0).blob
        path = env.region_store._path(blob)
        os.truncate(path, os.path.getsize(path) // 2)
        reader = committed_reader(env)
        with pytest.raises(CosfsError) as ei:
            await reader.read(ino, CS - 100, 100)
        assert ei.value.errno == errno.EIO
        assert await reader.read(ino, CS, CS) == data[CS:]


@pytest.mark.parametrize("bucket", [PLAIN, ENC])
@trio_test
async def test_short_reads_are_errors(tmp_path, bucket):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        data = pattern(CS, 4)
        ino = await write_file(env, "a", data, bucket=bucket)
        env.faulty[REGION].short_reads = True
        with pytest.raises(CosfsError) as ei:
            await committed_reader(env).read(ino, 0, CS)
        assert ei.value.errno == errno.EIO
        env.faulty[REGION].heal()
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_rewrite_of_damaged_object_fails_cleanly(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        data = pattern(3 * CS, 5)
        ino = await write_file(env, "a", data)
        env.faulty[REGION].short_reads = True
        with env.catalog.transaction():
            env.catalog.update_inode(ino, enc_request="AES256")
        with pytest.raises(CosfsError) as ei:
            await env.objects.rewrite(ino)
        assert ei.value.errno == errno.EIO
        assert env.catalog.get_inode(ino).enc is None
        env.faulty[REGION].heal()
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_durable_commit_never_references_unsynced_blobs(tmp_path):
    """fsync: every blob the durable catalog commit points at was synced before it."""
    import time as _time
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=8 * CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        local = faulty.inner

        def slow_sync():
            _time.sleep(0.2)  # writes keep arriving while the blobs are being synced
            local.sync_all()

        faulty.sync_all = slow_sync
        fh, ino = await env.new_file("d")
        await env.fs.write(fh, 0, pattern(CS, 1))
        stop = trio.Event()

        async def writer():
            off = CS
            while not stop.is_set() and off < 40 * CS:
                await env.fs.write(fh, off, pattern(CS, off))
                off += CS
                await trio.sleep(0.01)

        async with trio.open_nursery() as n:
            n.start_soon(writer)
            await trio.sleep(0)
            await env.fs.fsync(fh)
            unsynced = {c.blob for c in env.catalog.chunks(ino)} & local._unsynced
            stop.set()
        assert not unsynced, "durable commit points at %d unsynced blob(s)" % len(unsynced)
        await env.fs.release(fh)


@trio_test
async def test_catalog_sync_waits_for_blobs_of_concurrent_commits(tmp_path):
    """fsyncdir/syncfs: commits made by others during the blob sync are covered too."""
    import time as _time
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        local = faulty.inner

        def slow_sync():
            _time.sleep(0.1)
            local.sync_all()

        faulty.sync_all = slow_sync
        stop = trio.Event()

        async def closer():
            n = 0
            while not stop.is_set():
                await write_file(env, "small%d" % n, pattern(1000, n))
                n += 1
                await trio.sleep(0.01)

        async with trio.open_nursery() as n:
            n.start_soon(closer)
            await trio.sleep(0.02)
            await env.objects.sync_catalog()
            unsynced = referenced(env) & local._unsynced
            stop.set()
        assert not unsynced


@pytest.mark.parametrize("err", [errno.EIO, errno.EACCES])
@trio_test
async def test_failing_read_is_reported_and_not_cached(tmp_path, err):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        data = pattern(3 * CS, 9)
        ino = await write_file(env, "r", data, bucket=ENC)
        faulty.fail("get_range", err, times=1)
        with pytest.raises(StoreError) as ei:
            await env.objects.read(ino, CS, 1000)
        assert ei.value.errno == err
        assert await env.objects.read(ino, CS, 1000) == data[CS:CS + 1000]


@trio_test
async def test_failing_delete_keeps_garbage_for_later(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        faulty = env.faulty[REGION]
        ino = await write_file(env, "g", pattern(3 * CS, 1))
        await env.drain_gc()
        faulty.fail("delete", errno.EIO, times=1)
        fh = await env.fs.open(ino, os.O_RDWR | os.O_TRUNC)
        await env.fs.release(fh)
        try:  # the background collector may meet the failure first (it logs and retries)
            await env.objects.collect_garbage()
        except StoreError:
            pass
        assert "delete" not in faulty._faults  # the failure happened
        await env.objects.collect_garbage()
        assert env.catalog.garbage() == []
        assert env.blobs() == referenced(env) == set()


@trio_test
async def test_blobs_freed_only_after_their_release_is_durable(tmp_path):
    async with fs_env(tmp_path, chunk_size=CS, faulty=True) as env:
        cat = env.catalog
        durable_garbage = set()
        committed = set()
        violations = []
        real_transaction, real_checkpoint, real_set_chunk = (cat.transaction, cat.checkpoint,
                                                              cat.set_chunk)

        def note_durable():
            durable_garbage.update(b for b, _ in cat.garbage(limit=10 ** 6))

        import contextlib

        @contextlib.contextmanager
        def transaction(durable=False):
            outer = cat._depth == 0
            with real_transaction(durable=durable):
                yield
            if durable and outer:
                note_durable()

        def checkpoint():
            real_checkpoint()
            note_durable()

        real_sync = cat.sync

        def sync():
            real_sync()
            note_durable()

        def set_chunk(ino, idx, blob, length, region, data=None):
            committed.add(blob)
            real_set_chunk(ino, idx, blob, length, region, data)

        cat.transaction, cat.checkpoint, cat.set_chunk = transaction, checkpoint, set_chunk
        cat.sync = sync
        faulty = env.faulty[REGION]
        real_delete = faulty.delete

        def delete(blob):
            if blob in committed and blob not in durable_garbage:
                violations.append(blob)
            real_delete(blob)

        faulty.delete = delete
        fh, ino = await env.new_file("f")
        await env.fs.write(fh, 0, pattern(2 * CS, 1))
        await env.fs.flush(fh)
        await env.fs.write(fh, 0, pattern(2 * CS, 2))
        await env.fs.release(fh)
        await env.drain_gc()
        assert not violations, "%d blob(s) deleted before their release was durable" % len(
            violations)


@trio_test
async def test_a_blob_no_commit_named_goes_without_a_catalog_row_or_sync(tmp_path, monkeypatch):
    """A chunk sealed to make room and sealed again before its commit: the first blob
    was never named by the catalog, so it is deleted without a garbage row, without
    a durable point first, and without being pushed to the disk early."""
    whole_chunk_loads(monkeypatch)
    started = []
    monkeypatch.setattr(durable, "start_writeback", lambda fd: started.append(fd))
    async with fs_env(tmp_path, chunk_size="256KiB", write_buffer="512KiB") as env:
        cs = 256 * KiB
        data = bytearray(pattern(8 * cs, 4))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        await env.drain_gc()
        committed = env.blobs()
        fh = await env.fs.open(ino, os.O_RDWR)
        started.clear()
        syncs = []
        monkeypatch.setattr(env.catalog, "sync", lambda: syncs.append(1))
        for step in range(60):  # random small writes over twice the write buffer
            off = ((step * 5) % 8) * cs + step * 100
            piece = pattern(100, step)
            await env.fs.write(fh, off, piece)
            data[off:off + 100] = piece
        await relieved(env)
        st = env.objects.states[ino]
        assert st.pending and env.catalog.garbage() == []
        await env.drain_gc()
        assert syncs == [] and started == []
        # only the committed blobs and the pending ones are left
        assert env.blobs() == committed | {ch.blob for ch in st.pending.values()}
        assert env.objects.collector.unreferenced == {}
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_blobs_a_commit_named_are_never_discarded_even_if_it_then_fails(tmp_path,
                                                                            monkeypatch):
    """The commit's transaction names the pending blobs; if what follows it raises (the
    versions bookkeeping, on a full catalog), a later seal of the same chunk must not
    take them for never committed and delete them."""
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=3 * CS) as env:
        objects = env.objects
        data = bytearray(pattern(2 * CS, 8))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        await env.fs.write(fh, 10, b"x" * 100)
        data[10:110] = b"x" * 100
        await objects._flush_chunk(st, 0)
        named = st.pending[0].blob

        def full():
            raise CosfsError("catalog commit failed: database or disk is full")

        vs = objects.versions
        monkeypatch.setattr(vs, "versioned", lambda bucket: True)
        monkeypatch.setattr(vs, "keys_of", lambda ino: [b"f"])
        monkeypatch.setattr(vs, "before_replace", lambda *args: None)
        monkeypatch.setattr(vs, "stamp", lambda *args, **kw: None)
        monkeypatch.setattr(vs, "flush", full)
        with pytest.raises(CosfsError):
            await objects.commit(ino)
        monkeypatch.undo()
        assert env.catalog.chunk(ino, 0).blob == named and not st.pending
        await env.fs.write(fh, 200, b"y" * 100)  # chunk 0 again, sealed again
        data[200:300] = b"y" * 100
        await objects._flush_chunk(st, 0, writeback=False)
        await env.drain_gc()
        assert named in env.blobs()  # what a kill -9 now would come back to
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_a_chunk_written_while_re_encryption_reseals_it_is_not_lost(tmp_path,
                                                                         monkeypatch):
    """Re-encryption re-seals committed chunks in a worker; a write sealed into one of
    them meanwhile (by the write buffers' relief) is newer and must stay."""
    async with fs_env(tmp_path, chunk_size=CS, write_buffer=3 * CS) as env:
        objects = env.objects
        data = bytearray(pattern(3 * CS, 5))
        ino = await write_file(env, "f", bytes(data))
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        resealing = reseal_slowly(monkeypatch, env, ino, 1)

        async def write_during_reseal():
            await resealing.wait()
            piece = pattern(300, 77)
            await env.fs.write(fh, CS + 500, piece)
            data[CS + 500:CS + 800] = piece
            await objects._flush_chunk(st, 1, writeback=False)  # as the relief would

        async with trio.open_nursery() as n:
            n.start_soon(write_during_reseal)
            await objects.rewrite(ino)
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_the_start_after_a_crash_removes_what_no_commit_named(tmp_path, monkeypatch):
    """mount.remove_orphans: blobs nothing names go, named and released ones stay, and a
    blob that cannot be removed is logged and left for fsck without stopping the start."""
    from cosfs.mount import remove_orphans
    async with fs_env(tmp_path, chunk_size=CS) as env:
        ino = await write_file(env, "f", pattern(3 * CS, 2), bucket=ENC)
        await env.drain_gc()
        named = env.blobs()
        store = env.region_store
        orphans = [bytes([i]) + os.urandom(15) for i in (0, 0x7f, 0xff)]
        for blob in orphans:
            store.put(blob, b"partial")
        released = os.urandom(16)
        store.put(released, b"released")
        with env.catalog.transaction():
            env.catalog.add_garbage(released, REGION)  # the collector's, not the sweep's
        stuck = orphans[1]
        delete = store.delete

        def failing_delete(blob):
            if blob == stuck:
                raise StoreError("cannot delete %s: Permission denied" % blob.hex())
            delete(blob)

        monkeypatch.setattr(store, "delete", failing_delete)
        assert remove_orphans(env.store) == 2
        assert env.blobs() == named | {stuck, released}
        monkeypatch.undo()
        assert await read_all(committed_reader(env), ino) == pattern(3 * CS, 2)


PCS = 8 * 64 * KiB  # chunks of eight segments: written at random, they are held partly


@pytest.mark.parametrize("loads", ["inline", "worker"])
@trio_test
async def test_random_writes_hold_only_the_segments_they_touch(tmp_path, loads, monkeypatch):
    """A small write into a stored chunk loads that chunk's touched segments only; the
    buffers count what they hold; reads see held and stored segments side by side, and
    the commit makes each chunk whole again."""
    partial_loads(monkeypatch)
    if loads == "worker":
        monkeypatch.setattr(reader_module, "INLINE_READ_LIMIT", 0)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        objects = env.objects
        data = bytearray(pattern(3 * PCS + 1000, 6))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        writes = [(PCS + 10, 20), (PCS + 3 * seg - 5, 10), (2 * PCS + 7 * seg + 1, 100),
                  (PCS + 11, 3)]
        for n, (off, size) in enumerate(writes):
            piece = pattern(size, 40 + n)
            await env.fs.write(fh, off, piece)
            data[off:off + size] = piece
        parts = {idx: buf for idx, buf in st.dirty.items() if isinstance(buf, PartialChunk)}
        assert sorted(parts) == [1, 2]
        assert sorted(parts[1].segs) == [0, 2, 3] and sorted(parts[2].segs) == [7]
        assert st.dirty_bytes == objects.budget.total == 4 * seg
        # a read across held and stored segments, and one of stored segments only
        for lo, hi in ((PCS, 2 * PCS), (PCS + 2 * seg - 7, PCS + 4 * seg + 9),
                       (PCS + 5 * seg, PCS + 6 * seg), (2 * PCS + 7 * seg, 3 * PCS + 1000)):
            assert await objects.read(ino, lo, hi - lo) == bytes(data[lo:hi])
        assert sorted(parts[1].segs) == [0, 2, 3]  # reading held nothing more
        # the last, short chunk is loaded whole
        await env.fs.write(fh, 3 * PCS + 1, b"tail")
        data[3 * PCS + 1:3 * PCS + 5] = b"tail"
        assert not isinstance(st.dirty[3], PartialChunk)
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)
        assert objects.budget.total == 0


@trio_test
async def test_a_partial_chunk_is_made_whole_by_what_needs_all_of_it(tmp_path, monkeypatch):
    """A truncate inside the chunk, a write past the bytes it holds, and sealing to make
    room all make a partial chunk whole first; a whole-chunk write just replaces it."""
    partial_loads(monkeypatch)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS, write_buffer=2 * PCS) as env:
        objects = env.objects
        data = bytearray(pattern(4 * PCS, 8))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        for idx in range(4):
            await env.fs.write(fh, idx * PCS + seg + 3, b"abc")
            data[idx * PCS + seg + 3:idx * PCS + seg + 6] = b"abc"
        assert all(isinstance(st.dirty[i], PartialChunk) for i in range(4))
        # a whole chunk replaces the partial one
        whole = pattern(PCS, 9)
        await env.fs.write(fh, 0, whole)
        data[0:PCS] = whole
        assert st.dirty[0] == whole
        # a truncate inside chunk 2 makes it whole, cuts it, and commits
        await objects.truncate(ino, 2 * PCS + 5 * seg)
        del data[2 * PCS + 5 * seg:]
        assert not st.dirty
        assert await read_all(committed_reader(env), ino) == data
        # growing again reads zeros past the cut
        await env.fs.write(fh, 3 * PCS + 7, b"end")
        data.extend(bytes(3 * PCS + 7 - len(data)))
        data.extend(b"end")
        # sealing makes chunk 1 whole from its source
        await env.fs.write(fh, PCS + 4 * seg, b"four")
        data[PCS + 4 * seg:PCS + 4 * seg + 4] = b"four"
        assert isinstance(st.dirty[1], PartialChunk)
        await objects._flush_chunk(st, 1)
        assert 1 in st.pending and 1 not in st.dirty
        assert await objects.read(ino, 0, len(data) + 1) == data
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@trio_test
async def test_a_partial_chunk_of_a_plain_object_is_sealed_whole_on_re_encryption(tmp_path,
                                                                                  monkeypatch):
    """A plain object written at random after its bucket got a default encryption: the
    commit seals every chunk, the partly held ones made whole from their plain source."""
    partial_loads(monkeypatch)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        data = bytearray(pattern(3 * PCS, 10))
        ino = await write_file(env, "f", bytes(data), bucket=PLAIN)
        env.fs.put_bucket_encryption(env.bucket(PLAIN), b"AES256")
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, PCS + 3 * seg + 1, b"xyz")
        data[PCS + 3 * seg + 1:PCS + 3 * seg + 4] = b"xyz"
        assert isinstance(env.objects.states[ino].dirty[1], PartialChunk)
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)
        assert_no_plaintext(env, bytes(data))


@trio_test
async def test_a_partial_chunk_made_during_re_encryption_keeps_its_source(tmp_path,
                                                                          monkeypatch):
    """Re-encryption replaces committed chunks one by one; a write that starts a partial
    chunk from a committed chunk not re-sealed yet must not lose its source: the chunk
    is made whole before the re-sealed one takes its place."""
    partial_loads(monkeypatch)
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        objects = env.objects
        data = bytearray(pattern(3 * PCS, 11))
        ino = await write_file(env, "f", bytes(data))
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]
        resealing = reseal_slowly(monkeypatch, env, ino, 0)

        async def write_during_reseal():
            await resealing.wait()
            await env.fs.write(fh, 2 * PCS + 100, b"late")
            data[2 * PCS + 100:2 * PCS + 104] = b"late"
            assert isinstance(st.dirty[2], PartialChunk)

        async with trio.open_nursery() as n:
            n.start_soon(write_during_reseal)
            await objects.rewrite(ino)
        assert not isinstance(st.dirty.get(2), PartialChunk)
        await env.drain_gc()  # the old, plain blobs go
        assert await objects.read(ino, 0, 3 * PCS) == data
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_a_write_beside_a_damaged_segment_fails_at_the_commit(tmp_path,
                                                                    monkeypatch):
    """A partial chunk does not read the segments a write does not touch: a damaged one
    is found when the chunk is made whole for its commit. That commit fails with EIO,
    the stored chunk stays as it was, and the writes into that chunk are dropped (it
    can never be made whole); the object's other changes are committed by the next
    commit, and the mount goes on."""
    partial_loads(monkeypatch)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        data = bytearray(pattern(2 * PCS, 12))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        ch = env.catalog.chunk(ino, 1)
        path = env.region_store._path(ch.blob)
        raw = bytearray(open(path, "rb").read())
        raw[cipher.HEADER_SIZE + 5 * (seg + cipher.TAG_SIZE) + 9] ^= 1
        with open(path, "wb") as f:
            f.write(raw)
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, PCS + 10, b"zz")  # segment 0 of chunk 1 is sound
        await env.fs.write(fh, 10, b"ok")  # chunk 0 is sound
        data[10:12] = b"ok"
        with pytest.raises(CosfsError) as ei:
            await env.objects.commit(ino)
        assert ei.value.errno == errno.EIO
        assert env.catalog.chunk(ino, 1).blob == ch.blob
        st = env.objects.states[ino]
        assert 1 not in st.dirty and st.dirty_bytes == sum(held(b) for b in st.dirty.values())
        await env.fs.release(fh)  # commits chunk 0
        got = await committed_reader(env).read(ino, 0, seg)
        assert got == data[:seg]
        assert env.objects.budget.total == 0



@trio_test
async def test_random_writes_into_holes_hold_only_the_segments_they_touch(tmp_path,
                                                                          monkeypatch):
    """A sparse file written at random: each write holds the segments it touches, the
    rest of its chunk reads as zeros, and the commit stores what was written."""
    partial_loads(monkeypatch)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        objects = env.objects
        fh, ino = await env.new_file("sparse", bucket=ENC)
        await objects.truncate(ino, 2 * PCS + 3 * seg)
        data = bytearray(2 * PCS + 3 * seg)
        st = objects.states[ino]
        writes = [(PCS + 5 * seg + 1, 9), (7, 4), (2 * PCS + 2 * seg + 10, 20),
                  (3 * PCS + 6 * seg, 50)]  # the last one past the end
        for n, (off, size) in enumerate(writes):
            piece = pattern(size, 60 + n)
            await env.fs.write(fh, off, piece)
            if off + size > len(data):
                data.extend(bytes(off + size - len(data)))
            data[off:off + size] = piece
        parts = {i: b for i, b in st.dirty.items() if isinstance(b, PartialChunk)}
        assert sorted(parts) == [0, 1, 3]  # chunk 2 spans 3 segments: loaded whole
        assert all(p.source is None for p in parts.values())
        assert [parts[i].length for i in (0, 1, 3)] == [PCS, PCS, 6 * seg + 50]
        assert st.dirty_bytes == 2 * seg + 50 + len(st.dirty[2])
        assert await objects.read(ino, 0, len(data) + 1) == data
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data
        assert env.catalog.chunk(ino, 3).length == 6 * seg + 50


def test_the_relief_seals_the_fullest_of_the_least_recently_written_chunks(monkeypatch):
    """Of an object's VICTIM_WINDOW least recently written chunks not being sealed, the
    one holding the most bytes goes first (ties: the least recently written)."""
    import types
    monkeypatch.setattr(objects_module, "VICTIM_WINDOW", 4)
    inode = types.SimpleNamespace(id=5, size=0, mtime_ns=0, ctime_ns=0)
    st = ObjectState(inode, REGION)

    def partial(segments):
        p = PartialChunk(PCS, None)
        p.take(0, segments - 1, None)
        return p

    # in order of writes: 7 least recently
    st.dirty.update({7: partial(1), 3: partial(3), 9: partial(2), 4: partial(3),
                     8: bytes(PCS)})
    assert ObjectStore._pick(st) == 3  # the whole chunk 8 is past the window
    st.flushing[3] = trio.Event()
    assert ObjectStore._pick(st) == 8  # the window moves past the chunk being sealed
    st.dirty.clear()
    st.flushing.clear()
    assert ObjectStore._pick(st) is None


@trio_test
async def test_chunks_are_loaded_whole_while_the_buffers_have_room_for_them(tmp_path):
    """A random writer whose file fits in write_buffer touches every segment anyway: its
    chunks are loaded whole (one read each). Once a whole chunk would not fit, writes
    hold only the segments they touch."""
    async with fs_env(tmp_path, chunk_size=PCS, write_buffer=3 * PCS) as env:
        data = bytearray(pattern(5 * PCS, 13))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        fh = await env.fs.open(ino, os.O_RDWR)
        st = env.objects.states[ino]
        for idx in range(5):
            await env.fs.write(fh, idx * PCS + 100, b"w")
            data[idx * PCS + 100] = ord("w")
        kinds = [isinstance(st.dirty[i], PartialChunk) for i in range(5)]
        assert kinds == [False, False, False, True, True]
        await env.fs.release(fh)
        assert await read_all(committed_reader(env), ino) == data


@pytest.mark.parametrize("loads", ["whole", "partial"])
@trio_test
async def test_a_write_into_a_damaged_segment_leaves_no_buffer_behind(tmp_path, loads,
                                                                      monkeypatch):
    """A write whose load fails authentication fails with EIO and leaves nothing that
    would keep the object's other writes from being committed."""
    if loads == "whole":
        whole_chunk_loads(monkeypatch)
    else:
        partial_loads(monkeypatch)
    seg = 64 * KiB
    async with fs_env(tmp_path, chunk_size=PCS) as env:
        data = bytearray(pattern(2 * PCS, 14))
        ino = await write_file(env, "f", bytes(data), bucket=ENC)
        path = env.region_store._path(env.catalog.chunk(ino, 1).blob)
        raw = bytearray(open(path, "rb").read())
        raw[cipher.HEADER_SIZE + 5 * (seg + cipher.TAG_SIZE) + 9] ^= 1
        with open(path, "wb") as f:
            f.write(raw)
        fh = await env.fs.open(ino, os.O_RDWR)
        await env.fs.write(fh, 10, b"ok")
        data[10:12] = b"ok"
        with pytest.raises(CosfsError) as ei:
            await env.fs.write(fh, PCS + 5 * seg + 3, b"zz")
        assert ei.value.errno == errno.EIO
        st = env.objects.states[ino]
        assert 1 not in st.dirty
        await env.fs.release(fh)
        assert (await committed_reader(env).read(ino, 0, PCS)) == data[:PCS]


@trio_test
async def test_a_chunk_sealed_just_before_re_encryption_is_re_encrypted_too(tmp_path,
                                                                           monkeypatch):
    """A write sealed under the old key between re-encryption's own commit and its lock
    is committed under that key first, then re-encrypted with the rest: the object
    reads back whole under its new key."""
    async with fs_env(tmp_path, chunk_size=CS) as env:
        objects = env.objects
        data = bytearray(pattern(3 * CS, 15))
        ino = await write_file(env, "f", bytes(data))
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]

        async def seal_late(n):
            if n == 1:  # re-encryption's own lock, after its first commit
                await env.fs.write(fh, CS + 7, b"late")
                data[CS + 7:CS + 11] = b"late"
                await objects._flush_chunk(st, 1, writeback=False)  # as the relief would
                assert st.pending

        before_each_lock(monkeypatch, st, seal_late)
        with env.catalog.transaction():
            env.catalog.update_inode(ino, enc_request="AES256")
        await objects.rewrite(ino)
        await env.fs.release(fh)
        assert env.catalog.get_inode(ino).enc == "AES256"
        assert await read_all(committed_reader(env), ino) == data
        await env.drain_gc()
        assert env.blobs() == referenced(env)


@trio_test
async def test_re_encryption_gives_up_with_ebusy_on_an_object_never_left_alone(
        tmp_path, monkeypatch):
    """If writes keep coming between re-encryption's commit and its lock, it gives up
    after REWRITE_SETTLE_TRIES commits with EBUSY; every write is committed, in the old
    state, and the override request is left as it was."""
    monkeypatch.setattr(objects_module, "REWRITE_SETTLE_TRIES", 2)
    async with fs_env(tmp_path, chunk_size=CS) as env:
        objects = env.objects
        data = bytearray(pattern(2 * CS, 16))
        ino = await write_file(env, "f", bytes(data))
        fh = await env.fs.open(ino, os.O_RDWR)
        st = objects.states[ino]

        async def change(n):  # one more change each time
            await env.fs.write(fh, 100 + n, b"w")
            data[100 + n] = ord("w")

        before_each_lock(monkeypatch, st, change)
        with pytest.raises(CosfsError) as ei:
            await objects.rewrite(ino, "AES256")
        assert ei.value.errno == errno.EBUSY
        monkeypatch.undo()
        await env.fs.release(fh)
        inode = env.catalog.get_inode(ino)
        assert inode.enc is None and inode.enc_request is None
        assert await read_all(committed_reader(env), ino) == data
