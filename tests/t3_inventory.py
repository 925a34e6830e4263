"""Tier 3: inventory deliveries (cosfs.services.inventory) over an in-process store.

The service writes through a real KeySpace, FileSystem and data path; the
schedule runs on an injected clock; crashes are simulated by a hook that
fails the delivery after a given report object, then a new service recovers.
Large buckets are checked with a small ``rows_per_file``, so that a few
thousand objects make several data files.
"""

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import urllib.parse

import pytest
import trio

from cosfs import inventoryconf as ic
from cosfs.errors import CosfsError
from cosfs.keyspace import KeySpace
from cosfs.mount import build_inventory

from helpers import APPID, ENC, PLAIN, fs_env, tmp_path, trio_test  # noqa: F401

DEST = "dest-" + APPID
FAR = "far-" + APPID
ALL_FIELDS = "".join("<Field>%s</Field>" % f for f in ic.FIELDS)


def config_doc(inv_id, dest=DEST, *, frequency="Daily", enabled=True, versions="Current",
               prefix="", fields=ALL_FIELDS, sse=False, dest_prefix="", region="ap-guangzhou"):
    sched = "" if frequency is None else (
        "<IsEnabled>%s</IsEnabled><Schedule><Frequency>%s</Frequency></Schedule>"
        % ("true" if enabled else "false", frequency))
    return ("<InventoryConfiguration><Id>%s</Id>%s<Destination><COSBucketDestination>"
            "<Format>CSV</Format><Bucket>qcs::cos:%s::%s</Bucket>%s%s</COSBucketDestination>"
            "</Destination>%s<IncludedObjectVersions>%s</IncludedObjectVersions>"
            "<OptionalFields>%s</OptionalFields></InventoryConfiguration>"
            % (inv_id, sched, region, dest,
               "<Prefix>%s</Prefix>" % dest_prefix if dest_prefix else "",
               "<Encryption><SSE-COS/></Encryption>" if sse else "",
               "<Filter><Prefix>%s</Prefix></Filter>" % prefix if prefix else "",
               versions, fields)).encode()


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


async def setup(env, **kw):
    ks = KeySpace(env.fs, env.objects, env.catalog)
    await ks.create_bucket(DEST, "ap-guangzhou")
    await ks.create_bucket(FAR, "ap-shanghai")
    service = build_inventory(env.store, env.objects, env.fs, **kw)
    return ks, service


async def read(ks, bucket, key):
    reader = await ks.open_object(bucket, key)
    try:
        return await reader.read(0, reader.info.size + 1)
    finally:
        await reader.aclose()


async def report(ks, bucket, manifest_key):
    """(manifest dict, [rows]) of a delivered report, checking every checksum."""
    raw = await read(ks, bucket, manifest_key)
    checksum = await read(ks, bucket, manifest_key.replace("manifest.json", "manifest.checksum"))
    assert checksum.decode() == hashlib.md5(raw).hexdigest()
    manifest = json.loads(raw)
    rows = []
    for f in manifest["files"]:
        data = await read(ks, bucket, f["key"])
        assert f["size"] == str(len(data)) and f["md5Checksum"] == hashlib.md5(data).hexdigest()
        rows += list(csv.reader(io.StringIO(gzip.decompress(data).decode())))
    return manifest, rows


def status(env, bucket, inv_id):
    return json.loads(env.fs.inventory_status(env.fs.bucket_inode(bucket), inv_id))


