"""Catalog snapshots and the store lease as units: the sealed format (round trips, every
kind of damage reads as IntegrityError), the ``snapshots:`` config section, and the lease
rules against an in-memory stand-in for an S3 store."""

import io
import json
import logging
import os
import sqlite3
import textwrap
import time

import pytest

from cosfs import config, errors, lease, snapshots
from cosfs.keys import KeyStore


@pytest.fixture
def keys(tmp_path):
    return KeyStore.open(tmp_path / "keys", create=True)


def sealed(keys, name, data):
    out = io.BytesIO()
    snapshots.seal(keys, name, io.BytesIO(data), out)
    return out.getvalue()


def unsealed(keys, name, blob):
    out = io.BytesIO()
    snapshots.unseal(keys, name, io.BytesIO(blob), out)
    return out.getvalue()


def records(blob):
    """(header, [records]) of a sealed snapshot."""
    head = snapshots._HEADER.size
    _, _, wrapped_len = snapshots._HEADER.unpack(blob[:head])
    pos = head + wrapped_len
    header, recs = blob[:pos], []
    while pos < len(blob):
        (n,) = snapshots._RECORD.unpack(blob[pos:pos + 4])
        recs.append(blob[pos:pos + 4 + n])
        pos += 4 + n
    return header, recs


@pytest.fixture
def small_segments(monkeypatch):
    monkeypatch.setattr(snapshots, "SEGMENT", 4096)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 50_000])
def test_round_trip_at_segment_boundaries(keys, small_segments, size):
    data = os.urandom(size)  # incompressible: the compressed stream crosses the boundaries
    name = snapshots.new_name()
    blob = sealed(keys, name, data)
    assert data[:64] not in blob or size < 64
    assert unsealed(keys, name, blob) == data


def test_compressible_data_shrinks(keys):
    data = b"catalog row " * 100_000
    blob = sealed(keys, "catalog-1-aa.snap", data)
    assert len(blob) < len(data) // 20
    assert unsealed(keys, "catalog-1-aa.snap", blob) == data


