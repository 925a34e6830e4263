"""Tier 0: the API credentials file (cosfs.credentials)."""

import json
import os
import re
import stat
import threading

import pytest

from cosfs import credentials
from cosfs.credentials import Credential, CredentialsFile
from cosfs.errors import CredentialsError


@pytest.fixture
def path(tmp_path):
    return tmp_path / "store" / "credentials"


def test_add_creates_a_private_file(path):
    cred = credentials.add(path, "full", None)
    assert re.fullmatch(r"AKID[A-Za-z0-9]{32}", cred.secret_id)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", cred.secret_key)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", cred.created)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = credentials.load(path)
    assert loaded.lookup(cred.secret_id) == cred
    assert loaded.lookup("AKID" + "x" * 32) is None
    assert not [n for n in os.listdir(path.parent) if n.startswith(".")]  # no temp file left


def test_add_list_remove(path):
    a = credentials.add(path)
    b = credentials.add(path, "read-only", ["photos-1250000000", "docs-1250000000",
                                            "photos-1250000000"])
    assert b.read_only and b.buckets == ("photos-1250000000", "docs-1250000000")
    assert [c.secret_id for c in credentials.list_credentials(path)] == [a.secret_id, b.secret_id]
    assert credentials.remove(path, a.secret_id)
    assert not credentials.remove(path, a.secret_id)
    assert [c.secret_id for c in credentials.list_credentials(path)] == [b.secret_id]
    assert credentials.list_credentials(path.parent / "none") == []


def test_allows():
    full = Credential("AKID" + "a" * 32, "k" * 40)
    ro = Credential("AKID" + "b" * 32, "k" * 40, "read-only", ("x-1250000000",))
    assert full.allows("any-1250000000", True) and full.allows(None, False)
    assert ro.allows("x-1250000000", False) and not ro.allows("x-1250000000", True)
    assert not ro.allows("y-1250000000", False) and ro.allows(None, False)


def test_repr_hides_the_secret(path):
    cred = credentials.add(path)
    for text in (repr(cred), str(cred), repr(credentials.load(path)), repr([cred])):
        assert cred.secret_key not in text
    assert cred.secret_id in repr(cred)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o601])
def test_open_file_is_refused(path, mode):
    cred = credentials.add(path)
    os.chmod(path, mode)
    with pytest.raises(CredentialsError) as info:
        credentials.load(path)
    msg = str(info.value)
    assert "\n" not in msg and "%04o" % mode in msg and "chmod 600" in msg
    assert cred.secret_key not in msg
    with pytest.raises(CredentialsError):
        credentials.add(path)  # a write refuses it too
    with pytest.raises(CredentialsError):
        CredentialsFile(path).lookup(cred.secret_id)


def test_symlink_and_missing(path, tmp_path):
    credentials.add(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(CredentialsError, match="symbolic link"):
        credentials.load(link)
    with pytest.raises(CredentialsError, match="does not exist"):
        credentials.load(tmp_path / "missing")
    assert len(credentials.load(tmp_path / "missing", missing_ok=True)) == 0


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)


GOOD = {"secret_id": "AKID" + "a" * 32, "secret_key": "S" * 40, "access": "full",
        "buckets": None, "created": "2025-01-01T00:00:00Z"}


@pytest.mark.parametrize("change,what", [
    ({"access": "admin"}, "access"),
    ({"secret_id": "short"}, "secret_id"),
    ({"secret_key": "has space in it and is long"}, "secret_key"),
    ({"buckets": "all"}, "buckets"),
    ({"extra": 1}, "unknown field"),
])
def test_malformed_entries(path, change, what):
    entry = dict(GOOD, **change)
    _write(path, "# comment\n\n" + json.dumps(entry) + "\n")
    with pytest.raises(CredentialsError) as info:
        credentials.load(path)
    assert what in str(info.value) and ":3:" in str(info.value)
    assert "\n" not in str(info.value)
    assert str(entry["secret_key"]) not in str(info.value)


def test_malformed_file(path):
    _write(path, "not json\n")
    with pytest.raises(CredentialsError, match=":1: not a JSON object"):
        credentials.load(path)
    _write(path, json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(CredentialsError, match="appears twice"):
        credentials.load(path)
    _write(path, json.dumps(GOOD) + "\n")
    assert credentials.load(path).lookup(GOOD["secret_id"]).secret_key == "S" * 40


def test_concurrent_adds_are_not_lost(path):
    made = []

    def worker():
        for _ in range(5):
            made.append(credentials.add(path).secret_id)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c.secret_id for c in credentials.list_credentials(path)) == sorted(made)
    assert len(made) == 20


def test_credentials_file_follows_changes(path):
    watched = CredentialsFile(path)
    assert watched.lookup("AKID" + "a" * 32) is None  # missing: no key is valid
    a = credentials.add(path)
    assert watched.lookup(a.secret_id) == a
    credentials.remove(path, a.secret_id)
    assert watched.lookup(a.secret_id) is None
    b = credentials.add(path)
    os.chmod(path, 0o644)
    with pytest.raises(CredentialsError):
        watched.lookup(b.secret_id)
    os.chmod(path, 0o600)
    assert watched.lookup(b.secret_id) == b