@trio_test
async def test_report_rows_counts_and_encryption(tmp_path):
    async with fs_env(tmp_path) as env:
        ks, service = await setup(env)
        objs = {"a.txt": b"hello", "dir/b c,\"q\".bin": os.urandom(70000), "\u00e9t\u00e9": b"",
                "logs/1": b"one", "logs/2": b"two two"}
        for key, data in objs.items():
            await ks.put_object(PLAIN, key, data)
        await ks.put_object(PLAIN, "enc-obj", b"secret", sse="AES256")
        await ks.put_object(PLAIN, "empty-dir/", b"")
        objs["enc-obj"] = b"secret"
        # a file written on the mount: its ETag is not known until asked
        fh, ino = await env.new_file("mounted.dat")
        await env.fs.write(fh, 0, b"m" * 1000)
        await env.fs.release(fh)
        objs["mounted.dat"] = b"m" * 1000
        with env.catalog.transaction():
            env.catalog.set_replication_status(env.catalog.lookup(env.bucket(PLAIN), b"a.txt"),
                                               "COMPLETED")
        # upload in parts: the ETag marks it as multipart
        up = await ks.create_upload(PLAIN, "multi")
        etag1 = await ks.upload_part(PLAIN, "multi", up, 1, b"x" * (1 << 20))
        etag2 = await ks.upload_part(PLAIN, "multi", up, 2, b"y" * 10)
        await ks.complete_upload(PLAIN, "multi", up, [(1, etag1), (2, etag2)])
        objs["multi"] = b"x" * (1 << 20) + b"y" * 10

        cases = [("plain-into-plain", DEST, False, None), ("sse-into-plain", DEST, True, "AES256"),
                 ("plain-into-enc", ENC, False, "AES256"), ("sse-into-enc", ENC, True, "AES256")]
        for inv_id, dest, sse, expected in cases:
            job = await env.fs.post_bucket_inventory(
                env.bucket(PLAIN), inv_id, config_doc(inv_id, dest, frequency=None, sse=sse,
                                                      dest_prefix="reports"))
            st = status(env, PLAIN, inv_id)
            assert st["job_id"] == job and st["state"] == "complete"
            assert st["manifest"].startswith("reports/%s/plain/%s/" % (APPID, inv_id))
            manifest, rows = await report(ks, dest, st["manifest"])
            assert manifest["listObjectCount"] == manifest["filterObjectCount"] == "9"
            total = sum(len(d) for d in objs.values())
            assert manifest["listStorageSize"] == manifest["filterStorageSize"] == str(total)
            assert manifest["fileSchema"] == "Appid, Bucket, Key, " + ", ".join(ic.FIELDS)
            assert (manifest["sourceBucket"], manifest["destinationBucket"]) == \
                ("plain", dest.rsplit("-", 1)[0])
            keys = [urllib.parse.unquote(r[2]) for r in rows]
            expected_keys = sorted(list(objs) + ["empty-dir/"], key=lambda k: k.encode())
            assert keys == expected_keys
            for r in rows:
                key = urllib.parse.unquote(r[2])
                assert r[:2] == [APPID, "plain"] and len(r) == 9
                data = objs.get(key, b"")
                md5 = hashlib.md5(data).hexdigest()
                assert r[3] == str(len(data))
                assert r[4].endswith("Z") and r[4][10] == "T"
                assert r[6] == "STANDARD"
                if key == "multi":
                    assert r[5].endswith("-2") and r[7] == "true"
                else:
                    assert r[5] == md5 and r[7] == "false"
                assert r[8] == ("COMPLETED" if key == "a.txt" else "")
            for obj in [st["manifest"], st["manifest"].replace(".json", ".checksum")] + \
                    [f["key"] for f in manifest["files"]]:
                assert (await ks.head_object(dest, obj)).sse == expected, (inv_id, obj)
        # the report of the source bucket itself, filtered by prefix, versions All
        await env.fs.post_bucket_inventory(env.bucket(PLAIN), "self", config_doc(
            "self", PLAIN, frequency=None, prefix="logs/", versions="All",
            fields="<Field>Size</Field>"))
        manifest, rows = await report(ks, PLAIN, status(env, PLAIN, "self")["manifest"])
        assert rows == [[APPID, "plain", "logs/1", "null", "true", "false", "3"],
                        [APPID, "plain", "logs/2", "null", "true", "false", "7"]]
        assert (manifest["listObjectCount"], manifest["filterObjectCount"],
                manifest["filterStorageSize"]) == ("9", "2", "10")
        assert manifest["fileSchema"] == "Appid, Bucket, Key, VersionId, IsLatest, " \
                                         "IsDeleteMarker, Size"


