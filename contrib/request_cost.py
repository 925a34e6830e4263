#!/usr/bin/env python3
"""What one FUSE request costs: cosfs, gocryptfs, and an empty pyfuse3 file system.

    python contrib/request_cost.py [--calls N] [--rounds N] [--workdir DIR]

Every small-file workload is made of FUSE requests, so the daemon's CPU time
per request bounds how fast it can be. This measures it on eight targets,
all on one disk, in one run:

* ``pyfuse3``    a file system that answers every request at once (one file,
  no data kept): what any daemon built on pyfuse3 and trio pays;
* ``pyfuse3-rw``  the same file system with cosfs's wait for the next request
  (``cosfs.fuse.loop.RequestWait``, which saves pyfuse3's hand-over between
  two tasks per request, and polls briefly before it sleeps): the floor cosfs
  cannot go below;
* ``raw``        the same empty file system without pyfuse3 and libfuse: a loop on
  trio that reads the kernel's requests from ``/dev/fuse`` and writes the replies
  itself (the FUSE protocol's structures, ``struct`` and ``os.read``/``os.write``,
  one coroutine per request, the same poll before sleeping): what a request loop
  of cosfs's own would cost;
* ``raw-killpriv``  the same, asking the kernel for ``FUSE_HANDLE_KILLPRIV_V2``
  (the file system clears set-user-ID bits itself, so the kernel sends no
  ``security.capability`` GETXATTR before each write), which pyfuse3 3.5 cannot
  ask for;
* ``gocryptfs``  an encrypted Go file system (go-fuse), the benchmark's peer;
* ``cosfs-aes``  a cosfs mount, one file in a bucket with AES256 default
  encryption, on cosfs's own FUSE session (``fuse_loop: native``);
* ``cosfs-aes-pyfuse3``  the same on pyfuse3's request loop (``fuse_loop: pyfuse3``).

Two loops run against one file of each (``--calls`` each, ``--rounds``
times, medians): ``getxattr("security.capability")``, which the kernel sends
as two GETXATTR requests that every daemon refuses at once, and a 4 KiB
``pwrite`` into the first 1 MiB, which the kernel sends as a GETXATTR (the
capability check before every write; not to ``raw-killpriv``) and a WRITE.
Reported per request: the caller's wall time and the daemon's CPU time (user
+ system, all threads, from ``/proc/PID/stat``); and the caller's wall time
per call. The request counts are the kernel's (tracepoint
``fuse:fuse_request_send``; counted once here if tracefs is there). Run as
root; needs ``gocryptfs`` for its column.
"""

import argparse
import collections
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402 (the targets and helpers of the main benchmark)

#: Size of the one file of every target.
SIZE = 1 << 20


def serve(mountpoint, request_wait=False):
    """Mount the empty pyfuse3 file system at ``mountpoint`` until unmounted (this file
    runs it with ``--serve MOUNTPOINT``), with cosfs's wait for the next request if
    ``request_wait`` (``--request-wait``)."""
    import errno
    import stat

    import pyfuse3
    import trio

    class Empty(pyfuse3.Operations):
        async def getattr(self, inode, ctx=None):
            e = pyfuse3.EntryAttributes()
            e.st_ino = inode
            e.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE \
                else (stat.S_IFREG | 0o644)
            e.st_nlink = 1
            e.st_size = SIZE
            e.attr_timeout = e.entry_timeout = 10
            return e

        async def lookup(self, parent, name, ctx=None):
            if name != b"file":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(pyfuse3.ROOT_INODE + 1)

        async def getxattr(self, inode, name, ctx):
            raise pyfuse3.FUSEError(errno.ENOTSUP)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode)

        async def write(self, fh, off, buf):
            return len(buf)

    from cosfs.fuse import loop

    async def run(wait):
        if wait is not None:
            wait.install()
        await pyfuse3.main()

    options = set(pyfuse3.default_options) | {"fsname=empty", "default_permissions"}
    wait = loop.init(Empty(), mountpoint, options)  # pyfuse3.init
    try:
        trio.run(run, wait if request_wait else None)
    finally:
        pyfuse3.close()


