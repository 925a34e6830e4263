"""Power-cut tests: the store on a disk that loses everything not made durable.

The store and the key store live on ``powerfs`` (tests/powerfs.py), a FUSE
file system that keeps every write and directory change in memory until it
is made durable by ``fsync``/``fdatasync`` of the file or ``fsync`` of the
directory, and loses the rest when its process is killed: a power cut. The
kernel does not pass ``syncfs`` to FUSE file systems, so a store that relied
on it loses acknowledged data here.

A cut is: ``kill -9`` of the cosfs daemon, then ``kill -9`` of powerfs. Then
powerfs starts again on what was durable, and:

1. ``cosfs fsck --verify`` exits 0 and reports nothing damaged (no missing
   blob, no blob of the wrong size, nothing failing authentication);
2. the remounted tree equals the model at some point between the last
   *durability point* the writer passed (an ``fsync`` of a file or a
   directory that returned) and the step in flight: every acknowledged
   change is there, anything later reads as a complete earlier or later
   version, nothing reads ``EIO``.

The seeded rounds reuse the crash tests' planner, writer and model
(tests/t5_crash.py) with fsync steps added; ``contrib/stress.py powercut``
runs hundreds of cuts.
"""

import os
import random

import pytest

from conftest import ENC, PLAIN, Mount, get, needs_fuse, put, write_config
from helpers import tmp_path  # noqa: F401 (tmpfs)
from powerfs import PowerDisk
from t5_crash import CrashRunner, MIXES, SIZES, MAX_FILES, _tail, run_rounds

KiB = 1024

#: steps after which everything committed so far must survive a power cut
DURABLE_OPS = {"fsync", "fsync_dir", "pwrite_fsync_hold", "hold_unlinked"}

POWER_MIXES = {
    # the case at random: many small files closed without fsync, then an fsync
    "power_small": {"create": 10, "overwrite": 2, "rename": 2, "unlink": 1, "fsync": 2,
                    "fsync_dir": 1, "pwrite_fsync_hold": 1},
    "power_mixed": {"create": 5, "overwrite": 3, "rewrite_trunc": 2, "append": 2,
                    "pwrite_fsync_hold": 2, "truncate": 1, "rename": 3, "unlink": 1,
                    "fsync": 3, "fsync_dir": 2, "sse_set": 1, "bucket_put": 1,
                    "bucket_delete": 1},
}
MIXES.update(POWER_MIXES)
SIZES["power_small"] = ((0, 8 * KiB), (8 * KiB, 300 * KiB))
MAX_FILES["power_small"] = 300


def disk_config(folder, disk_mnt, **kw):
    """A cosfs config in ``folder`` whose store and key store live on the power-cut disk."""
    return write_config(folder, store=os.path.join(disk_mnt, "data"),
                        keys=os.path.join(disk_mnt, "keys"), **kw)


class PowerCutRunner(CrashRunner):
    """CrashRunner whose kill is a power cut: the disk under the store loses its cache."""

    what = "power-cut test"

    def make_config(self, folder, chunk_size, write_buffer):
        os.makedirs(folder, exist_ok=True)
        self.disk = PowerDisk(os.path.join(folder, "backing"), os.path.join(folder, "disk"),
                              log=os.path.join(folder, "powerfs.log")).start()
        return disk_config(folder, self.disk.mountpoint, chunk_size=chunk_size,
                           write_buffer=write_buffer)

    def setup(self):
        super().setup()
        self.mount.store = os.path.join(self.disk.mountpoint, "data")
        # the model holds files only: the folders the rounds write into must be durable
        for bucket in (PLAIN, ENC):
            fsync_path(os.path.join(self.mount.mnt, bucket, "crash", "sub"), directory=True)

    def after_kill(self):
        self.disk.cut()
        self.disk.restart()

    def first_allowed(self, steps, k):
        durable = [i for i in range(k) if steps[i]["op"] in DURABLE_OPS]
        return durable[-1] + 1 if durable else 0

    def logs(self):
        text = self.disk.log_text().strip()
        return super().logs() + ("\npowerfs log %s:\n%s" % (self.disk.log, _tail(self.disk.log))
                                 if text else "")

    def abort(self):
        super().abort()
        self.disk.cut()

    def finish(self):
        try:
            super().finish()
        finally:
            self.disk.stop()


#: power cuts per scenario in CI (contrib/stress.py powercut runs hundreds)
ROUNDS = int(os.environ.get("COSFS_POWERCUT_ROUNDS", "5"))


@needs_fuse
@pytest.mark.parametrize("mix,seed,chunk_size", [
    ("power_small", 11, "1MiB"),
    ("power_small", 12, "64KiB"),
    ("power_mixed", 21, "64KiB"),
    ("power_mixed", 22, "1MiB"),
])
def test_power_cut_rounds(tmp_path, mix, seed, chunk_size):
    run_rounds(str(tmp_path / "fs"), seed, mix, ROUNDS, runner_class=PowerCutRunner,
               chunk_size=chunk_size, steps=400, max_delay=2.0)


