#!/usr/bin/env python3
"""What one FUSE request costs: cosfs, gocryptfs, and an empty pyfuse3 file system.

    python contrib/request_cost.py [--calls N] [--rounds N] [--workdir DIR]

Every small-file workload is made of FUSE requests, so the daemon's CPU time
per request bounds how fast it can be. This measures it on four targets,
all on one disk, in one run:

* ``pyfuse3``    a file system that answers every request at once (one file,
  no data kept): what any daemon built on pyfuse3 and trio pays;
* ``pyfuse3-rw``  the same file system with cosfs's wait for the next request
  (``cosfs.fuse.loop.RequestWait``, which saves pyfuse3's hand-over between
  two tasks per request, and polls briefly before it sleeps): the floor cosfs
  cannot go below;
* ``gocryptfs``  an encrypted Go file system (go-fuse), the benchmark's peer;
* ``cosfs-aes``  a cosfs mount, one file in a bucket with AES256 default
  encryption.

Two loops run against one file of each (``--calls`` each, ``--rounds``
times, medians): ``getxattr("security.capability")``, which the kernel sends
as two GETXATTR requests that every daemon refuses at once, and a 4 KiB
``pwrite`` into the first 1 MiB, which the kernel sends as a GETXATTR (the
capability check before every write) and a WRITE. Reported per request:
the caller's wall time and the daemon's CPU time (user + system, all
threads, from ``/proc/PID/stat``). The request counts are the kernel's
(tracepoint ``fuse:fuse_request_send``; counted once here if tracefs is
there). Run as root; needs ``gocryptfs`` for its column.
"""

import argparse
import collections
import os
import shutil
import statistics
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
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.request_wait)
        return 0
    root = tempfile.mkdtemp(prefix="cosfs-request-cost-", dir=args.workdir)
    targets = [EmptyFs(root), EmptyWaitFs(root),
               benchmark.Cosfs(root, "cosfs-aes", "AES256", {})]
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
                        results[t.name, name].append((wall / n * 1e6, cpu / n * 1e6))
                        benchmark.log("%s %s: %.1f us wall, %.1f us daemon CPU per request"
                                      % (t.name, name, wall / n * 1e6, cpu / n * 1e6))
                finally:
                    t.unmount()
    finally:
        for t in targets:
            t.unmount()
        shutil.rmtree(root, ignore_errors=True)
    print("| loop | target | requests per call | wall µs per request | daemon CPU µs per request |")
    print("|---|---|---|---|---|")
    for name, _ in LOOPS:
        for t in targets:
            rows = results[t.name, name]
            kinds = counts.get((t.name, name))
            print("| %s | %s | %s | %.1f | %.1f |" % (
                name, t.name, ", ".join("%s %g" % kv for kv in sorted(kinds.items()))
                if kinds else "n/a",
                statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