#: The FUSE protocol's structures (``linux/fuse.h``) that the raw file system uses.
IN_HEADER = struct.Struct("<IIQQIIIHH")       # fuse_in_header: len, opcode, unique, nodeid, ...
OUT_HEADER = struct.Struct("<IiQ")            # fuse_out_header: len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")     # fuse_attr
ENTRY_OUT = struct.Struct("<QQQQII")          # fuse_entry_out, up to its fuse_attr
ATTR_OUT = struct.Struct("<QII")              # fuse_attr_out, up to its fuse_attr
INIT_IN = struct.Struct("<IIII")              # fuse_init_in: major, minor, readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")   # fuse_init_out (64 bytes)
WRITE_IN = struct.Struct("<QQIIQII")          # fuse_write_in: fh, offset, size, ...
OPEN_OUT = struct.Struct("<QII")              # fuse_open_out: fh, open_flags, backing id
WRITE_OUT = struct.Struct("<II")              # fuse_write_out: size
#: fuse_init_in/out flags: FUSE_ASYNC_READ, FUSE_BIG_WRITES, FUSE_MAX_PAGES, and
FLAGS = (1 << 0) | (1 << 5) | (1 << 22)
HANDLE_KILLPRIV_V2 = 1 << 28


def serve_raw(mountpoint, killpriv=False, poll_limit=50e-6):
    """Mount the empty file system at ``mountpoint`` and answer the kernel's requests
    without pyfuse3 or libfuse until unmounted (``--serve-raw MOUNTPOINT``, with
    ``--killpriv`` asking for ``FUSE_HANDLE_KILLPRIV_V2``). Root only (``mount(2)``)."""
    import ctypes
    import errno
    import select
    import stat

    import trio

    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    libc = ctypes.CDLL(None, use_errno=True)
    options = "fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions" % fd
    if libc.mount(b"empty", os.fsencode(mountpoint), b"fuse.empty", ctypes.c_ulong(6),
                  options.encode()) != 0:  # MS_NOSUID | MS_NODEV
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), mountpoint)
    os.set_blocking(fd, False)
    now = int(time.time())

    def attr(ino):
        mode = (stat.S_IFDIR | 0o755) if ino == 1 else (stat.S_IFREG | 0o644)
        return ATTR.pack(ino, 0 if ino == 1 else SIZE, 0, now, now, now, 0, 0, 0, mode, 1,
                         0, 0, 0, 4096, 0)

    def reply(unique, payload=b"", error=0):
        try:
            os.write(fd, OUT_HEADER.pack(16 + len(payload), -error, unique) + payload)
        except FileNotFoundError:  # the request was interrupted meanwhile
            pass

    async def lookup(head, body):
        if bytes(body[:-1]) != b"file":
            reply(head[2], error=errno.ENOENT)
        else:
            reply(head[2], ENTRY_OUT.pack(2, 0, 10, 10, 0, 0) + attr(2))

    async def getattr(head, body):
        reply(head[2], ATTR_OUT.pack(10, 0, 0) + attr(head[3]))

    async def getxattr(head, body):
        reply(head[2], error=errno.EOPNOTSUPP)

    async def open_(head, body):
        reply(head[2], OPEN_OUT.pack(head[3], 0, 0))

    async def write(head, body):
        reply(head[2], WRITE_OUT.pack(WRITE_IN.unpack_from(body)[2], 0))

    async def done(head, body):
        reply(head[2])

    async def no_reply(head, body):
        pass

    async def init(head, body):
        _, minor, readahead, flags = INIT_IN.unpack_from(body)
        want = flags & (FLAGS | (HANDLE_KILLPRIV_V2 if killpriv else 0))
        reply(head[2], INIT_OUT.pack(7, min(minor, 33), readahead, want, 16, 12, 1 << 20, 1,
                                     256, 0, 0))

    # LOOKUP, FORGET, GETATTR, OPEN, WRITE, RELEASE, GETXATTR, FLUSH, INIT, OPENDIR,
    # RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET; anything else: ENOSYS
    handlers = {1: lookup, 2: no_reply, 3: getattr, 14: open_, 16: write, 18: done,
                22: getxattr, 25: done, 26: init, 27: open_, 29: done, 36: no_reply,
                38: done, 42: no_reply}
    ready = select.poll()
    ready.register(fd, select.POLLIN)

    async def main():
        while True:
            try:
                data = os.read(fd, (1 << 20) + 4096)
            except BlockingIOError:
                # the poll before sleeping, as cosfs's request loop makes it
                end = time.perf_counter() + poll_limit
                while not ready.poll(0):
                    if time.perf_counter() >= end:
                        await trio.lowlevel.wait_readable(fd)
                        break
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted
                    continue
                if exc.errno == errno.ENODEV:  # unmounted
                    return
                raise
            head = IN_HEADER.unpack_from(data)
            handler = handlers.get(head[1])
            if handler is None:
                reply(head[2], error=errno.ENOSYS)
            else:
                await handler(head, memoryview(data)[IN_HEADER.size:])

    try:
        trio.run(main)
    finally:
        os.close(fd)


