"""The FUSE adapter's kernel page-cache stores (cosfs.fuse.pagefill) over a real data path.

A recording function stands in for the kernel call (``pyfuse3.notify_store``); the
real mount's side (pages resident after the stores, content after writes and
truncates) is in ``t4_posix``.
"""

import contextlib
import errno
import functools
import os
import threading
import types

import trio

from cosfs.filesystem import Ctx
from cosfs.fuse.pagefill import PageFiller
from helpers import ENC, fs_env, trio_test

SEG = 64 * 1024


class Kernel:
    """Records the stores; ``gate`` (a threading.Event) holds each one until set, and
    ``gates`` ({offset: Event}) the stores at an offset; ``fail`` (an errno) makes each
    one fail."""

    def __init__(self):
        self.calls = []
        self.gate = None
        self.gates = {}
        self.fail = None

    def __call__(self, ino, offset, data):
        for gate in (self.gate, self.gates.get(offset)):
            if gate is not None:
                assert gate.wait(10)
        if self.fail is not None:
            raise OSError(self.fail, os.strerror(self.fail))
        self.calls.append((ino, offset, bytes(data)))


async def stored_file(env, content):
    """An object of ``content`` in the encrypted bucket, committed and closed; returns its
    inode."""
    fh, ino = await env.new_file("f", bucket=ENC)
    await env.fs.write(fh, 0, content)
    await env.fs.flush(fh)
    await env.fs.release(fh)
    return ino


@contextlib.asynccontextmanager
async def filler(env, kernel, **kw):
    pages = PageFiller(env.objects, kernel, page_size=4096, **kw)
    pages.start()
    try:
        yield pages
    finally:
        await pages.stop()


@contextlib.asynccontextmanager
async def reading(tmp_path, content):
    """A data path with one object of ``content`` open read-only, and a started PageFiller
    over a recording Kernel: yields (env, ino, fh, kernel, pages)."""
    async with fs_env(tmp_path, chunk_size="256KiB", cache_size="4MiB") as env:
        ino = await stored_file(env, content)
        fh = await env.fs.open(ino, os.O_RDONLY, Ctx())
        kernel = Kernel()
        async with filler(env, kernel) as pages:
            yield env, ino, fh, kernel, pages
        await env.fs.release(fh)


async def read(env, pages, fh, offset, size):
    """A READ as the FUSE adapter makes it; the stores it started are settled."""
    ino = env.fs.inode_of(fh)
    data = await pages.read(ino, offset, size, functools.partial(env.fs.read, fh, offset, size))
    await pages.settle(ino)
    return data


@trio_test
async def test_a_segment_read_again_is_stored_whole(tmp_path):
    content = os.urandom(250_000)
    async with reading(tmp_path, content) as (env, ino, fh, kernel, pages):
        assert await read(env, pages, fh, SEG, 4096) == content[SEG:SEG + 4096]
        assert kernel.calls == []  # read once: no store
        assert await read(env, pages, fh, SEG + 8192, 4096) == content[SEG + 8192:SEG + 12288]
        assert kernel.calls == [(ino, SEG, content[SEG:2 * SEG])]
        # the last segment ends at the object's size
        await read(env, pages, fh, 3 * SEG, 4096)
        await read(env, pages, fh, 3 * SEG + 4096, 4096)
        assert kernel.calls[-1] == (ino, 3 * SEG, content[3 * SEG:])
        assert pages.stored == 2


