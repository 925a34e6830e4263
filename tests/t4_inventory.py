"""Tier 4: bucket inventory on a real mount, through the command line, xattrs and the API.

The reports are read back through the mount with the standard library only
(gzip, csv, json, hashlib), checking every row, count and checksum, and the
encryption of each report object through ``user.cos.server-side-encryption``.
A daemon is killed (SIGKILL) during a delivery; the next mount removes the
half-written report. The schedule's first delivery and a delivery missed
while unmounted run at mount time.
"""

import csv
import errno
import gzip
import hashlib
import io
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import APPID, ENC, PLAIN, Mount, cosfs_cmd, fuse_available, put, write_config
from t4_api import free_port

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3")

DEST = "dest-" + APPID
SSE = "user.cos.server-side-encryption"
INV = "user.cos.bucket-inventory"
FIELDS = "Size,LastModifiedDate,ETag,StorageClass,IsMultipartUploaded,ReplicationStatus"
API_SECTION = """\
api:
  enabled: true
  listen: 127.0.0.1:{port}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """One daemon with the API for the module's tests that need no restart."""
    folder = str(tmp_path_factory.mktemp("inv") / "fs")
    port = free_port()
    config = write_config(folder, extra=API_SECTION.format(port=port))
    os.makedirs(os.path.join(folder, "data"), mode=0o700, exist_ok=True)
    from cosfs import credentials
    cred = credentials.add(os.path.join(folder, "data", "credentials"), "full", None)
    m = Mount(config).start()
    m.port, m.cred = port, cred
    try:
        os.mkdir(os.path.join(m.mnt, DEST))
        yield m
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "unexpected errors in the daemon log:\n" + "\n".join(bad[:20])


