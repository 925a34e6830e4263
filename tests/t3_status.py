"""The daemon's status (cosfs.mount.DaemonStatus) over a real filesystem layer, without FUSE:
the numbers follow the activity, the mount root's ``user.cos.status`` xattr serves them, and
the daemon's adapter lets only root and the mount's owner read it."""

import errno
import json
import logging
import os

import pytest
import trio
import trio.testing

from cosfs.catalog import ROOT_INODE
from cosfs.errors import CosfsError
from cosfs.mount import DaemonStatus, _daemon_operations
from cosfs.xattrs import STATUS_XATTR

from helpers import ENC, PLAIN, fs_env, tmp_path, trio_test  # noqa: F401

CHUNK = 64 * 1024


class FakeCtx:
    def __init__(self, uid):
        self.uid, self.gid, self.umask = uid, uid, 0o022


@trio_test
async def test_numbers_follow_the_activity(tmp_path):
    async with fs_env(tmp_path, write_buffer="1MiB") as env:
        status = DaemonStatus(env.config, env.store, env.objects, env.fs, "/srv/cos")
        st = status.snapshot()
        assert st["open_files"] == 0 and st["dirty_bytes"] == 0
        assert st["uncommitted"] == {"objects": 0, "buffered_bytes": 0, "sealed_bytes": 0,
                                     "write_buffer": 1 << 20}
        assert st["mountpoint"] == "/srv/cos" and st["store"] == str(env.config.store)
        assert st["key_store"] == {"path": str(env.config.keys), "current": "v1",
                                   "versions": ["v1"], "retired": []}
        assert st["buckets"] == [{"name": ENC, "region": "ap-guangzhou", "encryption": "AES256"},
                                 {"name": PLAIN, "region": "ap-guangzhou", "encryption": None}]
        assert st["cache"]["size_bytes"] == 1 << 20 and st["cache"]["used_bytes"] == 0

        fh, ino = await env.new_file("f", bucket=ENC)
        size = 3 * CHUNK + 100
        await env.fs.write(fh, 0, os.urandom(size))
        await trio.testing.wait_all_tasks_blocked()
        st = status.snapshot()
        assert st["open_files"] == 1 and st["uncommitted"]["objects"] == 1
        assert st["dirty_bytes"] == size
        assert st["uncommitted"]["sealed_bytes"] == 3 * CHUNK  # completed chunks, not committed
        assert st["uncommitted"]["buffered_bytes"] == 100
        await env.fs.release(fh)
        st = status.snapshot()
        assert st["open_files"] == 0 and st["dirty_bytes"] == 0
        assert st["uncommitted"]["objects"] == 0

        fh = await env.fs.open(ino, os.O_RDONLY)
        assert len(await env.fs.read(fh, 0, size)) == size
        await env.fs.release(fh)
        assert status.snapshot()["cache"]["used_bytes"] > 0

        env.fs.put_bucket_encryption(env.bucket(PLAIN), b"SM4")
        assert status.snapshot()["buckets"][1]["encryption"] == "SM4"


@trio_test
async def test_last_error_is_reported(tmp_path):
    async with fs_env(tmp_path) as env:
        status = DaemonStatus(env.config, env.store, env.objects, env.fs, "/srv/cos")
        logging.getLogger().addHandler(status.errors)
        try:
            logging.getLogger("cosfs.test").error("cannot read object %s", "x/y")
        finally:
            logging.getLogger().removeHandler(status.errors)
        errors = status.snapshot()["errors"]
        assert errors["count"] == 1 and errors["last"]["message"] == "cannot read object x/y"


@trio_test
async def test_root_xattr_serves_the_status(tmp_path, monkeypatch):
    async with fs_env(tmp_path) as env:
        with pytest.raises(CosfsError) as info:  # no daemon: no status
            await env.fs.getxattr(ROOT_INODE, STATUS_XATTR)
        assert info.value.errno == errno.ENODATA
        monkeypatch.setattr(DaemonStatus, "MEMO_SECONDS", 60)
        status = DaemonStatus(env.config, env.store, env.objects, env.fs, "/srv/cos")
        env.fs.daemon_info = {"pid": 4242, "status": status.xattr}
        value = await env.fs.getxattr(ROOT_INODE, STATUS_XATTR)
        assert json.loads(value)["pid"] == os.getpid()
        assert STATUS_XATTR not in await env.fs.listxattr(ROOT_INODE)
        with pytest.raises(CosfsError):  # only on the root
            await env.fs.getxattr(env.bucket(ENC), STATUS_XATTR)

        # a size query and the read after it see the same text, even as numbers change
        fh, _ = await env.new_file("g", bucket=PLAIN)
        await env.fs.write(fh, 0, b"x" * 10)
        assert await env.fs.getxattr(ROOT_INODE, STATUS_XATTR) == value
        monkeypatch.setattr(DaemonStatus, "MEMO_SECONDS", 0)
        fresh = json.loads(await env.fs.getxattr(ROOT_INODE, STATUS_XATTR))
        assert fresh["dirty_bytes"] == 10 and fresh["open_files"] == 1
        await env.fs.release(fh)

        # no secrets: no key bytes, no check values
        checks = json.loads(env.catalog.get_meta("key_checks"))
        for check in checks.values():
            assert check.encode() not in value


@trio_test
async def test_status_only_for_root_and_owner(tmp_path):
    import pyfuse3
    async with fs_env(tmp_path) as env:
        status = DaemonStatus(env.config, env.store, env.objects, env.fs, "/srv/cos")
        env.fs.daemon_info = {"pid": 4242, "status": status.xattr}
        ops = _daemon_operations(env.fs)
        assert json.loads(await ops.getxattr(ROOT_INODE, STATUS_XATTR, FakeCtx(0)))
        assert json.loads(await ops.getxattr(ROOT_INODE, STATUS_XATTR, FakeCtx(os.getuid())))
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getxattr(ROOT_INODE, STATUS_XATTR, FakeCtx(65534))
        assert info.value.errno == errno.EACCES
        # the pid stays readable for everyone who reaches the mount
        assert await ops.getxattr(ROOT_INODE, b"user.cos.daemon-pid", FakeCtx(65534)) == b"4242"