@trio_test
async def test_large_bucket_streams_into_several_files(tmp_path, caplog):
    async with fs_env(tmp_path) as env:
        ks, service = await setup(env, rows_per_file=400)
        n = 1500
        bino = env.bucket(PLAIN)
        # many small objects quickly: created on the tree, as the mount would
        for i in range(n):
            fh, _ = await env.new_file("k%05d" % i)
            await env.fs.write(fh, 0, b"%d" % i)
            await env.fs.release(fh)
        caplog.set_level(logging.INFO, logger="cosfs.services.inventory")
        await env.fs.post_bucket_inventory(bino, "big", config_doc(
            "big", frequency=None, prefix="k00", fields="<Field>Size</Field><Field>ETag</Field>"))
        manifest, rows = await report(ks, DEST, status(env, PLAIN, "big")["manifest"])
        assert len(manifest["files"]) == 3  # 1000 rows (k00000..k00999) by 400
        assert len(rows) == 1000 and manifest["filterObjectCount"] == "1000"
        assert manifest["listObjectCount"] == str(n)
        assert [r[2] for r in rows] == ["k%05d" % i for i in range(1000)]
        assert all(r[4] == hashlib.md5(b"%d" % int(r[2][1:])).hexdigest() for r in rows)
        progress = [r.getMessage() for r in caplog.records if r.getMessage().endswith("written")]
        assert len(progress) == 3 and "1000 reported" in progress[-1]


@trio_test
async def test_schedule_with_an_injected_clock(tmp_path, caplog):
    async with fs_env(tmp_path) as env:
        clock = Clock(ic.utc_seconds(2026, 11, 30, 10))  # a Monday
        ks, service = await setup(env, clock=clock)
        await ks.put_object(PLAIN, "a", b"a")
        bino = env.bucket(PLAIN)
        env.fs.put_bucket_inventory(bino, "daily", config_doc("daily"))
        env.fs.put_bucket_inventory(bino, "weekly", config_doc("weekly", frequency="Weekly"))
        env.fs.put_bucket_inventory(bino, "off", config_doc("off", enabled=False))
        assert await service.deliver_due() == 2  # the first delivery at once
        assert await service.deliver_due() == 0
        assert status(env, PLAIN, "daily")["manifest"].endswith("/20261130/manifest.json")
        clock.t += 13 * 3600  # 23:00, still Monday
        assert await service.deliver_due() == 0
        clock.t += 3600  # Tuesday 00:00
        assert await service.deliver_due() == 1
        assert status(env, PLAIN, "daily")["period"] == "D20261201"
        clock.t = ic.utc_seconds(2026, 12, 5)  # days missed (not running): one delivery
        assert await service.deliver_due() == 1
        assert await service.deliver_due() == 0
        clock.t = ic.utc_seconds(2026, 12, 7, 0, 0, 1)  # next Monday: both
        assert await service.deliver_due() == 2
        assert "off" not in [c.id for c in env.fs.list_bucket_inventory(bino) if
                             env.catalog.inventory_delivery(bino, c.id)]
        # the daemon's task: wakes when a configuration changes
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            env.fs.put_bucket_inventory(bino, "new", config_doc("new"))
            with trio.fail_after(10):
                while env.catalog.inventory_delivery(bino, "new") is None or \
                        not env.catalog.inventory_delivery(bino, "new")["finished_ns"]:
                    await trio.sleep(0.01)
            service.stop()
        # a destination removed: a warning, retried in the next period or after a change
        tmp = "tmp-" + APPID
        await ks.create_bucket(tmp, "ap-guangzhou")
        env.fs.put_bucket_inventory(bino, "gone", config_doc("gone", tmp))
        await ks.delete_bucket(tmp)
        caplog.set_level(logging.WARNING)
        assert await service.deliver_due() == 0
        assert "the delivery failed" in caplog.text and "does not exist" in caplog.text
        caplog.clear()
        assert await service.deliver_due() == 0
        assert "the delivery failed" not in caplog.text
        service.changed()
        assert await service.deliver_due() == 0
        assert "the delivery failed" in caplog.text


