"""cosfs's own FUSE session (cosfs.fuse.session) over a socket standing in for
/dev/fuse: each request a datagram in, each reply a datagram out, byte for byte as the
kernel would see them. The adapter is a fake; real mounts run the same session in the
mount tiers."""

import errno
import logging
import os
import socket
import stat
import struct
import time
import types

import pyfuse3
import pytest
import trio

from cosfs.fuse import protocol as P
from cosfs.fuse.ops import caller_in_group
from cosfs.fuse.session import RequestContext, Session

pytestmark = pytest.mark.timeout(60)


def entry(ino, mode=stat.S_IFREG | 0o644, size=0):
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.st_mode = mode
    e.st_size = size
    e.st_nlink = 1
    e.entry_timeout = e.attr_timeout = 10
    return e


class FakeOps(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self):
        super().__init__()
        self.calls = []
        self.setid_callers = []  # per drop_setid: (uid, gid, pid) of the caller, or None
        self.xattrs = {b"user.a": b"value"}
        self.kernel = None

    async def lookup(self, parent, name, ctx):
        self.calls.append(("lookup", parent, name, ctx.uid, ctx.pid))
        if name == b"boom":
            raise RuntimeError("a bug")
        if name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return entry(5)

    async def forget(self, inodes):
        self.calls.append(("forget", inodes))

    async def write(self, fh, off, data):
        self.calls.append(("write", fh, off, data))
        return len(data)

    async def read(self, fh, off, size):
        return b"r" * size

    async def readdir(self, fh, start, token):
        for i in range(start, 100):
            if not self.kernel.readdir_reply(token, b"name%d" % i, entry(10 + i), i + 1):
                break

    async def getxattr(self, inode, name, ctx):
        try:
            return self.xattrs[name]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENODATA) from None

    async def setxattr(self, inode, name, value, ctx):
        self.xattrs[name] = value

    async def fallocate(self, fh, mode, offset, length):
        self.calls.append(("fallocate", fh, mode, offset, length))
        if mode & 0x08:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=9)

    async def drop_setid(self, inode, ctx=None):
        self.calls.append(("drop_setid", inode))
        self.setid_callers.append(None if ctx is None else (ctx.uid, ctx.gid, ctx.pid))
        return entry(inode, mode=stat.S_IFREG | 0o755) if inode == 5 else None

    async def setattr(self, inode, attr, fields, fh, ctx):
        self.calls.append(("setattr", inode, fields.update_size, attr.st_size,
                           fields.update_mtime, attr.st_mtime_ns, fields.update_mode, fh))
        return entry(inode, size=attr.st_size)


def request(opcode, unique, nodeid=1, body=b"", uid=0, pid=1234):
    return P.IN_HEADER.pack(40 + len(body), opcode, unique, nodeid, uid, 0, pid, 0, 0) + body


def split_reply(data):
    length, error, unique = P.OUT_HEADER.unpack_from(data)
    assert length == len(data)
    return error, unique, data[16:]


def run(test):
    """Run ``test(ask, session, ops)`` against a session on a socket pair."""
    ops = FakeOps()
    kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session = Session(ops, "/nonexistent", set(), poll_limit=0)
    ops.kernel = session
    session.fd = daemon_end.fileno()
    daemon_end.setblocking(False)

    async def main():
        sock = trio.socket.from_stdlib_socket(kernel_end)

        async def ask(raw, reply=True):
            """Send ``raw`` (None: nothing) and return the next message, split."""
            if raw is not None:
                await sock.send(raw)
            if reply:
                return split_reply(await sock.recv(1 << 21))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.main)
            await trio.sleep(0)
            error, _, body = await ask(request(P.INIT, 1, body=P.INIT_IN.pack(
                7, 38, 131072, 0xffffffff)))
            assert error == 0
            await test(ask, session, ops)
            sock.close()  # the session reads the end of the connection and stops
    trio.run(main)
    daemon_end.close()
    return ops