class EmptyFs(benchmark.FuseDaemon):
    name = "pyfuse3"

    def setup(self):
        self.folder = os.path.join(self.root, self.name)
        self.mnt = os.path.join(self.folder, "mnt")
        self.logfile = os.path.join(self.folder, "daemon.log")
        os.makedirs(self.folder, exist_ok=True)
        self.path = self.mnt

    def command(self):
        return [sys.executable, os.path.abspath(__file__), "--serve", self.mnt]


class EmptyWaitFs(EmptyFs):
    name = "pyfuse3-rw"

    def command(self):
        return super().command() + ["--request-wait"]


class RawFs(EmptyFs):
    name = "raw"

    def command(self):
        return [sys.executable, os.path.abspath(__file__), "--serve-raw", self.mnt]


class RawKillprivFs(RawFs):
    name = "raw-killpriv"

    def command(self):
        return super().command() + ["--killpriv"]


def target_file(t):
    path = os.path.join(t.path, "file")
    if not isinstance(t, EmptyFs):
        with open(path, "wb") as f:
            f.write(bytes(SIZE))
    return path


def getxattr_loop(path, n):
    for _ in range(n):
        try:
            os.getxattr(path, "security.capability")
        except OSError:
            pass


def pwrite_loop(path, n):
    fd = os.open(path, os.O_WRONLY)
    try:
        block = b"x" * 4096
        for i in range(n):
            os.pwrite(fd, block, (i % 256) * 4096)
    finally:
        os.close(fd)


LOOPS = (("getxattr", getxattr_loop), ("pwrite 4 KiB", pwrite_loop))


def count_requests(loop, path, n=1000):
    """{opcode name: requests per call} the kernel sent for ``n`` calls, or None without
    the tracepoint."""
    counter = benchmark.RequestCounter()
    if not counter.available:
        return None
    with counter:
        loop(path, n)
    return {k: round(v / n, 2) for k, v in counter.counts.items() if v / n >= 0.05}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per loop (default 20000)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--workdir", default="/var/tmp", help="folder for the targets")
    ap.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--request-wait", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-raw", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    ap.add_argument("--killpriv", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.request_wait)
        return 0
    if args.serve_raw:
        serve_raw(args.serve_raw, args.killpriv)
        return 0
    root = tempfile.mkdtemp(prefix="cosfs-request-cost-", dir=args.workdir)
    targets = [EmptyFs(root), EmptyWaitFs(root), RawFs(root), RawKillprivFs(root),
               benchmark.Cosfs(root, "cosfs-aes", "AES256", {"fuse_loop": "native"}),
               benchmark.Cosfs(root, "cosfs-aes-pyfuse3", "AES256", {"fuse_loop": "pyfuse3"})]
    if shutil.which("gocryptfs"):
        targets.insert(1, benchmark.Gocryptfs(root))
    results = collections.defaultdict(list)
    counts = {}
    try:
        for t in targets:
            t.setup()
        for r in range(args.rounds):
            for t in targets[r % len(targets):] + targets[:r % len(targets)]:
                t.mount()
                try:
                    path = target_file(t)
                    for name, loop in LOOPS:
                        if (t.name, name) not in counts:
                            counts[t.name, name] = count_requests(loop, path)
                        per_call = sum(counts[t.name, name].values()) \
                            if counts[t.name, name] else 2
                        c0, t0 = benchmark.cpu_seconds(t.pid), time.perf_counter()
                        loop(path, args.calls)
                        wall = time.perf_counter() - t0
                        cpu = benchmark.cpu_seconds(t.pid) - c0
                        n = args.calls * per_call
                        results[t.name, name].append((wall / n * 1e6, cpu / n * 1e6,
                                                      wall / args.calls * 1e6))
                        benchmark.log("%s %s: %.1f us wall, %.1f us daemon CPU per request"
                                      % (t.name, name, wall / n * 1e6, cpu / n * 1e6))
                finally:
                    t.unmount()
    finally:
        for t in targets:
            t.unmount()
        shutil.rmtree(root, ignore_errors=True)
    print("| loop | target | requests per call | wall µs per request | daemon CPU µs per request "
          "| wall µs per call |")
    print("|---|---|---|---|---|---|")
    for name, _ in LOOPS:
        for t in targets:
            rows = results[t.name, name]
            kinds = counts.get((t.name, name))
            print("| %s | %s | %s | %.1f | %.1f | %.1f |" % (
                name, t.name, ", ".join("%s %g" % kv for kv in sorted(kinds.items()))
                if kinds else "n/a",
                statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows),
                statistics.median(r[2] for r in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
