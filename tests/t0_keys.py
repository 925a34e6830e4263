"""Tier 0: the COS-managed key store (cosfs.keys)."""

import os
import re
import stat
import threading

import pytest

from cosfs.errors import IntegrityError, KeyStoreError
from cosfs.keys import KeyStore

AAD = b"bucket-1250000000/object-id"
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "keys"


@pytest.fixture
def store(store_dir):
    return KeyStore.open(store_dir, create=True)


def key_hexes(path):
    """Every master key in the directory, as hex, to check messages never leak them."""
    found = []
    try:
        names = os.listdir(path)
    except PermissionError:
        return found
    for name in names:
        if name.endswith(".key"):
            try:
                text = (path / name).read_bytes().decode("ascii", "replace")
            except PermissionError:
                continue
            found += re.findall(r"^key ([0-9a-f]+)$", text, re.M)
    return found


def assert_clean(exc, path):
    text = str(exc) + repr(exc)
    assert "\n" not in str(exc)
    for secret in key_hexes(path):
        assert secret not in text and secret[:16] not in text


def expect_error(path, create=False, match=None):
    with pytest.raises(KeyStoreError, match=match) as info:
        KeyStore.open(path, create=create)
    assert str(path) in str(info.value)
    if path.is_dir():
        assert_clean(info.value, path)
    return info.value


# ---------------------------------------------------------------------------
# Creating, opening, rotating


def test_create_layout(store, store_dir):
    assert store.current_version == "v1"
    assert store.versions() == ["v1"]
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o700
    assert sorted(os.listdir(store_dir)) == ["master-v1.key"]
    assert stat.S_IMODE((store_dir / "master-v1.key").stat().st_mode) == 0o600
    text = (store_dir / "master-v1.key").read_text()
    assert text.startswith("cosfs-master-key 1\nid v1\n")


def test_create_under_strict_umask(tmp_path):
    # Parents come from the default mode (masked): create one up front so
    # only the store and its key file meet the strict umask.
    (tmp_path / "deep").mkdir()
    old = os.umask(0o377)
    try:
        ks = KeyStore.open(tmp_path / "deep" / "keys", create=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(ks.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(ks.path, "master-v1.key")).st_mode) == 0o600
    assert KeyStore.open(ks.path, create=False).versions() == ["v1"]


def test_create_in_existing_empty_private_dir(store_dir):
    store_dir.mkdir(mode=0o700)
    (store_dir / "README").write_text("kept")
    os.chmod(store_dir / "README", 0o600)
    assert KeyStore.open(store_dir, create=True).versions() == ["v1"]
    assert (store_dir / "README").read_text() == "kept"


def test_reopen_gives_same_keys(store, store_dir):
    wrapped = store.wrap(b"k" * 32, AAD)
    again = KeyStore.open(store_dir, create=False)
    assert again.check_values() == store.check_values()
    assert again.unwrap(wrapped, AAD) == b"k" * 32
    # create=True on an existing store changes nothing.
    before = (store_dir / "master-v1.key").read_bytes()
    KeyStore.open(store_dir, create=True)
    assert (store_dir / "master-v1.key").read_bytes() == before
    assert os.listdir(store_dir) == ["master-v1.key"]


def test_rotate_keeps_old_versions(store, store_dir):
    old = store.wrap(b"a" * 32, AAD)
    assert store.rotate() == "v2"
    assert store.current_version == "v2"
    new = store.wrap(b"b" * 32, AAD)
    assert KeyStore.wrapped_version(old) == "v1"
    assert KeyStore.wrapped_version(new) == "v2"
    assert store.unwrap(old, AAD) == b"a" * 32
    assert store.rotate() == "v3"
    reopened = KeyStore.open(store_dir, create=False)
    assert reopened.versions() == ["v1", "v2", "v3"]
    assert reopened.current_version == "v3"
    assert reopened.unwrap(old, AAD) == b"a" * 32
    assert reopened.unwrap(new, AAD) == b"b" * 32
    values = reopened.check_values()
    assert list(values) == ["v1", "v2", "v3"]
    assert len(set(values.values())) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in values.values())
    assert not any(name.startswith(".") for name in os.listdir(store_dir))