def test_init_asks_for_what_libfuse_asks_and_its_own_version():
    async def test(ask, session, ops):
        assert session.proto_minor == P.MINOR
        assert session.flags & P.DO_READDIRPLUS
        assert session.flags & P.EXPORT_SUPPORT
        assert session.flags & P.HANDLE_KILLPRIV_V2  # the adapter has drop_setid
        assert not session.flags & (P.WRITEBACK_CACHE | P.READDIRPLUS_AUTO | P.POSIX_LOCKS)
    run(test)


def test_lookup_answers_an_entry_or_the_errno():
    async def test(ask, session, ops):
        error, unique, body = await ask(request(P.LOOKUP, 2, body=b"f\0"))
        assert (error, unique) == (0, 2)
        assert P.ENTRY_OUT.unpack_from(body)[0] == 5
        error, unique, body = await ask(request(P.LOOKUP, 3, body=b"g\0"))
        assert (error, unique, body) == (-errno.ENOENT, 3, b"")
    ops = run(test)
    assert ops.calls[0] == ("lookup", 1, b"f", 0, 1234)


def test_a_handler_bug_is_answered_eio_and_logged(caplog):
    async def test(ask, session, ops):
        error, _, _ = await ask(request(P.LOOKUP, 2, body=b"boom\0"))
        assert error == -errno.EIO
        error, _, _ = await ask(request(P.LOOKUP, 3, body=b"f\0"))  # still answering
        assert error == 0
    with caplog.at_level(logging.ERROR):
        run(test)
    assert "FUSE request lookup failed" in caplog.text


def test_unknown_operations_get_enosys():
    async def test(ask, session, ops):
        error, _, _ = await ask(request(P.GETLK, 2, body=bytes(48)))
        assert error == -errno.ENOSYS
        error, _, _ = await ask(request(P.MKDIR, 3, body=P.MKDIR_IN.pack(0o755, 0) + b"d\0"))
        assert error == -errno.ENOSYS  # the fake keeps pyfuse3's mkdir
    run(test)


def test_write_passes_a_copy_of_the_data():
    async def test(ask, session, ops):
        data = os.urandom(200_000)
        error, _, body = await ask(request(P.WRITE, 2, nodeid=5, body=P.WRITE_IN.pack(
            9, 4096, len(data), 0, 0, 0, 0) + data))
        assert error == 0 and P.WRITE_OUT.unpack(body)[0] == len(data)
        error, _, body = await ask(request(P.WRITE, 3, nodeid=5, body=P.WRITE_IN.pack(
            9, 0, 3, 0, 0, 0, 0) + b"abc"))
        assert ops.calls[0] == ("write", 9, 4096, data)
        assert ops.calls[1] == ("write", 9, 0, b"abc")
    run(test)


def test_read_answers_the_data():
    async def test(ask, session, ops):
        error, _, body = await ask(request(P.READ, 2, nodeid=5, body=P.READ_IN.pack(
            9, 0, 65536, 0, 0, 0, 0)))
        assert error == 0 and body == b"r" * 65536
    run(test)


def test_readdirplus_fills_the_reply_up_to_its_size():
    async def test(ask, session, ops):
        error, _, body = await ask(request(P.READDIRPLUS, 2, body=P.READ_IN.pack(
            1, 3, 1000, 0, 0, 0, 0)))
        assert error == 0 and len(body) <= 1000
        names, pos = [], 0
        while pos < len(body):
            ino, off, namelen, _ = P.DIRENT.unpack_from(body, pos + 128)
            names.append((body[pos + 152:pos + 152 + namelen], ino, off))
            pos += (152 + namelen + 7) // 8 * 8
        assert names[0] == (b"name3", 13, 4)
        assert len(names) == 1000 // 160  # each record: 152 bytes and a 5-byte name, padded
    run(test)


def test_forget_gets_no_reply():
    async def test(ask, session, ops):
        await ask(request(P.FORGET, 2, nodeid=5, body=P.FORGET_IN.pack(3)), reply=False)
        body = P.BATCH_FORGET_IN.pack(2, 0) + P.FORGET_ONE.pack(6, 1) + P.FORGET_ONE.pack(7, 2)
        await ask(request(P.BATCH_FORGET, 3, body=body), reply=False)
        error, unique, _ = await ask(request(P.LOOKUP, 4, body=b"f\0"))
        assert unique == 4  # the next reply is the lookup's
    ops = run(test)
    assert ("forget", [(5, 3)]) in ops.calls
    assert ("forget", [(6, 1), (7, 2)]) in ops.calls


