"""The catalog snapshotter over a real catalog and an in-memory stand-in for an S3 store:
what an fsync waits for, how concurrent fsyncs share a snapshot, which released blobs may
go, pruning, and a round trip through ``fetch``."""

import os
import sqlite3
import threading

import pytest
import trio

from cosfs import snapshots
from cosfs.catalog import Catalog
from cosfs.errors import StoreError
from cosfs.keys import KeyStore


class MemoryS3:
    """The snapshotter's view of an S3 store; ``gate`` holds uploads while it is clear."""

    def __init__(self):
        self.endpoint, self.bucket, self.prefix = "http://s3", "b", "p/"
        self.root = "http://s3/b/p/"
        self.objects = {}
        self.gate = threading.Event()
        self.gate.set()
        self.uploads = 0
        self.fail = False

    def upload_meta(self, name, path):
        self.gate.wait(10)
        if self.fail:
            raise StoreError("S3 store %s: upload of %s failed: HTTP 503" % (self.root, name))
        with open(path, "rb") as f:
            self.objects[name] = f.read()
        self.uploads += 1

    def download_meta(self, name, path):
        with open(path, "wb") as f:
            f.write(self.objects[name])

    def list_meta(self, sub_prefix=""):
        return [(n, len(v), None) for n, v in sorted(self.objects.items())
                if n.startswith(sub_prefix)]

    def delete_meta(self, name):
        self.objects.pop(name, None)


@pytest.fixture
def parts(tmp_path):
    catalog = Catalog(str(tmp_path / "catalog.db"), create=True)
    keys = KeyStore.open(tmp_path / "keys", create=True)
    s3 = MemoryS3()
    snap = snapshots.Snapshotter(catalog, keys, [s3], trio.CapacityLimiter(4), interval=0,
                                 keep=3)
    yield catalog, keys, s3, snap
    catalog.close()


def change(catalog, value):
    with catalog.transaction():
        catalog.set_meta("test_value", value)


def test_a_snapshot_covers_what_was_committed_and_restores(parts, tmp_path):
    catalog, keys, s3, snap = parts
    change(catalog, "one")

    async def main():
        await snap.covering()
        assert s3.uploads == 1
        await snap.covering()  # nothing changed since: nothing to do
        assert s3.uploads == 1
        change(catalog, "two")
        await snap.covering()
        assert s3.uploads == 2
    trio.run(main)
    name = snapshots.list_snapshots([s3])[-1][0]
    assert snap.status()["last"] == name and snap.status()["failures"] == 0
    out = str(tmp_path / "restored.db")
    snapshots.fetch(keys, name, s3, out)
    db = sqlite3.connect(out)
    assert db.execute("SELECT value FROM meta WHERE key='test_value'").fetchone()[0] == "two"


def test_concurrent_fsyncs_share_one_snapshot(parts):
    catalog, keys, s3, snap = parts
    change(catalog, "a")
    s3.gate.clear()

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(snap.covering)  # starts a snapshot, held at its upload
            await trio.sleep(0.2)
            change(catalog, "b")  # committed after that snapshot started
            for _ in range(5):
                nursery.start_soon(snap.covering)
            await trio.sleep(0.2)
            s3.gate.set()
    trio.run(main)
    # the first one, then a single one for the five that came after "b"
    assert s3.uploads == 2


def test_released_blobs_go_only_once_a_snapshot_lists_them(parts):
    catalog, keys, s3, snap = parts
    blob = os.urandom(16)
    with catalog.transaction():
        catalog.add_garbage(blob, "ap-guangzhou")
    assert not snap.may_delete(blob)  # no snapshot yet: nothing may go

    async def main():
        await snap.covering()
    trio.run(main)
    assert snap.may_delete(blob) and not snap.may_delete(os.urandom(16))


def test_old_snapshots_are_pruned(parts):
    catalog, keys, s3, snap = parts

    async def main():
        for i in range(5):
            change(catalog, str(i))
            await snap.covering()
    trio.run(main)
    assert s3.uploads == 5 and len(snapshots.list_snapshots([s3])) == 3


def test_a_failed_upload_fails_the_fsync_and_the_next_one_retries(parts):
    catalog, keys, s3, snap = parts
    change(catalog, "x")
    s3.fail = True

    async def main():
        with pytest.raises(StoreError):
            await snap.covering()
        assert snap.failures == 1
        s3.fail = False
        await snap.covering()  # nothing committed since, but the failed one does not count
    trio.run(main)
    assert s3.uploads == 1
    leftovers = [n for n in os.listdir(os.path.dirname(catalog.path)) if n.startswith(".snapshot")]
    assert leftovers == []
