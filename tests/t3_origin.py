"""Origin pull (cosfs.services.origin) over a real store, with a fake origin.

The origin is an ``httpx.MockTransport`` whose handler the test writes; the miss
reaches the service through the filesystem layer's ``on_miss`` hook (a lookup)
and through the key space (``pull=True``), as the composition root wires it.
"""

import errno
import os

import httpx
import pytest
import trio

from cosfs.config import OriginSettings
from cosfs.errors import CosfsError, FsError, OriginFailed
from cosfs.keyspace import KeySpace
from cosfs.originconf import render_origin, simple_config
from cosfs.services.origin import OriginPull, origin_metadata
from helpers import ENC, PLAIN, fs_env, tmp_path, trio_test  # noqa: F401

MiB = 1024 * 1024
HOST = "origin.test"


def wire(env, handler, **settings):
    ks = KeySpace(env.fs, env.objects, env.catalog)
    service = OriginPull(ks, OriginSettings(**{"retries": 0, "miss_ttl": 60, **settings}),
                         transport=httpx.MockTransport(handler))
    env.fs.on_miss = service.pull
    for bucket in (PLAIN, ENC):
        env.fs.put_bucket_origin(env.bucket(bucket),
                                 render_origin(simple_config([HOST], prefix="o/")))
    return ks, service


async def lookup_data(env, bucket, key):
    parent = env.bucket(bucket)
    *dirs, name = key.split("/")
    for d in dirs:  # "o" is the folder of the rules' prefix "o/": a lookup makes it
        parent = (await env.fs.lookup(parent, d.encode())).id
    inode = await env.fs.lookup(parent, name.encode())
    fh = await env.fs.open(inode.id, os.O_RDONLY)
    try:
        return inode, await env.fs.read(fh, 0, 1 << 30)
    finally:
        await env.fs.release(fh)


def streamed(data, piece=65536):
    """A response body as the network gives it: a stream, not bytes already read."""
    async def gen():
        for pos in range(0, len(data), piece):
            yield data[pos:pos + piece]
    return gen()


@trio_test
async def test_lookup_pulls_with_bucket_default_and_metadata(tmp_path):
    data = os.urandom(MiB + 12345)
    calls = []

    def handler(request):
        calls.append(str(request.url))
        assert request.headers["accept-encoding"] == "identity"
        return httpx.Response(200, content=streamed(data), headers={
            "Content-Type": "image/png", "Expires": "Wed, 21 Oct 2037 07:28:00 GMT",
            "x-cos-meta-Color": "blue", "x-cos-meta-bad_name": "x", "Server": "test"})

    async with fs_env(tmp_path) as env:
        wire(env, handler)
        for bucket, sse in ((PLAIN, None), (ENC, "AES256")):
            inode, got = await lookup_data(env, bucket, "o/pic.png")
            assert got == data and inode.size == len(data)
            assert env.catalog.get_inode(inode.id).enc == sse
            assert env.catalog.get_xattr(inode.id, b"user.mime_type") == b"image/png"
            assert env.catalog.get_xattr(inode.id, b"user.color") == b"blue"
            assert env.catalog.get_xattr(inode.id, b"user.http.expires").startswith(b"Wed")
            assert env.catalog.get_xattr(inode.id, b"user.server") is None
        assert calls == ["http://origin.test/o/pic.png"] * 2
        # no rule for the key, no configuration: no fetch
        with pytest.raises(FsError) as info:
            await env.fs.lookup(env.bucket(PLAIN), b"elsewhere")
        assert info.value.errno == errno.ENOENT
        env.fs.delete_bucket_origin(env.bucket(PLAIN))
        with pytest.raises(FsError):
            await lookup_data(env, PLAIN, "o/other")
        assert len(calls) == 2


@trio_test
async def test_concurrent_misses_fetch_once_and_404_is_remembered(tmp_path):
    calls = []

    async def handler(request):
        calls.append(request.url.path)
        await trio.sleep(0.1)
        if request.url.path == "/o/none":
            return httpx.Response(404)
        return httpx.Response(200, content=streamed(b"x" * 100000))

    async with fs_env(tmp_path) as env:
        ks, service = wire(env, handler)
        results = []

        async def one():
            try:
                info = await ks.head_object(PLAIN, "o/a", pull=True)
                results.append(info.size)
            except CosfsError as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
        assert results == [100000] * 6 and calls == ["/o/a"]
        for _ in range(3):
            with pytest.raises(CosfsError) as info:
                await ks.head_object(PLAIN, "o/none", pull=True)
            assert info.value.code == "NoSuchKey"
        assert calls == ["/o/a", "/o/none"]
        assert service.fetches == 2


@trio_test
async def test_failures_leave_nothing_behind(tmp_path):
    async def broken_stream():
        yield b"a" * (3 * 65536)
        raise httpx.ReadError("connection reset")

    def handler(request):
        if request.url.path == "/o/reset":
            return httpx.Response(200, content=broken_stream())
        return httpx.Response(503)

    async with fs_env(tmp_path) as env:
        ks, service = wire(env, handler, retries=2)
        before = env.blobs()
        for key in ("o/reset", "o/busy"):
            with pytest.raises(OriginFailed) as info:
                await ks.open_object(ENC, key, pull=True)
            assert info.value.errno == errno.EIO and info.value.http_status == 424
            assert "http://origin.test/" + key in str(info.value)
        assert service.fetches == 6  # 1 + retries each
        assert ks.list_objects(ENC).contents == []
        await env.objects.collect_garbage()
        assert env.blobs() == before
        assert list(env.catalog.unlinked_inodes()) == []


@trio_test
async def test_an_object_written_meanwhile_wins(tmp_path):
    async with fs_env(tmp_path) as env:
        ks = None

        async def handler(request):
            await ks.put_object(PLAIN, "o/k", b"written by a user")
            return httpx.Response(200, content=streamed(b"from the origin"))

        ks, _ = wire(env, handler)
        info = await ks.head_object(PLAIN, "o/k", pull=True)
        assert info.size == len(b"written by a user")


def test_origin_metadata_filters():
    headers, meta = origin_metadata(httpx.Headers([
        (b"content-type", b"text/plain"), (b"cache-control", b"no-cache"),
        (b"x-cos-meta-a", b"1"), (b"x-cos-meta-", b"empty"), (b"x-cos-meta-\xfc", b"x"),
        (b"set-cookie", b"s=1"), (b"x-cos-meta-big", b"v" * 5000),
        (b"x-cos-meta-ctl", b"a\x01b")]))
    assert headers == {"content-type": "text/plain", "cache-control": "no-cache"}
    assert meta == {"a": "1"}
