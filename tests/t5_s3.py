"""Crash, differential and outage tests with the default region's chunks on SeaweedFS.

The crash runner of ``t5_crash`` (write-and-kill rounds, fsck after each kill, the tree
compared with every state the journal allows) and the differential runner of
``t5_differential`` run unchanged on an S3 store, fewer rounds and steps than on the local
store. The outage test kills SeaweedFS under a running mount and restarts it: writes in
the window fail with EIO or succeed after the restart, and nothing acknowledged is lost.
"""

import errno
import os
import subprocess
import sys
import time

import pytest

from conftest import ENC, Mount, get, needs_fuse, put, s3_store_yaml, write_config
from t5_crash import CrashRunner, run_rounds
from t5_differential import Differential

pytestmark = [needs_fuse, pytest.mark.timeout(300)]

CHUNK = 64 * 1024

#: writes 3 chunks and fsyncs; prints the data (hex) or exits with the errno
WRITER = """
import os, sys
data = os.urandom(3 * 64 * 1024 + int(sys.argv[2]))
try:
    with open(sys.argv[1], "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
except OSError as exc:
    sys.exit(exc.errno)
print(data.hex())
"""


class S3CrashRunner(CrashRunner):
    """The crash runner with the store's default region on ``server``."""

    what = "crash test on S3"
    server = None
    write_back = False

    def make_config(self, folder, chunk_size, write_buffer):
        extra = {"write_back": "true"} if self.write_back else {}
        return write_config(folder, chunk_size=chunk_size, write_buffer=write_buffer,
                            extra=s3_store_yaml(self.server, folder, cache_size="4MiB", **extra))


@pytest.mark.parametrize("mix,seed,write_back", [("writes", 111, False), ("reencrypt", 313, False),
                                                 ("writes", 222, True)])
def test_crash_on_s3(seaweedfs, tmp_path, monkeypatch, mix, seed, write_back):
    monkeypatch.setattr(S3CrashRunner, "server", seaweedfs)
    monkeypatch.setattr(S3CrashRunner, "write_back", write_back)
    run_rounds(str(tmp_path / "fs"), seed, mix, 3, runner_class=S3CrashRunner, max_delay=1.5)


def test_differential_on_s3(seaweedfs, tmp_path):
    folder = str(tmp_path / "fs")
    m = Mount(write_config(folder, chunk_size="64KiB", write_buffer="128KiB",
                           extra=s3_store_yaml(seaweedfs, folder, cache_size="2MiB")))
    m.start()
    try:
        ref = tmp_path / "ref"
        ref.mkdir()
        cos_root = os.path.join(m.mnt, ENC, "t")
        os.mkdir(cos_root)
        os.chmod(ref, os.stat(cos_root).st_mode & 0o7777)
        d = Differential(7, cos_root, str(ref), restart=m.restart,
                         log_path=str(tmp_path / "oplog.txt"))
        d.run(800, remount_at=(400,))
    finally:
        m.stop()
    assert not m.unexpected_log_lines()


def test_service_killed_and_restarted_during_writes(seaweedfs, tmp_path):
    from seaweed import SeaweedFS
    server = SeaweedFS(str(tmp_path / "weed")).start()  # its own: this test kills it
    try:
        folder = str(tmp_path / "fs")
        m = Mount(write_config(folder, chunk_size="64KiB", write_buffer="256KiB",
                               extra=s3_store_yaml(server, folder, retry_time=20,
                                                   connect_timeout=1, read_timeout=5)))
        m.expect_log(r"S3 store|cannot store chunk|commit")
        m.start()
        try:
            acked = {}
            for i in range(4):
                p = os.path.join(m.enc, "before%d" % i)
                data = os.urandom(2 * CHUNK + i)
                with open(p, "wb") as f:
                    f.write(data)
                    os.fsync(f.fileno())
                acked[p] = data
            server.kill()
            # writers in processes of their own: a file of the mount open in this process
            # would be inherited by weed's fork and flushed on its exec, which waits for
            # the very service being restarted
            writers = {}
            for i in range(3):
                p = os.path.join(m.enc, "during%d" % i)
                writers[p] = subprocess.Popen([sys.executable, "-c", WRITER, p, str(i)],
                                              stdout=subprocess.PIPE)
            time.sleep(2)
            server.start()  # the same ports and data folder
            for p, proc in writers.items():
                out, _ = proc.communicate(timeout=90)
                if proc.returncode == 0:
                    acked[p] = bytes.fromhex(out.decode())  # succeeded after the restart
                else:
                    assert proc.returncode == errno.EIO, (p, proc.returncode)
            for p, data in acked.items():
                assert get(p) == data
            m.restart()
            for p, data in acked.items():
                assert get(p) == data
            put(os.path.join(m.enc, "after"), b"fine")
        finally:
            m.stop()
        assert not m.unexpected_log_lines()
    finally:
        server.stop()
