"""stress-ng's file system stressors on a real mount, as an outside suite would run them.

stress-ng (Debian package ``stress-ng``) exercises what the tests of this project
might not think of: many processes racing on renames, links, xattrs, locks, mmap
and msync, sendfile and splice, asynchronous and io_uring I/O, ``fallocate`` and
hole punching, deep directory trees. Each group of stressors runs at once in the
encrypted bucket with ``--verify`` (the stressors that write check what they read
back). A group passes when stress-ng exits 0 and reports no failure; then the
daemon log must be clean, the data must survive a remount, and ``cosfs fsck
--verify`` must find nothing wrong.

Deliberate differences are left out rather than tolerated: ``--filename-opts posix``
keeps stress-ng's random file names away from the Unicode characters U+F780-U+F7FF,
which cosfs reserves for bytes that are not UTF-8 (docs/format.md, "Object keys").
"""

import os
import re
import shutil
import subprocess

import pytest

from conftest import Mount, fuse_available, write_config

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
    pytest.mark.skipif(shutil.which("stress-ng") is None,
                       reason="needs stress-ng (contrib/install.sh --test installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="stress-ng's chown stressor needs root"),
]

SECONDS = 5

#: Stressors run together in each group, with their options.
GROUPS = [
    ["--hdd", "2", "--hdd-opts", "wr-rnd,rd-rnd", "--hdd-bytes", "8M",
     "--iomix", "1", "--iomix-bytes", "8M", "--seek", "1", "--readahead", "1"],
    ["--mmap", "2", "--mmap-file", "--mmap-bytes", "8M", "--msync", "1", "--msync-bytes", "8M",
     "--fallocate", "1", "--fallocate-bytes", "8M", "--fpunch", "1"],
    ["--rename", "2", "--link", "1", "--symlink", "1", "--dentry", "1", "--dir", "1",
     "--filename", "1", "--filename-opts", "posix"],
    ["--xattr", "2", "--chmod", "1", "--chown", "1", "--utime", "1", "--fstat", "1",
     "--open", "1", "--access", "1"],
    ["--copy-file", "1", "--copy-file-bytes", "128M", "--sendfile", "1", "--splice", "1",
     "--sync-file", "1", "--sync-file-bytes", "8M", "--aio", "1", "--io-uring", "1"],
    ["--flock", "2", "--fcntl", "1", "--lockf", "1", "--lockofd", "1",
     "--dirdeep", "1", "--dirdeep-dirs", "1", "--dirdeep-inodes", "2000", "--getdent", "1"],
]


def run_group(work, args):
    # a relative --temp-path: stress-ng 0.15's io_uring stressor makes its STATX path
    # relative to its folder, and fails on any file system (ext4 too) with an absolute one
    cmd = ["stress-ng", *args, "--timeout", str(SECONDS), "--verify", "--temp-path",
           os.path.basename(work)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         cwd=os.path.dirname(work), timeout=SECONDS * 12 + 60)
    failures = [line for line in res.stdout.splitlines() if re.search(r"\bfail:", line)]
    return res.returncode, failures, res.stdout


@pytest.mark.parametrize("writeback_cache", [False, True], ids=["direct", "writeback_cache"])
def test_stress_ng_file_system_stressors(tmp_path, writeback_cache):
    extra = "writeback_cache: true\n" if writeback_cache else ""
    m = Mount(write_config(str(tmp_path / "fs"), chunk_size="256KiB", write_buffer="4MiB",
                           log_level="warning", extra=extra))
    m.start()
    try:
        work = os.path.join(m.enc, "stress")
        os.mkdir(work)
        for args in GROUPS:
            rc, failures, out = run_group(work, args)
            assert rc == 0 and not failures, "stress-ng %s: exit %d\n%s" % (
                " ".join(args), rc, out[-4000:])
        assert os.path.ismount(m.mnt)
        # stress-ng removes its files; something of our own must survive a remount too
        payload = os.urandom(700 * 1024)
        with open(os.path.join(work, "kept"), "wb") as f:
            f.write(payload)
        m.restart()
        with open(os.path.join(work, "kept"), "rb") as f:
            assert f.read() == payload
        m.stop()
        assert m.unexpected_log_lines() == []
        res = m.cli("fsck", "--config", m.config, "--verify", check=False)
        assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout
    finally:
        m.stop()