@trio_test
async def test_crash_during_delivery_leaves_no_half_report(tmp_path):
    async with fs_env(tmp_path) as env:
        ks, service = await setup(env, rows_per_file=2)
        for i in range(5):
            await ks.put_object(PLAIN, "o%d" % i, b"x" * i)
        bino = env.bucket(PLAIN)
        env.fs.put_bucket_inventory(bino, "inv", config_doc("inv", fields=""))

        class Crash(Exception):
            pass

        for crash_after in (2, 4):  # after the 2nd data file; after manifest.json
            seen = []

            async def hook(key):
                seen.append(key)
                if len(seen) == crash_after:
                    raise Crash()

            service.crash_hook = hook
            with pytest.raises(Crash):
                await service.deliver_due()
            rec = env.catalog.inventory_delivery(bino, "inv")
            assert rec["finished_ns"] is None and len(json.loads(rec["written"])) == crash_after
            listing = ks.list_objects(DEST, max_keys=1000)
            manifests = [o.key for o in listing.contents if o.key.endswith("manifest.json")]
            if manifests:  # written after every data file: lists them all
                m = json.loads(await read(ks, DEST, manifests[0]))
                assert len(m["files"]) == 3
            # a new daemon: the interrupted delivery is removed, then delivered again
            service.crash_hook = None
            service2 = build_inventory(env.store, env.objects, env.fs, rows_per_file=2)
            await service2.recover()
            assert [o for o in ks.list_objects(DEST, max_keys=1000).contents
                    if not o.is_dir_marker] == []  # at most empty directories
            assert env.catalog.inventory_delivery(bino, "inv") is None
            assert await service2.deliver_due() == 1
            manifest, rows = await report(ks, DEST, status(env, PLAIN, "inv")["manifest"])
            assert len(rows) == 5 and len(manifest["files"]) == 3
            for obj in ks.list_objects(DEST, max_keys=1000).contents:
                await ks.delete_object(DEST, obj.key)
            with env.catalog.transaction():
                env.catalog.delete_inventory_delivery(bino, "inv")
        # interrupted after the checksum: the report is complete and kept
        seen = []

        async def late(key):
            seen.append(key)
            if key.endswith("manifest.checksum"):
                raise Crash()

        service.crash_hook = late
        with pytest.raises(Crash):
            await service.deliver_due()
        service.crash_hook = None
        await build_inventory(env.store, env.objects, env.fs).recover()
        assert status(env, PLAIN, "inv")["state"] == "complete"
        await report(ks, DEST, status(env, PLAIN, "inv")["manifest"])


