"""gatefs: a FUSE file system whose handlers block, served through cosfs's request wait.

    python tests/gatefs.py MOUNTPOINT [POLL_US]

It runs pyfuse3's request loop with :class:`cosfs.fuse.loop.RequestWait`, as the cosfs
daemon does, and prints ``installed`` (or ``stock``) once mounted. Its root holds:

- ``gate``: a read blocks until a lookup of ``key`` (a request of its own) opens the
  gate, and answers ``open``;
- ``key``: a lookup opens the gate (the name does not exist: ENOENT);
- ``held``: a read waits in a worker thread until a lookup of ``release`` (a request of
  its own, ENOENT) lets it go, and answers ``held``;
- ``slow``: a read waits one second in a worker thread and answers ``slow``;
- ``brief``: the same with a twentieth of a second;
- ``yield``: a read lets other tasks run (with some ready to run) and answers ``yield``;
- ``used``: a read answers how many tasks have read a request so far
  (:attr:`RequestWait.tasks_used`).

The root's size tells the window of the poll before sleeping in one request (a GETATTR):
1 + the window in microseconds (:attr:`RequestWait.poll_window`), or 0 while it does not
poll. Its limit is ``POLL_US`` (default :data:`cosfs.fuse.loop.POLL_MAX`).

SIGTERM ends it through ``pyfuse3.terminate()`` (:meth:`RequestWait.terminate` while
installed); ``fusermount3 -u`` by the end of the device.
"""

import errno
import os
import signal
import stat
import sys
import threading
import time

import pyfuse3
import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cosfs.fuse import loop  # noqa: E402

FILES = {b"gate": 2, b"slow": 3, b"used": 4, b"brief": 5, b"held": 6, b"yield": 7}


class GateFs(pyfuse3.Operations):
    def __init__(self):
        super().__init__()
        self.gate = None
        self.held = threading.Event()
        self.wait = None

    async def getattr(self, inode, ctx=None):
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.st_mode = (stat.S_IFDIR | 0o755) if inode == pyfuse3.ROOT_INODE \
            else (stat.S_IFREG | 0o644)
        e.st_nlink = 1
        e.st_size = 4
        if inode == pyfuse3.ROOT_INODE:
            window = self.wait.poll_window
            e.st_size = 0 if window is None else 1 + round(window * 1e6)
        e.attr_timeout = e.entry_timeout = 0
        return e

    async def lookup(self, parent, name, ctx=None):
        if name == b"key":
            self.gate.set()
        if name == b"release":
            self.held.set()
        if name not in FILES:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(FILES[name])

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)

    async def read(self, fh, off, size):
        if off:
            return b""
        if fh == FILES[b"gate"]:
            await self.gate.wait()
            return b"open"
        if fh == FILES[b"held"]:
            await trio.to_thread.run_sync(self.held.wait)
            return b"held"
        if fh == FILES[b"yield"]:
            async with trio.open_nursery() as nursery:  # another task ready to run
                nursery.start_soon(trio.sleep, 0)
                await trio.sleep(0)
            return b"yield"
        if fh == FILES[b"used"]:
            return b"%4d" % self.wait.tasks_used
        if fh == FILES[b"brief"]:
            await trio.to_thread.run_sync(time.sleep, 0.05)
            return b"brief"
        await trio.to_thread.run_sync(time.sleep, 1)
        return b"slow"


async def serve(fs, wait):
    fs.gate = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def on_term():
                async for _ in signals:
                    pyfuse3.terminate()  # RequestWait.terminate while installed
                    return
            nursery.start_soon(on_term)
            try:
                installed = wait is not None and wait.install()
                print("installed" if installed else "stock", flush=True)
                await pyfuse3.main()
            finally:
                if wait is not None:
                    wait.uninstall()
            nursery.cancel_scope.cancel()


def main():
    fs = GateFs()
    limit = float(sys.argv[2]) * 1e-6 if len(sys.argv) > 2 else loop.POLL_MAX
    wait = fs.wait = loop.init(fs, sys.argv[1], set(pyfuse3.default_options) | {"fsname=gatefs"},
                               poll_limit=limit)
    try:
        trio.run(serve, fs, wait)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