def test_xattr_sizes_and_flags():
    async def test(ask, session, ops):
        get = P.GETXATTR_IN.pack(0, 0) + b"user.a\0"
        error, _, body = await ask(request(P.GETXATTR, 2, body=get))
        assert error == 0 and P.GETXATTR_OUT.unpack(body)[0] == 5
        error, _, body = await ask(request(P.GETXATTR, 3, body=P.GETXATTR_IN.pack(4, 0)
                                           + b"user.a\0"))
        assert error == -errno.ERANGE
        error, _, body = await ask(request(P.GETXATTR, 4, body=P.GETXATTR_IN.pack(64, 0)
                                           + b"user.a\0"))
        assert (error, body) == (0, b"value")
        create = P.SETXATTR_IN.pack(2, 1) + b"user.a\0xy"  # XATTR_CREATE
        error, _, _ = await ask(request(P.SETXATTR, 5, body=create))
        assert error == -errno.EEXIST
        replace = P.SETXATTR_IN.pack(2, 2) + b"user.b\0xy"  # XATTR_REPLACE
        error, _, _ = await ask(request(P.SETXATTR, 6, body=replace))
        assert error == -errno.ENODATA
        error, _, _ = await ask(request(P.SETXATTR, 7, body=P.SETXATTR_IN.pack(2, 0)
                                        + b"user.b\0xyz"))
        assert error == 0
    ops = run(test)
    assert ops.xattrs[b"user.b"] == b"xy"


