"""Retiring a master key version on an offline store (cosfs.mount.retire_key): refusals,
the catalog records, and the order of the steps, so that a crash between them always
leaves a store that opens."""

import json
import os

import pytest
import trio

from cosfs import keys as keys_module
from cosfs.cli import rewrap
from cosfs.errors import CosfsError, InvalidArgument, KeyStoreError
from cosfs.keys import KeyStore
from cosfs.mount import _check_keys, key_usage, open_store, retire_key, retired_versions

from helpers import ENC, PLAIN, fs_env, tmp_path  # noqa: F401 (tmpfs)

DATA = {"a": b"a" * 1000, "b": os.urandom(70_000), "c": b"c"}


async def _write(tmp_path):
    async with fs_env(tmp_path) as env:
        for name, data in DATA.items():
            fh, _ = await env.new_file(name, bucket=ENC)
            await env.fs.write(fh, 0, data)
            await env.fs.release(fh)
        fh, _ = await env.new_file("plain", bucket=PLAIN)
        await env.fs.write(fh, 0, b"plain")
        await env.fs.release(fh)
        return env.config


async def _read_all(cfg):
    out = {}
    async with fs_env(None, reopen_config=cfg) as env:
        for key, inode in env.catalog.list_dir(env.bucket(ENC)):
            fh = await env.fs.open(inode.id, os.O_RDONLY)
            out[key.decode()] = await env.fs.read(fh, 0, 1 << 20)
            await env.fs.release(fh)
    return out


def _meta(store, key):
    return json.loads(store.catalog.get_meta(key, "{}") or "{}")


@pytest.fixture
def rotated(tmp_path):
    """A store with three encrypted objects wrapped by v1, and v2 as the current key."""
    cfg = trio.run(_write, tmp_path)
    store = open_store(cfg, create=False)
    try:
        store.keys.rotate()
        _check_keys(store.catalog, store.keys)
    finally:
        store.close()
    return cfg


def test_refusals_then_retire_after_rewrap(rotated):
    cfg = rotated
    store = open_store(cfg, create=False)
    try:
        assert key_usage(store.catalog) == {"v1": 3}
        with pytest.raises(InvalidArgument, match="v2 is the current master key"):
            retire_key(store, "v2")
        with pytest.raises(InvalidArgument, match="holds no master key v7"):
            retire_key(store, "v7")
        with pytest.raises(CosfsError, match=r"still wraps the data keys of 3 object\(s\)") as e:
            retire_key(store, "v1")
        assert e.value.code == "KeyInUse"
        assert set(_meta(store, "key_checks")) == {"v1", "v2"}
        assert os.path.exists(os.path.join(cfg.keys, "master-v1.key"))

        assert rewrap(store) == 3
        assert key_usage(store.catalog) == {"v2": 3}
        assert retire_key(store, "v1") is True
        assert set(_meta(store, "key_checks")) == {"v2"}
        assert set(retired_versions(store.catalog)) == {"v1"}
        assert os.listdir(cfg.keys) == ["master-v2.key"]
        assert retire_key(store, "1") is False  # already retired
    finally:
        store.close()
    assert trio.run(_read_all, cfg) == DATA


def test_crash_after_the_catalog_step(rotated, monkeypatch):
    """The catalog says retired, the key file is still there: the store opens, does not
    record the version as needed again, and a second retire removes the file."""
    cfg = rotated
    store = open_store(cfg, create=False)
    try:
        rewrap(store)

        def crash(self, version):
            raise KeyboardInterrupt("power cut")
        monkeypatch.setattr(KeyStore, "retire", crash)
        with pytest.raises(KeyboardInterrupt):
            retire_key(store, "v1")
    finally:
        store.close()
    monkeypatch.undo()
    assert os.path.exists(os.path.join(cfg.keys, "master-v1.key"))
    store = open_store(cfg, create=False)
    try:
        assert set(_meta(store, "key_checks")) == {"v2"}
        assert store.keys.versions() == ["v1", "v2"]
        assert retire_key(store, "v1") is True
    finally:
        store.close()
    assert os.listdir(cfg.keys) == ["master-v2.key"]
    store = open_store(cfg, create=False)
    store.close()


def test_crash_while_overwriting(rotated, monkeypatch):
    """The key file was renamed aside and is half overwritten: the store opens; retire
    finishes the job."""
    cfg = rotated
    store = open_store(cfg, create=False)
    try:
        rewrap(store)

        def crash(name):
            with open(name, "r+b") as f:
                f.write(os.urandom(20))
            raise OSError(5, "Input/output error")
        monkeypatch.setattr(keys_module, "_overwrite", crash)
        with pytest.raises(KeyStoreError, match="cannot remove master key v1"):
            retire_key(store, "v1")
    finally:
        store.close()
    monkeypatch.undo()
    assert sorted(os.listdir(cfg.keys)) == [".master-v1.key.retiring", "master-v2.key"]
    store = open_store(cfg, create=False)
    try:
        assert store.keys.retiring_leftovers() == ["v1"]
        assert retire_key(store, "v1") is True
    finally:
        store.close()
    assert os.listdir(cfg.keys) == ["master-v2.key"]
    assert trio.run(_read_all, cfg) == DATA


def test_key_file_lost_without_retire_is_refused(rotated):
    """Deleting a key file by hand (the other order) leaves a store that refuses to open:
    that is why retire updates the catalog first."""
    cfg = rotated
    os.unlink(os.path.join(cfg.keys, "master-v1.key"))
    with pytest.raises(KeyStoreError, match="lacks master key v1 that this store's data needs"):
        open_store(cfg, create=False)


def test_gap_not_recorded_as_retired_is_refused(rotated):
    cfg = rotated
    store = open_store(cfg, create=False)
    try:
        rewrap(store)
        checks = _meta(store, "key_checks")
        del checks["v1"]
        with store.catalog.transaction():
            store.catalog.set_meta("key_checks", json.dumps(checks))
    finally:
        store.close()
    os.unlink(os.path.join(cfg.keys, "master-v1.key"))
    with pytest.raises(KeyStoreError, match="missing master key v1 .*except retired ones"):
        open_store(cfg, create=False)


def test_rotate_after_retire_continues_the_numbering(rotated):
    cfg = rotated
    store = open_store(cfg, create=False)
    try:
        rewrap(store)
        retire_key(store, "v1")
        assert store.keys.rotate() == "v3"
        _check_keys(store.catalog, store.keys)
        assert set(_meta(store, "key_checks")) == {"v2", "v3"}
    finally:
        store.close()
    store = open_store(cfg, create=False)
    try:
        assert store.keys.versions() == ["v2", "v3"] and store.keys.current_version == "v3"
    finally:
        store.close()