@trio_test
async def test_no_store_while_a_handle_may_write(tmp_path):
    content = os.urandom(3 * SEG)
    async with reading(tmp_path, content) as (env, ino, ro, kernel, pages):
        rw = await env.fs.open(ino, os.O_RDWR, Ctx())
        for off in (0, 4096, 8192):
            assert await read(env, pages, rw, off, 4096) == content[off:off + 4096]
            assert await read(env, pages, ro, off, 4096) == content[off:off + 4096]
        await env.fs.write(rw, 5, b"new")
        assert await read(env, pages, rw, 0, 4096) == content[:5] + b"new" + content[8:4096]
        assert kernel.calls == []
        await env.fs.flush(rw)
        await env.fs.release(rw)
        # closed, the object is quiet again: its new content is what gets stored
        await read(env, pages, ro, 0, 4096)
        await read(env, pages, ro, 4096, 4096)
        assert kernel.calls == [(ino, 0, content[:5] + b"new" + content[8:SEG])]


@trio_test
async def test_a_writer_that_opens_during_the_read_stops_the_store(tmp_path):
    async with reading(tmp_path, os.urandom(SEG)) as (env, ino, fh, kernel, pages):
        await read(env, pages, fh, 0, 4096)
        opened = []

        async def answer():
            data = await env.fs.read(fh, 4096, 4096)
            opened.append(await env.fs.open(ino, os.O_WRONLY, Ctx()))  # while it waited
            return data

        await pages.read(ino, 4096, 4096, answer)
        await pages.settle(ino)
        assert kernel.calls == []
        await env.fs.release(opened[0])


async def until_set(nursery, wait):
    """An Event set once ``await wait()`` has returned (run in ``nursery``)."""
    done = trio.Event()

    async def run():
        await wait()
        done.set()

    nursery.start_soon(run)
    await trio.sleep(0.1)
    return done


@trio_test
async def test_settle_waits_for_a_store_under_way(tmp_path):
    async with reading(tmp_path, os.urandom(SEG)) as (env, ino, fh, kernel, pages):
        kernel.gate = threading.Event()
        await read(env, pages, fh, 0, 4096)
        await pages.read(ino, 4096, 4096, functools.partial(env.fs.read, fh, 4096, 4096))
        # a second chance at the same segment while its store is under way: not stored twice
        await pages.read(ino, 8192, 4096, functools.partial(env.fs.read, fh, 8192, 4096))
        settled = await until_set(env.nursery, functools.partial(pages.settle, ino))
        assert not settled.is_set() and kernel.calls == []
        kernel.gate.set()
        with trio.fail_after(10):
            await settled.wait()
        assert len(kernel.calls) == 1
        await pages.settle(ino)  # nothing under way: at once


@trio_test
async def test_reads_that_start_no_store(tmp_path):
    content = os.urandom(2 * SEG + 1000)
    async with reading(tmp_path, content) as (env, ino, fh, kernel, pages):
        for _ in range(2):
            await read(env, pages, fh, 0, SEG)  # larger than MAX_READ: a sequential reader
            await read(env, pages, fh, 2 * SEG, 4096)  # covers the (last, short) segment
        await read(env, pages, fh, SEG, 4096)
        assert await read(env, pages, fh, SEG + 100, 4096) == content[SEG + 100:SEG + 4196]
        # with writeback_cache the kernel may hold written pages: never
        async with filler(env, kernel, enabled=False) as quiet:
            await read(env, quiet, fh, SEG + 4096, 4096)
        assert kernel.calls == []
        await read(env, pages, fh, SEG + 8192, 4096)
        assert [c[1] for c in kernel.calls] == [SEG]


@trio_test
async def test_a_failed_store_changes_nothing(tmp_path):
    async with reading(tmp_path, os.urandom(SEG)) as (env, ino, fh, kernel, pages):
        kernel.fail = errno.ENOENT  # the kernel forgot the inode
        await read(env, pages, fh, 0, 4096)
        await read(env, pages, fh, 4096, 4096)
        assert pages.stored == 0 and not pages.busy
        kernel.fail = None
        await read(env, pages, fh, 8192, 4096)  # the next chance stores it
        assert len(kernel.calls) == 1
        await pages.stop()
        await read(env, pages, fh, 12288, 4096)  # stopped: no more stores
        assert len(kernel.calls) == 1