def test_setattr_fields_and_now():
    async def test(ask, session, ops):
        valid = P.FATTR_SIZE | P.FATTR_MTIME_NOW | P.FATTR_FH
        body = P.SETATTR_IN.pack(valid, 0, 9, 123, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        error, _, reply = await ask(request(P.SETATTR, 2, nodeid=5, body=body))
        assert error == 0
        assert P.ATTR.unpack_from(reply, 16)[1] == 123
    ops = run(test)
    _, inode, update_size, size, update_mtime, mtime_ns, update_mode, fh = ops.calls[0]
    assert (inode, update_size, size, update_mtime, update_mode, fh) == \
        (5, True, 123, True, False, 9)
    assert abs(mtime_ns / 1e9 - time.time()) < 60


def test_setattr_takes_times_before_1970():
    async def test(ask, session, ops):
        body = P.SETATTR_IN.pack(P.FATTR_MTIME, 0, 0, 0, 0, 0, -2, 0, 0, 500_000_000, 0, 0, 0,
                                 0, 0, 0)
        error, _, _ = await ask(request(P.SETATTR, 2, nodeid=5, body=body))
        assert error == 0
    ops = run(test)
    assert ops.calls[0][4:6] == (True, -1_500_000_000)


def test_a_terminate_before_main_ends_it_at_once():
    session = Session(FakeOps(), "/nonexistent", set())
    session.terminate()
    trio.run(session.main)  # returns


def test_notifications_carry_their_code_and_no_request():
    async def test(ask, session, ops):
        session.notify_store(5, 4096, b"data")
        raw = await ask_raw(ask)
        length, code, unique = P.OUT_HEADER.unpack_from(raw)
        assert (length, code, unique) == (16 + 24 + 4, P.NOTIFY_STORE, 0)
        assert P.NOTIFY_STORE_OUT.unpack_from(raw, 16) == (5, 4096, 4, 0)
        session.invalidate_entry(1, b"name")
        raw = await ask_raw(ask)
        assert P.OUT_HEADER.unpack_from(raw)[1] == P.NOTIFY_INVAL_ENTRY
        assert raw[16 + 16:] == b"name\0"
        session.invalidate_inode(5, attr_only=True)
        raw = await ask_raw(ask)
        assert P.NOTIFY_INVAL_INODE_OUT.unpack_from(raw, 16) == (5, -1, 0)

    async def ask_raw(ask):
        error, unique, body = await ask(None)
        return struct.pack("<IiQ", 16 + len(body), error, unique) + body
    run(test)


def test_set_id_bits_are_dropped_where_the_kernel_flags_it():
    async def test(ask, session, ops):
        await ask(request(P.WRITE, 2, nodeid=6, body=P.WRITE_IN.pack(
            9, 0, 1, P.WRITE_KILL_SUIDGID, 0, 0, 0) + b"x"))
        await ask(request(P.WRITE, 3, nodeid=6, body=P.WRITE_IN.pack(9, 0, 1, 0, 0, 0, 0)
                          + b"y"))
        body = P.SETATTR_IN.pack(P.FATTR_UID | P.FATTR_KILL_SUIDGID, 0, 0, 0, 0, 0, 0, 0, 0,
                                 0, 0, 0, 0, 65534, 0, 0)
        error, _, reply = await ask(request(P.SETATTR, 4, nodeid=5, body=body))
        assert error == 0
        assert P.ATTR.unpack_from(reply, 16)[9] == stat.S_IFREG | 0o755  # drop_setid's
    ops = run(test)
    assert [c for c in ops.calls if c[0] in ("drop_setid", "write")] == [
        ("drop_setid", 6), ("write", 9, 0, b"x"), ("write", 9, 0, b"y"), ("drop_setid", 5)]


def test_set_id_bits_are_dropped_for_the_caller_of_a_write_or_truncation_only():
    """A write, truncation or O_TRUNC the kernel flags comes from a caller without
    CAP_FSETID, whose groups decide the set-group-ID bit; a change of owner is flagged
    for anyone, so it names no caller."""
    async def test(ask, session, ops):
        await ask(request(P.WRITE, 2, nodeid=6, uid=1000, pid=77, body=P.WRITE_IN.pack(
            9, 0, 1, P.WRITE_KILL_SUIDGID, 0, 0, 0) + b"x"))
        for unique, valid in ((3, P.FATTR_SIZE), (4, P.FATTR_UID | P.FATTR_SIZE)):
            body = P.SETATTR_IN.pack(valid | P.FATTR_KILL_SUIDGID, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 65534, 0, 0)
            error, _, _ = await ask(request(P.SETATTR, unique, nodeid=6, uid=1000, pid=77,
                                            body=body))
            assert error == 0
        error, _, _ = await ask(request(P.OPEN, 5, nodeid=6, uid=1000, pid=77,
                                        body=P.OPEN_IN.pack(os.O_WRONLY | os.O_TRUNC,
                                                            P.OPEN_KILL_SUIDGID)))
        assert error == 0
    ops = run(test)
    assert ops.setid_callers == [(1000, 0, 77), (1000, 0, 77), None, (1000, 0, 77)]


def test_fallocate_reaches_the_adapter_and_other_users_drop_set_id_bits():
    async def test(ask, session, ops):
        error, _, body = await ask(request(P.FALLOCATE, 2, nodeid=5, body=P.FALLOCATE_IN.pack(
            9, 1 << 40, 4096, 0x03, 0)))
        assert (error, body) == (0, b"")
        error, _, _ = await ask(request(P.FALLOCATE, 3, nodeid=5, uid=1000,
                                        body=P.FALLOCATE_IN.pack(9, 0, 10, 0, 0)))
        assert error == 0
        error, _, _ = await ask(request(P.FALLOCATE, 4, nodeid=5, uid=1000,
                                        body=P.FALLOCATE_IN.pack(9, 0, 10, 0x08, 0)))
        assert error == -errno.EOPNOTSUPP
    ops = run(test)
    assert [c for c in ops.calls if c[0] in ("drop_setid", "fallocate")] == [
        ("fallocate", 9, 0x03, 1 << 40, 4096), ("drop_setid", 5), ("fallocate", 9, 0, 0, 10),
        ("drop_setid", 5), ("fallocate", 9, 0x08, 0, 10)]


def test_mount_parameters():
    from cosfs.fuse.session import _mount_parameters
    flags, kernel, source, fstype = _mount_parameters(
        {"fsname=cosfs-x", "subtype=cosfs", "noatime", "ro", "allow_other",
         "default_permissions"}, "cosfs")
    assert flags == 1 | 2 | 4 | 1024  # ro, always nosuid and nodev, noatime
    assert kernel == ["allow_other", "default_permissions"]
    assert (source, fstype) == ("cosfs-x", "fuse.cosfs")
    with pytest.raises(RuntimeError, match="unknown mount option 'suid'"):
        _mount_parameters({"suid"}, "cosfs")


def test_another_user_mounts_through_pyfuse3(monkeypatch):
    from cosfs import mount
    from cosfs.fuse.loop import Pyfuse3Session
    cfg = types.SimpleNamespace(fuse_loop="native", request_poll_us=50)
    assert isinstance(mount._fuse_session(cfg, FakeOps(), "/m", set()), Session)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert isinstance(mount._fuse_session(cfg, FakeOps(), "/m", set()), Pyfuse3Session)
    cfg.fuse_loop = "pyfuse3"
    monkeypatch.undo()
    assert isinstance(mount._fuse_session(cfg, FakeOps(), "/m", set()), Pyfuse3Session)


def test_requests_read_in_a_row_leave_other_tasks_their_turn():
    """With the poll on, a task reads the next request without going back to trio while
    trio has nothing else to do; timers and worker threads still get their turn while a
    program sends requests as fast as it can."""
    ops = FakeOps()
    kernel_end, daemon_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    session = Session(ops, "/nonexistent", set(), poll_limit=50e-6)
    ops.kernel = session
    session.fd = daemon_end.fileno()
    daemon_end.setblocking(False)
    ticks = []
    answers = []

    def program():
        kernel_end.send(request(P.INIT, 1, body=P.INIT_IN.pack(7, 38, 131072, 0)))
        kernel_end.recv(4096)
        for i in range(3000):
            kernel_end.send(request(P.LOOKUP, 10 + i, body=b"f\0"))
            error, unique, _ = split_reply(kernel_end.recv(4096))
            answers.append((error, unique - 10 - i))

    async def timer(done):
        while not done.is_set():
            await trio.sleep(0.001)
            ticks.append("timer")

    async def threads(done):
        while not done.is_set():
            await trio.to_thread.run_sync(time.sleep, 0)
            ticks.append("thread")

    async def main():
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.main)
            nursery.start_soon(timer, done)
            nursery.start_soon(threads, done)
            t0 = time.monotonic()
            await trio.to_thread.run_sync(program)
            elapsed = time.monotonic() - t0
            done.set()
            kernel_end.close()
        return elapsed
    elapsed = trio.run(main)
    daemon_end.close()
    assert answers == [(0, 0)] * 3000
    # a timer every millisecond at least every few: the requests did not starve it
    assert ticks.count("timer") >= elapsed * 1000 / 5, (ticks.count("timer"), elapsed)
    assert ticks.count("thread") >= 10


def test_a_refused_reply_is_logged_and_the_session_goes_on(caplog):
    """A reply the kernel will not take (here: a descriptor that cannot be written) is a
    log line, not the end of the session."""
    session = Session(FakeOps(), "/nonexistent", set())
    read_end, write_end = os.pipe()
    try:
        session.fd = read_end
        with caplog.at_level(logging.ERROR):
            session._reply(7, b"x")
        assert "the kernel refused a reply (17 bytes)" in caplog.text
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_callers_groups_come_from_proc_and_a_vanished_caller_has_its_own_only():
    me = RequestContext(os.getuid(), 54321, os.getpid())
    assert caller_in_group(me, 54321)  # the request's own group
    for gid in os.getgroups():
        assert caller_in_group(me, gid)
    assert not caller_in_group(me, 54322)
    gone = RequestContext(0, 7, 2 ** 22 + 12345)  # above pid_max: no such process
    assert caller_in_group(gone, 7) and not caller_in_group(gone, 0)