@trio_test
async def test_configuration_rules(tmp_path):
    async with fs_env(tmp_path) as env:
        ks, service = await setup(env)
        fs, bino = env.fs, env.bucket(PLAIN)

        def code(fn, *args):
            with pytest.raises(CosfsError) as ei:
                fn(*args)
            return ei.value.code, ei.value.http_status

        assert code(fs.get_bucket_inventory, bino, "none") == \
            ("InventoryConfigurationNotFoundError", 404)
        assert code(fs.put_bucket_inventory, bino, "x", config_doc("x", "nope-" + APPID)) == \
            ("InvalidArgument", 400)
        assert code(fs.put_bucket_inventory, bino, "x", config_doc("x", FAR)) == \
            ("InvalidArgument", 400)  # named in guangzhou, but it is in shanghai
        assert code(fs.put_bucket_inventory, bino, "x",
                    config_doc("x", FAR, region="ap-shanghai")) == ("InvalidArgument", 400)
        assert code(fs.put_bucket_inventory, bino, "x", config_doc("y")) == \
            ("InvalidArgument", 400)
        assert code(fs.put_bucket_inventory, bino, "x", b"<nope/>") == ("MalformedXML", 400)
        assert fs.list_bucket_inventory(bino) == []
        fs.put_bucket_inventory(bino, "x", config_doc("x"))
        fs.put_bucket_inventory(bino, "x", config_doc("x", frequency="Weekly"))  # replaced
        assert ic.parse_inventory(fs.get_bucket_inventory(bino, "x")).frequency == "Weekly"
        with pytest.raises(CosfsError) as ei:
            await fs.post_bucket_inventory(bino, "x", config_doc("x", frequency=None))
        assert ei.value.code == "DuplicateInventoryId" and ei.value.http_status == 409
        await fs.post_bucket_inventory(bino, "once", config_doc("once", frequency=None))
        with pytest.raises(CosfsError) as ei:
            await fs.post_bucket_inventory(bino, "once", config_doc("once", frequency=None))
        assert ei.value.code == "DuplicateInventoryId"
        for i in range(999):
            with env.catalog.transaction():
                env.catalog.set_bucket_config(bino, "inventory:n%04d" % i,
                                              config_doc("n%04d" % i))
        assert code(fs.put_bucket_inventory, bino, "z", config_doc("z")) == ("InventoryFull", 400)
        fs.put_bucket_inventory(bino, "x", config_doc("x"))  # replacing is still fine
        assert len(fs.list_bucket_inventory(bino)) == 1000
        page = ks.list_bucket_inventory(PLAIN)
        assert page.count(b"<Id>") == 100 and b"<NextContinuationToken>n0099<" in page
        last = ks.list_bucket_inventory(PLAIN, token="n0899")
        assert last.count(b"<Id>") == 100 and b"<IsTruncated>false<" in last
        assert b"<ContinuationToken>n0899<" in last and b"NextContinuationToken" not in last
        fs.delete_bucket_inventory(bino, "x")
        fs.delete_bucket_inventory(bino, "x")  # no error when absent
        assert code(fs.get_bucket_inventory, bino, "x")[0] == "InventoryConfigurationNotFoundError"
        # xattrs of the bucket directory
        name = b"user.cos.bucket-inventory.viax"
        await fs.setxattr(bino, name, config_doc("viax"))
        assert ic.parse_inventory(await fs.getxattr(bino, name)).id == "viax"
        assert b"viax\n" in await fs.getxattr(bino, b"user.cos.bucket-inventory")
        await fs.removexattr(bino, name)
        with pytest.raises(CosfsError) as ei:
            await fs.getxattr(bino, name)
        assert ei.value.errno == 61  # ENODATA
        with pytest.raises(CosfsError) as ei:
            await fs.setxattr(bino, b"user.cos.bucket-inventory.bad id", config_doc("x"))
        assert ei.value.errno == 22
        await fs.setxattr(bino, b"user.cos.bucket-inventory-post.run1",
                          config_doc("run1", frequency=None))
        st = json.loads(await fs.getxattr(bino, b"user.cos.bucket-inventory-status.run1"))
        assert st["state"] == "complete" and st["objects"] == 0
        with pytest.raises(CosfsError) as ei:
            await fs.post_bucket_inventory(bino, "run2", config_doc("run2", FAR, frequency=None,
                                                                    region="ap-shanghai"))
        assert ei.value.code == "InvalidArgument"
        assert env.catalog.inventory_delivery(bino, "run2") is None


@trio_test
async def test_all_versions_report_noncurrent_versions_and_markers(tmp_path):
    async with fs_env(tmp_path) as env:
        ks, service = await setup(env)
        await ks.put_object(PLAIN, "a", b"before versioning")
        ks.put_bucket_versioning(PLAIN, b"Enabled")
        v2 = (await ks.put_object(PLAIN, "a", b"second")).version_id
        await ks.put_object(PLAIN, "gone", b"x" * 5)
        marker, _ = await ks.delete_object(PLAIN, "gone")
        gone_v = ks.list_object_versions(PLAIN, prefix="gone").versions[1].version_id
        await env.fs.post_bucket_inventory(env.bucket(PLAIN), "all", config_doc(
            "all", DEST, frequency=None, versions="All", fields="<Field>Size</Field>"))
        manifest, rows = await report(ks, DEST, status(env, PLAIN, "all")["manifest"])
        assert rows == [[APPID, "plain", "a", v2, "true", "false", "6"],
                        [APPID, "plain", "a", "null", "false", "false", "17"],
                        [APPID, "plain", "gone", marker, "true", "true", "0"],
                        [APPID, "plain", "gone", gone_v, "false", "false", "5"]]
        # Current lists only what is there now
        await env.fs.post_bucket_inventory(env.bucket(PLAIN), "cur", config_doc(
            "cur", DEST, frequency=None, fields="<Field>Size</Field>"))
        _, rows = await report(ks, DEST, status(env, PLAIN, "cur")["manifest"])
        assert rows == [[APPID, "plain", "a", "6"]]