@trio_test
async def test_an_open_that_may_write_and_a_truncate_wait_for_the_stores(tmp_path):
    import pyfuse3

    from cosfs.fuse.ops import Operations
    content = os.urandom(SEG)
    async with reading(tmp_path, content) as (env, ino, _, kernel, pages):
        ops = Operations(env.fs)
        ops.pages = pages
        fields = types.SimpleNamespace(**{"update_" + f: f == "size" for f in (
            "mode", "uid", "gid", "size", "atime", "mtime", "ctime")})
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 1000
        handles = []

        async def change(what):
            if what == "open":
                handles.append((await ops.open(ino, os.O_RDWR, None)).fh)
            else:
                await ops.setattr(ino, attr, fields, None, None)

        for what in ("open", "truncate"):
            kernel.gate = threading.Event()
            ro = (await ops.open(ino, os.O_RDONLY, None)).fh
            handles.append(ro)
            await ops.read(ro, 0, 4096)
            await ops.read(ro, 4096, 4096)  # a store, held by the gate
            done = await until_set(env.nursery, functools.partial(change, what))
            assert not done.is_set(), what  # answered only once the store is done
            kernel.gate.set()
            with trio.fail_after(10):
                await done.wait()
            while handles:
                await ops.release(handles.pop())
        assert [c[1] for c in kernel.calls] == [0, 0]
        assert kernel.calls[1][2] == content[:SEG]  # stored before the truncate
        assert (await env.fs.getattr(ino)).size == 1000


@trio_test
async def test_settle_waits_only_for_the_stores_started_before_it(tmp_path):
    async with reading(tmp_path, os.urandom(2 * SEG)) as (env, ino, fh, kernel, pages):
        kernel.gates = {0: threading.Event(), SEG: threading.Event()}
        for off in (0, 4096):
            await pages.read(ino, off, 4096, functools.partial(env.fs.read, fh, off, 4096))
        settled = await until_set(env.nursery, functools.partial(pages.settle, ino))
        # a store started after the call (a truncate made the object quiet again and a
        # reader came back): it carries the new content, settle does not wait for it
        for off in (SEG, SEG + 4096):
            await pages.read(ino, off, 4096, functools.partial(env.fs.read, fh, off, 4096))
        assert pages.busy and not settled.is_set()
        kernel.gates[0].set()
        with trio.fail_after(10):
            await settled.wait()
        assert pages.busy  # the later store still waits
        kernel.gates[SEG].set()
        await pages.settle(ino)
        assert [c[1] for c in kernel.calls] == [0, SEG] and not pages.busy


@trio_test
async def test_a_forgotten_inode_has_no_store_left(tmp_path):
    from cosfs.fuse.ops import Operations
    async with reading(tmp_path, os.urandom(SEG)) as (env, ino, fh, kernel, pages):
        ops = Operations(env.fs)
        ops.pages = pages
        kernel.gate = threading.Event()
        await read(env, pages, fh, 0, 4096)
        await pages.read(ino, 4096, 4096, functools.partial(env.fs.read, fh, 4096, 4096))
        forgotten = await until_set(env.nursery, functools.partial(ops.forget, [(ino, 1)]))
        assert not forgotten.is_set()  # its number could be given again: wait
        kernel.gate.set()
        with trio.fail_after(10):
            await forgotten.wait()
        assert not pages.busy


@trio_test
async def test_a_kernel_without_stores_turns_them_off(tmp_path):
    async with reading(tmp_path, os.urandom(2 * SEG)) as (env, ino, fh, kernel, pages):
        kernel.fail = errno.ENOSYS
        await read(env, pages, fh, 0, 4096)
        await read(env, pages, fh, 4096, 4096)
        assert not pages.enabled
        kernel.fail = None
        await read(env, pages, fh, SEG, 4096)
        await read(env, pages, fh, SEG + 4096, 4096)
        assert kernel.calls == [] and pages.stored == 0
