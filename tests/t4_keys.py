"""Keys on a real mount: rotation, re-wrap, remount; no key material in logs or the store;
flat memory for a large file.
"""

import os
import re
import sqlite3
import subprocess

import pytest

from conftest import ENC, PLAIN, Mount, get, put, write_config
from cosfs.chunkio import data_key_aad
from cosfs.keys import KeyStore

pytestmark = pytest.mark.timeout(240)


def catalog_rows(store_dir):
    db = sqlite3.connect("file:%s?mode=ro" % os.path.join(store_dir, "catalog.db"), uri=True)
    try:
        return list(db.execute("SELECT object_id, enc, wrapped_key FROM inodes"
                               " WHERE wrapped_key IS NOT NULL"))
    finally:
        db.close()


def master_secrets(keys_dir):
    out = []
    for name in os.listdir(keys_dir):
        with open(os.path.join(keys_dir, name)) as f:
            m = re.search(r"^key ([0-9a-f]+)$", f.read(), re.M)
        if m:
            out.append(bytes.fromhex(m.group(1)))
    return out


def write_sample(m, tag):
    files = {}
    for i, size in enumerate((0, 1, 70000, 1 << 20, 3 * (1 << 20) + 17)):
        path = os.path.join(m.enc, "%s-%d" % (tag, i))
        data = os.urandom(size)
        put(path, data)
        files[path] = data
    sm4 = os.path.join(m.plain, "%s-sm4" % tag)
    put(sm4, b"sm4 data " * 1000)
    os.setxattr(sm4, "user.cos.server-side-encryption", b"SM4")
    files[sm4] = b"sm4 data " * 1000
    return files


def check_all(files):
    for path, data in files.items():
        assert get(path) == data, path


def test_rotate_rewrap_remount(tmp_path):
    m = Mount(write_config(str(tmp_path / "fs"))).start()
    try:
        before = write_sample(m, "old")
        busy = m.cli("keys", "rotate", "--config", m.config, check=False)
        assert busy.returncode == 1 and len(busy.stderr.strip().splitlines()) == 1
        assert "in use" in busy.stderr
        m.stop()

        out = m.cli("keys", "rotate", "--config", m.config).stdout
        assert "v2" in out
        assert "v2 (current)" in m.cli("keys", "list", "--config", m.config).stdout
        m.start()
        check_all(before)
        after = write_sample(m, "new")
        m.stop()

        keys = KeyStore.open(m.keys, create=False)
        versions = {KeyStore.wrapped_version(w) for _, _, w in catalog_rows(m.store)}
        assert versions == {"v1", "v2"}
        res = m.cli("keys", "rewrap", "--config", m.config)
        assert re.search(r"re-wrapped [1-9]\d* object key", res.stdout)
        # not a terminal: plain progress lines in the log (stderr), no bar
        total = len(catalog_rows(m.store))
        progress = [ln for ln in res.stderr.splitlines() if " INFO cosfs.progress: " in ln]
        assert progress[0].endswith("re-wrapping object keys: 0/%d keys" % total), res.stderr
        assert re.search(r"re-wrapping object keys: done, %d/%d keys in [\d.]+ s$"
                         % (total, total), progress[-1]), res.stderr
        assert len(progress) >= 3 and "\r" not in res.stderr and "|" not in res.stderr
        rows = catalog_rows(m.store)
        assert {KeyStore.wrapped_version(w) for _, _, w in rows} == {"v2"}
        for object_id, enc, wrapped in rows:
            assert len(keys.unwrap(wrapped, data_key_aad(object_id, enc))) == 32
        res = m.cli("fsck", "--config", m.config, "--verify")
        assert res.returncode == 0
        chunks = int(re.search(r"checked \d+ objects, (\d+) chunks", res.stdout).group(1))
        progress = [ln for ln in res.stderr.splitlines() if " INFO cosfs.progress: " in ln]
        assert progress[0].endswith("verifying chunks: 0/%d chunks" % chunks), res.stderr
        assert "verifying chunks: done, %d/%d chunks in" % (chunks, chunks) in progress[-1]

        m.start()
        check_all(before)
        check_all(after)
    finally:
        m.stop()


def test_no_key_material_in_logs_or_store(tmp_path):
    m = Mount(write_config(str(tmp_path / "fs"), log_level="debug")).start("-v")
    try:
        files = write_sample(m, "k")
        check_all(files)
        for path in files:
            os.getxattr(path, "user.cos.etag")
        m.stop()
        keys = KeyStore.open(m.keys, create=False)
        secrets = master_secrets(m.keys)
        assert secrets
        data_keys = [keys.unwrap(w, data_key_aad(o, e)) for o, e, w in catalog_rows(m.store)]
        assert data_keys
        needles = []
        for k in secrets + data_keys:
            needles += [k, k.hex().encode(), k[:16], k[16:]]
        haystacks = [m.log]
        for root, _, names in os.walk(m.store):
            haystacks += [os.path.join(root, n) for n in names]
        for path in haystacks:
            with open(path, "rb") as f:
                content = f.read()
            for needle in needles:
                assert needle not in content, "key material found in %s" % path
    finally:
        m.stop()


def test_memory_stays_flat_for_a_large_file(mount):
    """Writing and reading 1 GiB keeps the daemon's peak RSS far below the file size."""
    path = os.path.join(mount.enc, "big")
    subprocess.run(["dd", "if=/dev/zero", "of=" + path, "bs=1M", "count=1024", "conv=fsync"],
                   check=True, capture_output=True)
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    with open("/proc/%d/status" % mount.proc.pid) as f:
        hwm_kib = int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1))
    # the test config caches 64 MiB of reads; the write path holds a few chunks
    assert hwm_kib < 200 * 1024, "peak RSS %d MiB" % (hwm_kib // 1024)
    assert os.path.getsize(path) == 1 << 30