def test_rotation_by_another_process_is_picked_up(store, store_dir):
    other = KeyStore.open(store_dir, create=False)
    other.rotate()
    wrapped = other.wrap(b"c" * 32, AAD)
    assert store.unwrap(wrapped, AAD) == b"c" * 32
    assert store.versions() == ["v1", "v2"]
    # An instance that missed a rotation must not overwrite the new key.
    stale = KeyStore.open(store_dir, create=False)
    other.rotate()
    before = (store_dir / "master-v3.key").read_bytes()
    with pytest.raises(KeyStoreError, match="already exists"):
        stale.rotate()
    assert (store_dir / "master-v3.key").read_bytes() == before
    assert not any(name.startswith(".") for name in os.listdir(store_dir))


def test_leftover_temp_file_is_ignored(store, store_dir):
    junk = store_dir / ".master-v2.key.tmp.0a1b2c3d"
    junk.write_bytes(b"half")
    os.chmod(junk, 0o600)
    assert KeyStore.open(store_dir, create=False).versions() == ["v1"]


# ---------------------------------------------------------------------------
# Wrapping


def test_wrap_round_trip_and_freshness(store):
    key = os.urandom(32)
    a, b = store.wrap(key, AAD), store.wrap(key, AAD)
    assert a != b
    assert len(a) == 8 + 12 + 32 + 16
    assert key not in a
    assert store.unwrap(a, AAD) == store.unwrap(b, AAD) == key
    assert store.unwrap(bytearray(a), bytearray(AAD)) == key


def test_wrong_aad(store):
    wrapped = store.wrap(b"d" * 32, AAD)
    with pytest.raises(IntegrityError):
        store.unwrap(wrapped, AAD + b"x")
    with pytest.raises(IntegrityError):
        store.unwrap(wrapped, b"")


@pytest.mark.parametrize("position", [0, 3, 7, 8, 19, 20, 40, -1])
def test_tampered_wrapped_key(store, store_dir, position):
    wrapped = bytearray(store.wrap(b"e" * 32, AAD))
    wrapped[position] ^= 0x01
    # Position 7 turns v1 into v0, which is malformed too; other version
    # bytes name unknown versions (test_unknown_master_version).
    with pytest.raises(IntegrityError) as info:
        store.unwrap(bytes(wrapped), AAD)
    assert_clean(info.value, store_dir)


def test_truncated_wrapped_key(store):
    wrapped = store.wrap(b"f" * 32, AAD)
    for n in (0, 7, 8 + 12 + 15, len(wrapped) - 1):
        with pytest.raises(IntegrityError):
            store.unwrap(wrapped[:n], AAD)
    with pytest.raises(IntegrityError):
        KeyStore.wrapped_version(b"junk")


def test_unknown_master_version(store, store_dir):
    store.rotate()
    wrapped = bytearray(store.wrap(b"g" * 32, AAD))
    wrapped[4:8] = (9).to_bytes(4, "big")
    with pytest.raises(KeyStoreError, match="v9") as info:
        store.unwrap(bytes(wrapped), AAD)
    assert_clean(info.value, store_dir)
    # A known version that did not wrap it: authentication fails.
    wrapped[4:8] = (1).to_bytes(4, "big")
    with pytest.raises(IntegrityError):
        store.unwrap(bytes(wrapped), AAD)


def test_wrap_rejects_bad_data_keys(store):
    for bad in (b"", b"x" * 15, b"x" * 65, "x" * 32):
        with pytest.raises(ValueError):
            store.wrap(bad, AAD)


def test_concurrent_wrap_unwrap_and_rotate(store):
    errors = []

    def worker(seed):
        try:
            for i in range(200):
                key = bytes([seed, i % 256]) * 16
                aad = b"%d/%d" % (seed, i)
                assert store.unwrap(store.wrap(key, aad), aad) == key
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        store.rotate()
    for t in threads:
        t.join()
    assert not errors
    assert store.current_version == "v4"