def test_every_kind_of_damage_fails_authentication(keys, small_segments):
    data = os.urandom(20_000)
    name = snapshots.new_name()
    blob = sealed(keys, name, data)
    header, recs = records(blob)
    assert len(recs) >= 4
    damaged = {
        "flipped byte": blob[:len(blob) // 2] + bytes([blob[len(blob) // 2] ^ 1])
        + blob[len(blob) // 2 + 1:],
        "truncated at a record": header + b"".join(recs[:-1]),
        "truncated inside a record": blob[:-7],
        "header only": header,
        "reordered": header + recs[1] + recs[0] + b"".join(recs[2:]),
        "dropped segment": header + recs[0] + b"".join(recs[2:]),
        "trailing data": blob + recs[-1],
        "other snapshot's segment": header + recs[0]
        + records(sealed(keys, name, os.urandom(20_000)))[1][1] + b"".join(recs[2:]),
        "not a snapshot": b"SQLite format 3\0" + blob[16:],
    }
    for what, bad in damaged.items():
        with pytest.raises(errors.IntegrityError):
            unsealed(keys, name, bad)
            pytest.fail(what)
    # a snapshot presented under another name (an older one swapped in) fails too
    with pytest.raises(errors.IntegrityError):
        unsealed(keys, snapshots.new_name(), blob)


def test_another_key_store_cannot_open_it(keys, tmp_path):
    name = snapshots.new_name()
    blob = sealed(keys, name, b"x" * 1000)
    other = KeyStore.open(tmp_path / "other", create=True)
    with pytest.raises(errors.CosfsError):
        unsealed(other, name, blob)


def test_names_sort_by_time_and_carry_it():
    a = snapshots.new_name(1_000_000_000_000_000_000)
    b = snapshots.new_name(1_000_000_000_000_000_001)
    assert a < b and snapshots.taken_at(a) == pytest.approx(1e9)
    assert snapshots.taken_at("lease") is None


def test_copy_catalog_is_consistent_and_lists_garbage(tmp_path):
    path = str(tmp_path / "catalog.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE chunks (blob BLOB)")
    db.execute("CREATE TABLE garbage (blob BLOB, region TEXT)")
    db.execute("INSERT INTO chunks VALUES (?)", (b"live",))
    db.execute("INSERT INTO garbage VALUES (?, 'r'), (?, 'r')", (b"gone", b"live"))
    garbage = snapshots.copy_catalog(path, str(tmp_path / "copy.db"))
    db.close()
    assert garbage == {b"gone"}  # a released blob still referenced is not garbage
    copy = sqlite3.connect(str(tmp_path / "copy.db"))
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert copy.execute("SELECT count(*) FROM chunks").fetchone()[0] == 1


# -- the config section -------------------------------------------------------------

BASE = """\
store: ./data
keys: ./keys
appid: "1250000000"
"""


def load(tmp_path, text):
    path = tmp_path / "mount.yaml"
    path.write_text(BASE + textwrap.dedent(text))
    return config.load(path)


def test_snapshot_settings_defaults_and_values(tmp_path):
    assert load(tmp_path, "").snapshots == config.SnapshotSettings(30.0, True, 3)
    cfg = load(tmp_path, "snapshots:\n  interval: 0\n  on_fsync: false\n  keep: 10\n")
    assert cfg.snapshots == config.SnapshotSettings(0.0, False, 10)


@pytest.mark.parametrize("text, words", [
    ("snapshots: 5\n", "expected a mapping"),
    ("snapshots:\n  interval: -1\n", "seconds from 0"),
    ("snapshots:\n  interval: true\n", "seconds from 0"),
    ("snapshots:\n  keep: 0\n", "from 1 to 100"),
    ("snapshots:\n  on_fsync: yes please\n", "true or false"),
    ("snapshots:\n  every: 5\n", "every"),
])
def test_snapshot_settings_errors_name_the_problem(tmp_path, text, words):
    with pytest.raises(errors.ConfigError) as info:
        load(tmp_path, text)
    assert words in str(info.value) and "\n" not in str(info.value)


# -- the lease ----------------------------------------------------------------------

class FakeS3:
    """The lease's view of an S3 store: meta objects in a dict."""

    def __init__(self):
        self.endpoint, self.bucket, self.prefix = "http://s3", "b", "p/"
        self.root = "http://s3/b/p/"
        self.objects = {}

    def get_meta(self, name):
        return self.objects.get(name)

    def put_meta(self, name, data):
        self.objects[name] = bytes(data)

    def delete_meta(self, name):
        self.objects.pop(name, None)


def test_lease_taken_kept_and_given_back():
    s3 = FakeS3()
    lease.acquire([s3], "host-a:/store")
    doc = json.loads(s3.objects["lease"])
    assert doc["holder"] == "host-a:/store" and doc["pid"] == os.getpid()
    lease.acquire([s3], "host-a:/store")  # a restart on the same machine needs no flag
    lease.renew([s3], "host-a:/store")
    lease.release([s3], "host-b:/store")  # not ours: stays
    assert "lease" in s3.objects
    lease.release([s3], "host-a:/store")
    assert "lease" not in s3.objects


def test_another_holder_is_refused_and_a_stale_lease_broken_only_with_the_flag(caplog):
    s3 = FakeS3()
    lease.acquire([s3], "host-a:/store")
    with pytest.raises(lease.LeaseHeld, match=r"in use by host-a:/store .*renewed 0 s ago.*"
                                              r"--break-lease"):
        lease.acquire([s3], "host-b:/store")
    with pytest.raises(lease.LeaseHeld, match="not broken"):
        lease.acquire([s3], "host-b:/store", break_stale=True)
    doc = json.loads(s3.objects["lease"])
    doc["renewed"] = time.time() - lease.STALE - 5
    s3.objects["lease"] = json.dumps(doc).encode()
    with pytest.raises(lease.LeaseHeld, match="renewed 12[5-9] s ago"):
        lease.acquire([s3], "host-b:/store")
    with caplog.at_level(logging.WARNING):
        lease.acquire([s3], "host-b:/store", break_stale=True)
    assert "breaking the stale lease" in caplog.text
    assert json.loads(s3.objects["lease"])["holder"] == "host-b:/store"
    # the old holder's renewal does not take it back: it says who has it
    assert lease.renew([s3], "host-a:/store").startswith("host-b:/store")
    assert json.loads(s3.objects["lease"])["holder"] == "host-b:/store"


class Fenced:
    def __init__(self):
        self.reason = None

    def fence(self, reason):
        self.reason = reason


def test_the_keeper_fences_the_stores_when_the_lease_is_lost(caplog):
    s3, store = FakeS3(), Fenced()
    lease.acquire([s3], "host-a:/store")
    keeper = lease.Keeper([s3], "host-a:/store", [store], fence_after=0.2)
    keeper.renew_once()
    assert store.reason is None
    # another machine broke the lease: stop changing the store
    doc = json.loads(s3.objects["lease"])
    doc["holder"] = "host-b:/store"
    s3.objects["lease"] = json.dumps(doc).encode()
    with caplog.at_level(logging.ERROR):
        keeper.renew_once()
    assert "taken over by host-b" in store.reason and "stops changing" in caplog.text
    keeper.renew_once()  # and stays so: the other holder's lease is left alone
    assert json.loads(s3.objects["lease"])["holder"] == "host-b:/store"
    assert store.reason is not None


def test_the_keeper_fences_when_it_cannot_renew_for_too_long(monkeypatch):
    s3, store = FakeS3(), Fenced()
    lease.acquire([s3], "host-a:/store")
    keeper = lease.Keeper([s3], "host-a:/store", [store], fence_after=0.2)

    def down(name, data):
        raise errors.StoreError("S3 store http://s3/b/p/: put of lease failed: timeout")
    monkeypatch.setattr(s3, "put_meta", down)
    keeper.renew_once()
    assert store.reason is None  # one failure is not yet a danger
    time.sleep(0.3)
    keeper.renew_once()
    assert "could not be renewed" in store.reason
    monkeypatch.undo()
    keeper.renew_once()  # renewed again: writes resume
    assert store.reason is None


def test_holder_ids_are_per_store_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = lease.holder_of(tmp_path / "a")
    assert lease.holder_of(tmp_path / "a") == a
    assert oct(os.stat(tmp_path / "a" / ".lease-id").st_mode & 0o777) == "0o600"
    assert str(tmp_path / "a") in a and lease.holder_of(tmp_path / "b") != a


def test_an_unreadable_lease_counts_as_another_holder():
    s3 = FakeS3()
    s3.objects["lease"] = b"\xff not json"
    with pytest.raises(lease.LeaseHeld, match="unreadable"):
        lease.acquire([s3], "host-a:/store")
    lease.acquire([s3], "host-a:/store", break_stale=True)  # renewed "never": stale
    assert json.loads(s3.objects["lease"])["holder"] == "host-a:/store"