def cli(*args, check=True):
    res = subprocess.run(cosfs_cmd("inventory", *args), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError("cosfs inventory %s failed (%d): %s" % (" ".join(args),
                                                                     res.returncode, res.stderr))
    return res


def status(bucket_dir, inv_id):
    return json.loads(os.getxattr(bucket_dir, "%s-status.%s" % (INV, inv_id)))


def read_report(mnt, dest, manifest_key):
    """(manifest, rows, [report object paths]) read through the mount, checksums checked."""
    base = os.path.join(mnt, dest)
    with open(os.path.join(base, manifest_key), "rb") as f:
        raw = f.read()
    checksum_path = os.path.join(base, manifest_key.replace("manifest.json", "manifest.checksum"))
    with open(checksum_path, "rb") as f:
        assert f.read().decode() == hashlib.md5(raw).hexdigest()
    manifest = json.loads(raw)
    rows, paths = [], [os.path.join(base, manifest_key), checksum_path]
    for entry in manifest["files"]:
        path = os.path.join(base, entry["key"])
        with open(path, "rb") as f:
            data = f.read()
        assert entry["size"] == str(len(data))
        assert entry["md5Checksum"] == hashlib.md5(data).hexdigest()
        rows += list(csv.reader(io.StringIO(gzip.decompress(data).decode("utf-8"))))
        paths.append(path)
    return manifest, rows, paths


def sse_of(path):
    try:
        return os.getxattr(path, SSE).decode()
    except OSError as exc:
        assert exc.errno == errno.ENODATA
        return None


def fill(bucket_dir):
    """Plain and encrypted objects (and an empty directory): {key: (data, sse)}."""
    objs = {"a.txt": b"alpha", "sub/b c.bin": os.urandom(3000),
            "sub/deep/\u00e9.txt": "\u00e9".encode(),
            "empty": b"", "big.bin": os.urandom(1 << 20 | 17)}
    for key, data in objs.items():
        path = os.path.join(bucket_dir, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        put(path, data)
    expected = {k: (v, None) for k, v in objs.items()}
    for key in ("secret.bin", "sub/secret2"):
        data = os.urandom(500)
        put(os.path.join(bucket_dir, key), data)
        os.setxattr(os.path.join(bucket_dir, key), SSE, b"AES256")
        expected[key] = (data, "AES256")
    os.mkdir(os.path.join(bucket_dir, "nothing"))
    expected["nothing/"] = (b"", None)
    return expected


def test_reports_read_back_through_the_mount(daemon):
    bucket = os.path.join(daemon.mnt, PLAIN)
    expected = fill(bucket)
    assert sse_of(os.path.join(bucket, "secret.bin")) == "AES256"
    cases = [("p2p", DEST, [], None), ("s2p", DEST, ["--sse-cos"], "AES256"),
             ("p2e", ENC, [], "AES256"), ("s2e", ENC, ["--sse-cos"], "AES256")]
    for inv_id, dest, extra, report_sse in cases:
        out = cli("--method", "post", bucket, "--task-id", inv_id, "--destination", dest,
                  "--fields", FIELDS, "--dest-prefix", "inv", *extra).stdout
        st = status(bucket, inv_id)
        assert st["state"] == "complete" and st["job_id"] in out
        assert st["manifest"] == "inv/%s/plain/%s/%s/manifest.json" % (
            APPID, inv_id, time.strftime("%Y%m%d", time.gmtime(st["started_ns"] / 1e9)))
        manifest, rows, paths = read_report(daemon.mnt, dest, st["manifest"])
        assert (manifest["sourceAppid"], manifest["sourceBucket"], manifest["destinationAppid"],
                manifest["destinationBucket"], manifest["fileFormat"]) == \
            (APPID, "plain", APPID, dest.rsplit("-", 1)[0], "CSV")
        assert manifest["fileSchema"] == "Appid, Bucket, Key, " + FIELDS.replace(",", ", ")
        n, size = str(len(expected)), str(sum(len(d) for d, _ in expected.values()))
        assert (manifest["listObjectCount"], manifest["listStorageSize"]) == (n, size)
        assert (manifest["filterObjectCount"], manifest["filterStorageSize"]) == (n, size)
        assert [urllib.parse.unquote(r[2]) for r in rows] == \
            sorted(expected, key=lambda k: k.encode())
        for r in rows:
            key = urllib.parse.unquote(r[2])
            data, _ = expected[key]
            assert r[0] == APPID and r[1] == "plain" and len(r) == 9
            assert r[3] == str(len(data)) and r[5] == hashlib.md5(data).hexdigest()
            mtime_ns = os.stat(os.path.join(bucket, key)).st_mtime_ns
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r[4])
            assert r[4] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(
                mtime_ns // 10**9)) + ".%03dZ" % (mtime_ns % 10**9 // 10**6)
            assert r[6:] == ["STANDARD", "false", ""]
        assert " " not in "".join(r[2] for r in rows)  # keys are URL-encoded
        for path in paths:
            assert sse_of(path) == report_sse, (inv_id, path)
    # the same through the xattr: a prefix filter, versions All, into the bucket itself
    doc = ("<InventoryConfiguration><Id>self</Id><Destination><COSBucketDestination>"
           "<Format>CSV</Format><Bucket>qcs::cos:ap-guangzhou::%s</Bucket>"
           "</COSBucketDestination></Destination><Filter><Prefix>sub/</Prefix></Filter>"
           "<IncludedObjectVersions>All</IncludedObjectVersions><OptionalFields>"
           "<Field>Size</Field></OptionalFields></InventoryConfiguration>" % PLAIN).encode()
    os.setxattr(bucket, INV + "-post.self", doc)
    manifest, rows, _ = read_report(daemon.mnt, PLAIN, status(bucket, "self")["manifest"])
    subs = sorted((k for k in expected if k.startswith("sub/")), key=lambda k: k.encode())
    assert rows == [[APPID, "plain", urllib.parse.quote(k), "null", "true", "false",
                     str(len(expected[k][0]))] for k in subs]
    assert manifest["filterObjectCount"] == str(len(subs))
    assert int(manifest["listObjectCount"]) >= len(expected)  # the earlier reports count too


def test_configuration_commands_and_errors(daemon):
    bucket = os.path.join(daemon.mnt, ENC)
    cli("--method", "put", bucket, "--task-id", "cfg1", "--destination", DEST, "--disabled",
        "--fields", "Size,ETag", "--prefix", "x/", "--frequency", "Weekly")
    got = cli("--method", "get", bucket, "--task-id", "cfg1").stdout
    assert "<Frequency>Weekly</Frequency>" in got and "<IsEnabled>false</IsEnabled>" in got
    assert os.getxattr(bucket, INV + ".cfg1").decode() == got
    assert os.getxattr(bucket, INV) == b"cfg1\n"
    listing = cli("--method", "list", bucket).stdout
    assert listing.count("<InventoryConfiguration>") == 1
    # errors name the problem and change nothing
    res = cli("--method", "get", bucket, "--task-id", "none", check=False)
    assert res.returncode == 1 and "InventoryConfigurationNotFoundError" in res.stderr
    res = cli("--method", "put", bucket, "--task-id", "bad id", "--destination", DEST,
              check=False)
    assert res.returncode == 1 and "InvalidArgument" in res.stderr and "inventory id" in \
        res.stderr
    res = cli("--method", "put", bucket, "--task-id", "cfg1", "--destination", DEST,
              "--fields", "Size,Owner", check=False)
    assert res.returncode == 1 and "unknown optional field" in res.stderr
    res = cli("--method", "put", bucket, "--task-id", "cfg1", "--destination",
              "nope-" + APPID, check=False)
    assert res.returncode == 1 and "InvalidArgument" in res.stderr
    res = cli("--method", "post", bucket, "--task-id", "cfg1", "--destination", DEST,
              check=False)
    assert res.returncode == 1 and "DuplicateInventoryId" in res.stderr
    assert "<IsEnabled>false</IsEnabled>" in cli("--method", "get", bucket, "--task-id",
                                                 "cfg1").stdout
    with pytest.raises(OSError) as ei:
        os.setxattr(bucket, INV + ".cfg2", b"<InventoryConfiguration/>")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        os.getxattr(bucket, INV + ".cfg2")
    assert ei.value.errno == errno.ENODATA
    cli("--method", "delete", bucket, "--task-id", "cfg1")
    cli("--method", "delete", bucket, "--task-id", "cfg1")  # no error when absent
    assert os.getxattr(bucket, INV) == b""


def test_xml_api(daemon):
    from qcloud_cos import CosConfig, CosS3Client, CosServiceError
    cos = CosS3Client(CosConfig(Region="ap-guangzhou", SecretId=daemon.cred.secret_id,
                                SecretKey=daemon.cred.secret_key, IP="127.0.0.1",
                                Port=daemon.port, Scheme="http"), retry=1)
    config = {
        "Destination": {"COSBucketDestination": {
            "AccountId": "100000000001", "Bucket": "qcs::cos:ap-guangzhou::" + DEST,
            "Format": "CSV", "Prefix": "api", "Encryption": {"SSECOS": {}}}},
        "IsEnabled": "False", "IncludedObjectVersions": "Current",
        "OptionalFields": {"Field": ["Size", "ETag"]}, "Schedule": {"Frequency": "Daily"}}
    cos.put_bucket_inventory(Bucket=PLAIN, Id="api1", InventoryConfiguration=dict(config))
    got = cos.get_bucket_inventory(Bucket=PLAIN, Id="api1")
    assert got["Id"] == "api1" and got["OptionalFields"]["Field"] == ["Size", "ETag"]
    assert got["Destination"]["COSBucketDestination"]["Bucket"].endswith(DEST)
    assert b"<SSE-COS/>" in os.getxattr(os.path.join(daemon.mnt, PLAIN), INV + ".api1")
    listed = cos.list_bucket_inventory_configurations(Bucket=PLAIN)
    assert listed["IsTruncated"] == "false"
    with pytest.raises(CosServiceError) as ei:
        cos.get_bucket_inventory(Bucket=PLAIN, Id="nope")
    assert ei.value.get_error_code() == "InventoryConfigurationNotFoundError"
    assert ei.value.get_status_code() == 404
    bad = dict(config, IncludedObjectVersions="Some")
    with pytest.raises(CosServiceError) as ei:
        cos.put_bucket_inventory(Bucket=PLAIN, Id="api2", InventoryConfiguration=bad)
    assert ei.value.get_status_code() == 400 and ei.value.get_error_code() == "InvalidArgument"
    with pytest.raises(CosServiceError) as ei:
        cos.post_bucket_inventory(Bucket=PLAIN, Id="api1", InventoryConfiguration={
            k: v for k, v in config.items() if k not in ("IsEnabled", "Schedule")})
    assert ei.value.get_error_code() == "DuplicateInventoryId"
    assert ei.value.get_status_code() == 409
    # a one-off run: delivered when the answer comes, encrypted by its SSE-COS
    cos.post_bucket_inventory(Bucket=PLAIN, Id="api-once", InventoryConfiguration={
        k: v for k, v in config.items() if k not in ("IsEnabled", "Schedule")})
    st = status(os.path.join(daemon.mnt, PLAIN), "api-once")
    assert st["state"] == "complete" and st["manifest"].startswith("api/")
    manifest = json.loads(cos.get_object(Bucket=DEST, Key=st["manifest"])["Body"].get_raw_stream()
                          .read())
    assert manifest["fileSchema"] == "Appid, Bucket, Key, Size, ETag"
    head = cos.head_object(Bucket=DEST, Key=manifest["files"][0]["key"])
    assert head["x-cos-server-side-encryption"] == "AES256"
    cos.delete_bucket_inventory(Bucket=PLAIN, Id="api1")
    cos.delete_bucket_inventory(Bucket=PLAIN, Id="api1")
    with pytest.raises(CosServiceError):
        cos.get_bucket_inventory(Bucket=PLAIN, Id="api1")


def _wait(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _status_or_none(bucket_dir, inv_id):
    try:
        return status(bucket_dir, inv_id)
    except OSError:
        return None


def test_schedule_first_and_missed_deliveries(tmp_path):
    config = write_config(str(tmp_path / "fs"))
    m = Mount(config).start()
    try:
        bucket = m.plain
        put(os.path.join(bucket, "x"), b"x")
        cli("--method", "put", bucket, "--task-id", "daily", "--destination", ENC)
        _wait(lambda: (_status_or_none(bucket, "daily") or {}).get("state") == "complete")
        first = status(bucket, "daily")
        read_report(m.mnt, ENC, first["manifest"])
        m.stop()
        # offline: a weekly inventory configured while unmounted; and the daily one's last
        # delivery moved to a day long past (as after days unmounted)
        cli("--method", "put", PLAIN, "--task-id", "weekly", "--destination", ENC,
            "--frequency", "Weekly", "--config", config)
        out = cli("--method", "post", PLAIN, "--task-id", "offline", "--destination", ENC,
                  "--fields", "Size", "--config", config).stdout
        assert "delivered inventory offline" in out and "1 object(s)" in out
        listed = cli("--method", "list", PLAIN, "--config", config).stdout
        assert "<Id>daily</Id>" in listed and "<Id>weekly</Id>" in listed
        assert "<Frequency>Weekly</Frequency>" in cli("--method", "get", PLAIN, "--task-id",
                                                      "weekly", "--config", config).stdout
        db = sqlite3.connect(os.path.join(m.store, "catalog.db"))
        with db:
            db.execute("UPDATE inventory_deliveries SET period='D20000101' WHERE id='daily'")
        db.close()
        m.start()
        _wait(lambda: (_status_or_none(bucket, "weekly") or {}).get("state") == "complete")
        _wait(lambda: status(bucket, "daily")["job_id"] != first["job_id"])
        _wait(lambda: status(bucket, "daily")["state"] == "complete")
        read_report(m.mnt, ENC, status(bucket, "weekly")["manifest"])
        _, rows, _ = read_report(m.mnt, ENC, status(bucket, "offline")["manifest"])
        assert rows == [[APPID, "plain", "x", "1"]]
        # a restart in the same period delivers nothing new
        again = status(bucket, "daily")["job_id"]
        m.stop()
        m.start()
        time.sleep(0.5)
        assert status(bucket, "daily")["job_id"] == again
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "\n".join(bad)


def test_kill_during_delivery_then_remount(tmp_path):
    config = write_config(str(tmp_path / "fs"), extra="inventory:\n  rows_per_file: 50\n")
    m = Mount(config).start()
    try:
        bucket = m.plain
        for i in range(1500):
            put(os.path.join(bucket, "f%04d" % i), b"%d" % i)
        doc = ("<InventoryConfiguration><Id>once</Id><Destination><COSBucketDestination>"
               "<Format>CSV</Format><Bucket>qcs::cos:ap-guangzhou::%s</Bucket>"
               "</COSBucketDestination></Destination><IncludedObjectVersions>Current"
               "</IncludedObjectVersions><OptionalFields><Field>ETag</Field></OptionalFields>"
               "</InventoryConfiguration>" % ENC).encode()
        reports = os.path.join(m.enc, APPID, "plain", "once")

        def data_files():
            try:
                return [f for f in os.listdir(reports) if f.endswith(".csv.gz")]
            except OSError:
                return []

        worker = threading.Thread(target=lambda: subprocess.run(
            ["setfattr", "-n", INV + "-post.once", "-v", doc.decode(), bucket],
            capture_output=True))
        worker.start()
        _wait(lambda: len(data_files()) >= 2, timeout=30)
        m.kill9()
        worker.join(timeout=30)
        m.start()
        st = _status_or_none(bucket, "once")
        if st is None:  # the usual case: the half-written report was removed at mount
            assert data_files() == []
            assert re.search(r"removed the [1-9][0-9]* object\(s\) of an interrupted",
                             m.log_text())
        else:  # killed after its checksum: complete
            assert st["state"] == "complete"
            manifest, rows, _ = read_report(m.mnt, ENC, st["manifest"])
            assert len(rows) == 1500
            assert sorted(f["key"].rsplit("/", 1)[1] for f in manifest["files"]) == \
                sorted(data_files())
            return
        # the same id runs again: 30 data files, all listed, nothing else left
        cli("--method", "post", bucket, "--task-id", "once", "--destination", ENC,
            "--fields", "ETag")
        manifest, rows, paths = read_report(m.mnt, ENC, status(bucket, "once")["manifest"])
        assert len(rows) == 1500 and len(manifest["files"]) == 30
        assert sorted(f["key"].rsplit("/", 1)[1] for f in manifest["files"]) == \
            sorted(data_files())
        assert [r[2] for r in rows] == ["f%04d" % i for i in range(1500)]
    finally:
        m.stop()
    bad = m.unexpected_log_lines()
    assert not bad, "\n".join(bad)