def test_repr_and_check_values_hide_keys(store, store_dir):
    store.rotate()
    text = repr(store) + str(store.check_values()) + repr(store._keys)
    for secret in key_hexes(store_dir):
        assert secret not in text
    assert str(store_dir) in repr(store)


# ---------------------------------------------------------------------------
# Refusing bad stores


def test_missing_directory(store_dir):
    expect_error(store_dir, match="does not exist")
    assert not store_dir.exists()


def test_not_a_directory(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    expect_error(path, create=True, match="not a directory")


def test_empty_directory_without_create(store_dir):
    store_dir.mkdir(mode=0o700)
    expect_error(store_dir, match="no master key")


def test_directory_too_open(store, store_dir):
    os.chmod(store_dir, 0o755)
    expect_error(store_dir, match="0755")
    expect_error(store_dir, create=True, match="chmod 700")
    assert stat.S_IMODE(store_dir.stat().st_mode) == 0o755  # never re-moded


def test_new_directory_refused_if_too_open(store_dir):
    store_dir.mkdir(mode=0o750)
    os.chmod(store_dir, 0o750)
    expect_error(store_dir, create=True, match="0750")
    assert os.listdir(store_dir) == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_too_open(store, store_dir, mode):
    os.chmod(store_dir / "master-v1.key", mode)
    expect_error(store_dir, match="chmod 600")


def test_key_file_read_only_for_owner_is_fine(store, store_dir):
    os.chmod(store_dir / "master-v1.key", 0o400)
    assert KeyStore.open(store_dir, create=False).versions() == ["v1"]


@pytest.mark.skipif(IS_ROOT, reason="root reads files regardless of mode")
def test_unreadable_key_file(store, store_dir):
    os.chmod(store_dir / "master-v1.key", 0o000)
    expect_error(store_dir, match="cannot open")


@pytest.mark.skipif(IS_ROOT, reason="root reads directories regardless of mode")
def test_unreadable_directory(store, store_dir):
    os.chmod(store_dir, 0o300)
    try:
        expect_error(store_dir, match="cannot list")
    finally:
        os.chmod(store_dir, 0o700)


def _rewrite(path, data):
    path.write_bytes(data)
    os.chmod(path, 0o600)


@pytest.mark.parametrize("cut", [1, 10, 80, 150, 194])
def test_truncated_key_file(store, store_dir, cut):
    path = store_dir / "master-v1.key"
    data = path.read_bytes()
    _rewrite(path, data[:len(data) - cut])
    expect_error(store_dir, match="corrupt or truncated")


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("\nkey ", "\nkey f", 1),                  # one hex digit more
    lambda t: re.sub(r"key ([0-9a-f])", lambda m: "key " + ("0" if m.group(1) != "0" else "1"), t),
    lambda t: t.replace("cosfs-master-key 1", "cosfs-master-key 2"),
    lambda t: t.replace("id v1", "id v2"),
    lambda t: t + "extra\n",
    lambda t: t.upper(),
    lambda t: "",
    lambda t: t.replace("\n", "\r\n"),
])
def test_corrupt_key_file(store, store_dir, edit):
    path = store_dir / "master-v1.key"
    _rewrite(path, edit(path.read_text()).encode())
    expect_error(store_dir, match="corrupt or truncated")


def test_binary_garbage_key_file(store, store_dir):
    _rewrite(store_dir / "master-v1.key", os.urandom(300))
    expect_error(store_dir, match="corrupt")


def test_key_file_of_another_version(store, store_dir):
    store.rotate()
    os.rename(store_dir / "master-v2.key", store_dir / "master-v3.key")
    # A renamed file no longer matches its id line; the gap is refused as well.
    expect_error(store_dir, match="corrupt")


def test_version_gap(store, store_dir):
    store.rotate()
    store.rotate()
    os.unlink(store_dir / "master-v2.key")
    expect_error(store_dir, match="missing master key v2")