# -- fixed scenarios ---------------------------------------------------------------------
class Rig:
    """A power-cut disk with a cosfs mount on it; ``cut`` and ``remount`` for scenarios."""

    def __init__(self, folder, *, zero_statfs=False, **config_kw):
        os.makedirs(folder, exist_ok=True)
        self.disk = PowerDisk(os.path.join(folder, "backing"), os.path.join(folder, "disk"),
                              zero_statfs=zero_statfs,
                              log=os.path.join(folder, "powerfs.log")).start()
        self.mount = Mount(disk_config(folder, self.disk.mountpoint, **config_kw))
        self.mount.store = os.path.join(self.disk.mountpoint, "data")
        self.mount.start()

    def cut(self):
        """Power cut: the daemon and the disk's cache die; the disk comes back."""
        self.mount.kill9()
        self.disk.cut()
        self.disk.restart()

    def fsck(self):
        res = self.mount.cli("fsck", "--config", self.mount.config, "--verify", check=False)
        assert res.returncode == 0 and "DAMAGED" not in res.stdout, res.stdout + res.stderr
        return res.stdout

    def remount(self):
        self.mount.start()

    def close(self):
        try:
            self.mount.stop()
        finally:
            self.disk.stop()
        bad = self.mount.unexpected_log_lines()
        assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


@pytest.fixture
def rig_factory(tmp_path):
    rigs = []

    def make(**kw):
        rig = Rig(str(tmp_path / ("fs%d" % len(rigs))), **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.mount.kill9()
        rig.disk.cut()


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@needs_fuse
@pytest.mark.parametrize("chunk_size", ["1MiB", "64KiB"])
@pytest.mark.parametrize("bucket", [PLAIN, ENC])
def test_fsync_after_many_unsynced_small_files(rig_factory, chunk_size, bucket):
    """The reported case: fsync the bucket, close 70 small files without fsync, write
    300 kB and fsync it, cut the power. The fsynced file, and everything closed before
    that fsync, must read back exactly (cosfs's fsync makes the whole catalog durable)."""
    rig = rig_factory(chunk_size=chunk_size)
    b = os.path.join(rig.mount.mnt, bucket)
    fsync_path(b, directory=True)
    rng = random.Random(70)
    small = {"s%02d" % i: rng.randbytes(rng.randint(1, 6000)) for i in range(70)}
    for name, data in small.items():
        put(os.path.join(b, name), data)
    big = rng.randbytes(300 * 1000)
    with open(os.path.join(b, "big"), "wb") as f:
        f.write(big)
        f.flush()
        os.fsync(f.fileno())
    rig.cut()
    rig.fsck()
    rig.remount()
    assert get(os.path.join(b, "big")) == big
    for name, data in small.items():
        assert get(os.path.join(b, name)) == data, name
    rig.close()


@needs_fuse
def test_large_file_fsync_and_rename(rig_factory):
    """A multi-chunk file fsynced, then renamed over an older version and the directory
    fsynced: after the cut the new name holds the new content, the old name is gone."""
    rig = rig_factory(chunk_size="64KiB")
    d = os.path.join(rig.mount.mnt, ENC, "dir")
    os.mkdir(d)
    put(os.path.join(d, "target"), b"old" * 1000)
    fsync_path(d, directory=True)
    data = random.Random(5).randbytes(3 * 1024 * 1024 + 17)
    tmp = os.path.join(d, ".target.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(d, "target"))
    fsync_path(d, directory=True)
    rig.cut()
    rig.fsck()
    rig.remount()
    assert sorted(os.listdir(d)) == ["target"]
    assert get(os.path.join(d, "target")) == data
    rig.close()


@needs_fuse
def test_unsynced_changes_roll_back_whole(rig_factory):
    """Without any fsync after them, overwrites may be lost, but only whole: each file
    reads as its old or its new content, never a mix, never EIO."""
    rig = rig_factory(chunk_size="64KiB")
    b = os.path.join(rig.mount.mnt, ENC)
    rng = random.Random(9)
    old = {"f%d" % i: rng.randbytes(200 * KiB + i) for i in range(10)}
    for name, data in old.items():
        put(os.path.join(b, name), data)
    fsync_path(b, directory=True)
    new = {name: rng.randbytes(len(data)) for name, data in old.items()}
    for name, data in new.items():
        put(os.path.join(b, name), data)
    rig.cut()
    rig.fsck()
    rig.remount()
    for name in old:
        assert get(os.path.join(b, name)) in (old[name], new[name]), name
    rig.close()


@needs_fuse
def test_store_on_a_file_system_without_size(rig_factory):
    """A disk whose statfs reports no size: writes work (no ENOSPC from the reserve), one
    warning in the log."""
    rig = rig_factory(zero_statfs=True)
    b = os.path.join(rig.mount.mnt, PLAIN)
    for i in range(5):
        put(os.path.join(b, "f%d" % i), b"x" * 200 * KiB)
    assert get(os.path.join(b, "f4")) == b"x" * 200 * KiB
    rig.mount.stop()
    assert rig.mount.log_text().count("reports no size") == 1
    rig.remount()
    rig.close()