@pytest.mark.parametrize("name", ["master-v0.key", "master-v01.key", "master.key",
                                  "master-v1.key.bak", "other.key", "master-vx.key"])
def test_unrecognised_key_like_files(store, store_dir, name):
    _rewrite(store_dir / name, b"whatever")
    expect_error(store_dir, match="unrecognised key file")


def test_symlinked_key_file(store, store_dir, tmp_path):
    store.rotate()
    target = tmp_path / "elsewhere.key"
    os.rename(store_dir / "master-v2.key", target)
    os.symlink(target, store_dir / "master-v2.key")
    expect_error(store_dir, match="symbolic link")


def test_nothing_overwritten_on_create(store_dir):
    store_dir.mkdir(mode=0o700)
    _rewrite(store_dir / "master-v1.key", b"not a key")
    expect_error(store_dir, create=True, match="corrupt")
    assert (store_dir / "master-v1.key").read_bytes() == b"not a key"


# ---------------------------------------------------------------------------
# Retiring a version


def test_gap_allowed_on_request(store, store_dir):
    store.rotate()
    store.rotate()
    os.unlink(store_dir / "master-v1.key")
    os.unlink(store_dir / "master-v2.key")
    expect_error(store_dir, match="missing master key v1, v2")
    ks = KeyStore.open(store_dir, create=False, allow_gaps=True)
    assert ks.versions() == ["v3"] and ks.current_version == "v3"
    assert ks.missing_versions() == ["v1", "v2"]
    assert KeyStore.open(store_dir, create=True, allow_gaps=True).versions() == ["v3"]


def test_retire_removes_the_file(store, store_dir):
    store.rotate()
    wrapped = store.wrap(b"k" * 32, AAD)
    assert store.retire("v1") is True
    assert sorted(os.listdir(store_dir)) == ["master-v2.key"]
    assert store.versions() == ["v2"] and store.missing_versions() == ["v1"]
    assert store.unwrap(wrapped, AAD) == b"k" * 32
    assert store.retire("v1") is False  # already gone: nothing to do
    ks = KeyStore.open(store_dir, create=False, allow_gaps=True)
    assert ks.versions() == ["v2"] and ks.missing_versions() == ["v1"]
    # a new version still follows the highest one
    assert store.rotate() == "v3"


def test_retire_refuses_the_current_and_unknown_versions(store, store_dir):
    with pytest.raises(KeyStoreError, match="current"):
        store.retire("v1")
    with pytest.raises(KeyStoreError, match="does not hold master key v5"):
        store.retire("v5")
    for bad in ("v0", "x1", "", "v1.5", "-1"):
        with pytest.raises(KeyStoreError, match="not a master key version"):
            store.retire(bad)
    assert os.listdir(store_dir) == ["master-v1.key"]


def test_retire_overwrites_before_unlinking(store, store_dir, monkeypatch):
    store.rotate()
    original = (store_dir / "master-v1.key").read_bytes()
    seen = {}
    real_unlink = os.unlink

    def spy(path, *a, **kw):
        if str(path).endswith(".master-v1.key.retiring"):
            seen["content"] = open(path, "rb").read()
        return real_unlink(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", spy)
    store.retire("v1")
    assert len(seen["content"]) == len(original) and seen["content"] != original
    assert b"cosfs-master-key" not in seen["content"]


def test_interrupted_retire_leaves_an_ignored_leftover(store, store_dir, caplog):
    """A crash after the rename (while overwriting): the store still opens; retire finishes."""
    store.rotate()
    os.rename(store_dir / "master-v1.key", store_dir / ".master-v1.key.retiring")
    _rewrite(store_dir / ".master-v1.key.retiring", os.urandom(50))  # half overwritten
    ks = KeyStore.open(store_dir, create=False, allow_gaps=True)
    assert "interrupted retire" in caplog.text
    assert ks.retiring_leftovers() == ["v1"] and ks.missing_versions() == ["v1"]
    assert ks.retire("v1") is True
    assert sorted(os.listdir(store_dir)) == ["master-v2.key"]
    assert ks.retiring_leftovers() == []
