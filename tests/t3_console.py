"""The web console in process: its ASGI app over a real key space, through httpx.

Each test opens a fresh store (buckets ``plain`` and ``enc`` with AES256) and
talks to :class:`cosfs.console.app.ConsoleApp` with ``httpx.ASGITransport``
(under trio): access without a session, login and its throttle, CSRF,
read-only credentials, escaping, the bucket, file and encryption pages,
uploads, downloads, deletes, and the metrics after a known sequence of
writes, reads and a tamper.
"""

import re
import sqlite3
from contextlib import asynccontextmanager

import httpx
import pytest
import trio

from cosfs import metrics
from cosfs.bucketconf import parse_encryption
from cosfs.console.app import ConsoleApp
from cosfs.console.sessions import LoginThrottle, Sessions
from cosfs.credentials import READ_ONLY, Credential, Credentials
from cosfs.errors import CosfsError
from cosfs.keyspace import KeySpace

from helpers import APPID, ENC, PLAIN, REGION, fs_env, tmp_path, trio_test  # noqa: F401

FULL_ID, FULL_KEY = "AKID" + "f" * 32, "F" * 40
RO_ID, RO_KEY = "AKID" + "r" * 32, "R" * 40


class Clock:
    def __init__(self):
        self.now = 5000.0

    def __call__(self):
        return self.now


@asynccontextmanager
async def console(tmp_path, client_addr="127.0.0.1"):
    async with fs_env(tmp_path) as env:
        ks = KeySpace(env.fs, env.objects, env.catalog)
        clock = Clock()
        app = ConsoleApp(ks, credentials=Credentials([Credential(FULL_ID, FULL_KEY),
                                                      Credential(RO_ID, RO_KEY, READ_ONLY)]),
                         sessions=Sessions(600, clock), regions=[REGION],
                         throttle=LoginThrottle(clock), login_delay=0)
        app.clock = clock
        transport = httpx.ASGITransport(app=app, client=(client_addr, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as c:
            c.env, c.ks, c.app = env, ks, app
            yield c


async def login(c, secret_id=FULL_ID, secret_key=FULL_KEY):
    page = await c.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text).group(1)
    return await c.post("/login", data={"login_token": token, "secret_id": secret_id,
                                        "secret_key": secret_key})


def csrf_of(page):
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


async def upload(c, bucket, files, sse="", prefix="", csrf=None):
    if csrf is None:
        csrf = csrf_of(await c.get("/b/%s/" % bucket))
    fields = {"sse": sse, "prefix": prefix}
    if csrf is not False:
        fields = {"csrf": csrf, **fields}
    return await c.post("/b/%s/upload" % bucket, data=fields,
                        files=[("file", (name, data)) for name, data in files])


@trio_test
async def test_nothing_without_a_session(tmp_path):
    async with console(tmp_path) as c:
        for path in ("/", "/b/%s/" % PLAIN, "/b/%s/encryption" % ENC,
                     "/b/%s/download?key=x" % PLAIN):
            r = await c.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/login", path
        for path in ("/buckets", "/b/%s/upload" % PLAIN, "/b/%s/delete" % PLAIN,
                     "/b/%s/encryption" % ENC, "/logout"):
            r = await c.post(path, data={"name": "x-" + APPID})
            assert r.status_code == 403, path
        assert [b.name for b in c.ks.list_buckets()] == sorted([PLAIN, ENC])
        r = await c.get("/static/console.css")
        assert r.status_code == 200 and "text/css" in r.headers["content-type"]
        assert (await c.get("/static/..%2Fapp.py")).status_code == 404


@trio_test
async def test_login_cookie_logout_and_expiry(tmp_path):
    async with console(tmp_path) as c:
        r = await login(c)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = [v for v in r.headers.get_list("set-cookie") if v.startswith("cosfs_session=")][0]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=600" in cookie
        page = await c.get("/")
        assert page.status_code == 200 and PLAIN in page.text and ENC in page.text
        assert FULL_KEY not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        # logout needs the CSRF token, then ends the session
        assert (await c.post("/logout", data={})).status_code == 403
        r = await c.post("/logout", data={"csrf": csrf_of(page)})
        assert r.status_code == 303
        assert (await c.get("/")).status_code == 303
        # an expired session goes back to the login page
        await login(c)
        assert (await c.get("/")).status_code == 200
        c.app.clock.now += 601
        r = await c.get("/")
        assert r.status_code == 303 and r.headers["location"] == "/login"


@trio_test
async def test_failed_logins_are_slowed_down_and_logged(tmp_path, caplog):
    async with console(tmp_path, client_addr="192.0.2.7") as c:
        r = await login(c, secret_key="wrong" * 8)
        assert r.status_code == 401 and "Wrong SecretId or SecretKey" in r.text
        assert "wrong" * 8 not in r.text
        assert any("login failed" in m and "192.0.2.7" in m for m in caplog.messages)
        assert all("wrong" * 8 not in m for m in caplog.messages)
        # during the penalty even the right key does not count
        r = await login(c)
        assert r.status_code == 429
        c.app.clock.now += 1.5
        r = await login(c)
        assert r.status_code == 303
        # a login form without its token (cross-site post) is refused
        r = await c.post("/login", data={"secret_id": FULL_ID, "secret_key": FULL_KEY})
        assert r.status_code == 403
        # metrics are for loopback clients or sessions: this client has a session
        assert (await c.get("/metrics")).status_code == 200


@trio_test
async def test_metrics_need_loopback_or_session(tmp_path):
    async with console(tmp_path, client_addr="192.0.2.8") as c:
        assert (await c.get("/metrics")).status_code == 403
    async with console(tmp_path / "2") as c:
        r = await c.get("/metrics")
        assert r.status_code == 200 and "cosfs_commits_total" in r.text
        assert c.ks.last_usage is not None  # counted in a worker thread for the scrape

        def broken(apart=False):
            raise sqlite3.OperationalError("disk I/O error")
        c.ks.catalog.usage_by_encryption = broken
        r = await c.get("/metrics")  # a failed count does not fail the scrape
        assert r.status_code == 200 and "cosfs_commits_total" in r.text


@trio_test
async def test_bucket_create_upload_download_delete(tmp_path):
    async with console(tmp_path) as c:
        await login(c)
        index = await c.get("/")
        name = "web-" + APPID
        r = await c.post("/buckets", data={"csrf": csrf_of(index), "name": name,
                                           "region": REGION, "encryption": "AES256"})
        assert r.status_code == 303 and r.headers["location"] == "/b/%s/" % name
        assert parse_encryption(c.ks.get_bucket_encryption(name)).algorithm == "AES256"
        bad = await c.post("/buckets", data={"csrf": csrf_of(index), "name": "Bad_Name",
                                             "region": REGION})
        assert bad.status_code == 400 and "InvalidBucketName" in bad.text
        r = await upload(c, name, [("a.txt", b"hello"), ("b.bin", b"x" * 100000)])
        assert r.status_code == 303
        r = await upload(c, name, [("plain.txt", b"p")], sse="", prefix="docs/")
        assert r.status_code == 303 and "prefix=docs%2F" in r.headers["location"]
        page = await c.get("/b/%s/" % name)
        rows = dict(re.findall(r'<tr data-key="([^"]+)">.*?<td class="sse">([^<]*)</td>',
                               page.text, re.S))
        assert rows == {"a.txt": "AES256", "b.bin": "AES256"}
        assert "docs/" in page.text and "5d41402abc4b2a76b9719d911017c592" in page.text
        r = await c.get("/b/%s/download?key=b.bin" % name)
        assert r.status_code == 200 and r.content == b"x" * 100000
        assert "attachment" in r.headers["content-disposition"]
        # per-upload encryption wins over the default
        await upload(c, name, [("sm4.txt", b"s")], sse="SM4")
        assert (await c.ks.head_object(name, "sm4.txt")).sse == "SM4"
        # delete with confirmation
        confirm = await c.get("/b/%s/delete?key=a.txt" % name)
        assert confirm.status_code == 200 and "cannot be undone" in confirm.text
        assert (await c.post("/b/%s/delete" % name, data={"key": "a.txt"})).status_code == 403
        r = await c.post("/b/%s/delete" % name, data={"key": "a.txt", "csrf": csrf_of(confirm)})
        assert r.status_code == 303
        with pytest.raises(CosfsError):
            await c.ks.head_object(name, "a.txt")
        # a bucket with objects explains why it cannot go
        confirm = await c.get("/b/%s/delete-bucket" % name)
        r = await c.post("/b/%s/delete-bucket" % name, data={"csrf": csrf_of(confirm)})
        assert r.status_code == 409 and "BucketNotEmpty" in r.text
        for key in ("b.bin", "sm4.txt", "docs/plain.txt"):
            await c.ks.delete_object(name, key)
        r = await c.post("/b/%s/delete-bucket" % name, data={"csrf": csrf_of(confirm)})
        assert r.status_code == 303
        assert name not in [b.name for b in c.ks.list_buckets()]


@trio_test
async def test_forged_forms_and_bad_names_change_nothing(tmp_path):
    async with console(tmp_path) as c:
        await login(c)
        r = await upload(c, PLAIN, [("a.txt", b"x")], csrf=False)
        assert r.status_code == 403
        r = await upload(c, PLAIN, [("a.txt", b"x")], csrf="forged")
        assert r.status_code == 403
        r = await c.post("/buckets", data={"name": "forged-" + APPID, "region": REGION})
        assert r.status_code == 403
        r = await c.post("/b/%s/encryption" % PLAIN, data={"algorithm": "SM4", "csrf": "x"})
        assert r.status_code == 403
        r = await upload(c, PLAIN, [("x.txt", b"x")], prefix="../")
        assert r.status_code == 400 and "InvalidObjectName" in r.text
        r = await upload(c, PLAIN, [("..", b"x")])
        assert r.status_code == 400
        assert (await c.ks.fill_etags(PLAIN, c.ks.list_objects(PLAIN))).contents == []
        assert [b.name for b in c.ks.list_buckets()] == sorted([PLAIN, ENC])
        with pytest.raises(CosfsError):
            c.ks.get_bucket_encryption(PLAIN)


@trio_test
async def test_names_are_escaped(tmp_path):
    async with console(tmp_path) as c:
        await login(c)
        key = "<script>alert(1)</script>"
        await c.ks.put_object(PLAIN, key, b"x")
        page = await c.get("/b/%s/" % PLAIN)
        assert "<script>alert(1)" not in page.text
        assert "&lt;script&gt;alert(1)&lt;" in page.text


@trio_test
async def test_read_only_sees_everything_and_changes_nothing(tmp_path):
    async with console(tmp_path) as c:
        await c.ks.put_object(ENC, "doc.txt", b"secret")
        await login(c, RO_ID, RO_KEY)
        index = await c.get("/")
        assert index.status_code == 200 and "(read-only)" in index.text
        assert "Create a bucket" not in index.text
        page = await c.get("/b/%s/" % ENC)
        assert "doc.txt" in page.text and "Upload" not in page.text and "Delete" not in page.text
        assert (await c.get("/b/%s/download?key=doc.txt" % ENC)).content == b"secret"
        enc = await c.get("/b/%s/encryption?edit=1" % ENC)
        assert 'id="save"' not in enc.text and 'id="edit"' not in enc.text
        csrf = csrf_of(index)
        for path, data in (("/buckets", {"name": "ro-" + APPID, "region": REGION}),
                           ("/b/%s/delete" % ENC, {"key": "doc.txt"}),
                           ("/b/%s/encryption" % ENC, {"algorithm": ""}),
                           ("/b/%s/delete-bucket" % PLAIN, {})):
            r = await c.post(path, data={"csrf": csrf, **data})
            assert r.status_code == 403, path
        assert (await upload(c, ENC, [("new.txt", b"n")], csrf=csrf)).status_code == 403
        assert (await c.get("/b/%s/delete?key=doc.txt" % ENC)).status_code == 403
        assert (await c.ks.head_object(ENC, "doc.txt")).sse == "AES256"
        assert parse_encryption(c.ks.get_bucket_encryption(ENC)).algorithm == "AES256"
        assert [b.name for b in c.ks.list_buckets()] == sorted([PLAIN, ENC])


@trio_test
async def test_bucket_encryption_page_edit_save_and_unencrypted_filter(tmp_path):
    async with console(tmp_path) as c:
        await login(c)
        await c.ks.put_object(PLAIN, "old.txt", b"before")
        page = await c.get("/b/%s/encryption" % PLAIN)
        assert 'id="current-encryption">none<' in page.text and 'id="edit"' in page.text
        assert "keep their encryption" in page.text and "filter=plain" in page.text
        form = await c.get("/b/%s/encryption?edit=1" % PLAIN)
        assert 'value="AES256"' in form.text and 'value="SM4"' in form.text
        r = await c.post("/b/%s/encryption" % PLAIN, data={"csrf": csrf_of(form),
                                                           "algorithm": "AES256"})
        assert r.status_code == 303
        page = await c.get(r.headers["location"])
        assert 'id="current-encryption">AES256<' in page.text and "Saved." in page.text
        await upload(c, PLAIN, [("new.txt", b"after")])
        assert (await c.ks.head_object(PLAIN, "new.txt")).sse == "AES256"
        assert (await c.ks.head_object(PLAIN, "old.txt")).sse is None
        listing = await c.get("/b/%s/?filter=plain" % PLAIN)
        assert 'data-key="old.txt"' in listing.text and 'data-key="new.txt"' not in listing.text
        index = await c.get("/")
        assert re.search(r"%s</a></td><td>%s</td><td>[^<]*</td>\s*<td>AES256</td>\s*<td>2</td>"
                         % (PLAIN, REGION), index.text)
        r = await c.post("/b/%s/encryption" % PLAIN, data={"csrf": csrf_of(form),
                                                           "algorithm": ""})
        assert r.status_code == 303
        with pytest.raises(CosfsError):
            c.ks.get_bucket_encryption(PLAIN)
        conf = await c.get("/b/%s/configuration" % PLAIN)
        assert conf.status_code == 200 and "Versioning" in conf.text


@trio_test
async def test_metrics_after_writes_reads_and_a_tamper(tmp_path):
    async with console(tmp_path) as c:
        before = {(name, tuple(labels.items())): metrics.value(name, **labels)
                  for name, labels in (
            ("cosfs_commits_total", {"algorithm": "AES256"}),
            ("cosfs_commits_total", {"algorithm": "none"}),
            ("cosfs_bytes_sealed_total", {"algorithm": "AES256"}),
            ("cosfs_bytes_opened_total", {"algorithm": "AES256"}),
            ("cosfs_authentication_failures_total", {}),
            ("cosfs_reads_total", {}))}

        def delta(name, **labels):
            return metrics.value(name, **labels) - before[(name, tuple(labels.items()))]

        size = 200 * 1024
        await c.ks.put_object(ENC, "big", b"e" * size)
        await c.ks.put_object(PLAIN, "p", b"p" * 10)
        await c.env.objects.commit_all()
        assert delta("cosfs_commits_total", algorithm="AES256") >= 1
        assert delta("cosfs_commits_total", algorithm="none") == 1
        assert delta("cosfs_bytes_sealed_total", algorithm="AES256") == size
        reader = await c.ks.open_object(ENC, "big")
        async with reader:
            assert await reader.read(0, size) == b"e" * size
        assert delta("cosfs_bytes_opened_total", algorithm="AES256") == size
        assert delta("cosfs_reads_total") >= 1
        # tamper with one stored blob of a second object: its read fails authentication
        await c.ks.put_object(ENC, "victim", b"v" * size)
        inode = c.env.catalog.get_inode(c.env.catalog.lookup(c.env.bucket(ENC), b"victim"))
        blob = c.env.catalog.chunk(inode.id, 1).blob
        path = c.env.region_store._path(blob)
        with open(path, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 1]))
        reader = await c.ks.open_object(ENC, "victim")
        async with reader:
            with pytest.raises(CosfsError):
                await reader.read(0, size)
        assert delta("cosfs_authentication_failures_total") == 1
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(byte)
        metrics.set_state(lambda: {"usage": c.ks.usage(), "garbage_blobs": 3,
                                   "replication": {"queued": 2, "replicated": 1, "failed": 0}})
        try:
            text = (await c.get("/metrics")).text
        finally:
            metrics.set_state(None)
        assert 'cosfs_bucket_objects{algorithm="AES256",bucket="%s"} 2.0' % ENC in text
        assert 'cosfs_bucket_bytes{algorithm="AES256",bucket="%s"} %.1f' % (ENC, 2 * size) in text
        assert 'cosfs_bucket_bytes{algorithm="none",bucket="%s"} 10.0' % PLAIN in text
        assert "cosfs_garbage_blobs 3.0" in text and "cosfs_replication_queued 2.0" in text
        await login(c)
        index = await c.get("/")
        assert re.search(r'id="auth-failures">\d+<', index.text)


@trio_test
async def test_configuration_page_and_versioning_edit(tmp_path):
    async with console(tmp_path) as c:
        await login(c)
        page = await c.get("/b/%s/configuration" % PLAIN)
        assert 'id="versioning-status">never enabled<' in page.text
        for word in ("Versioning", "Replication", "Origin", "Inventory"):
            assert word in page.text
        r = await c.post("/b/%s/versioning" % PLAIN, data={"status": "Enabled"})
        assert r.status_code == 403
        r = await c.post("/b/%s/versioning" % PLAIN, data={"status": "Enabled",
                                                           "csrf": csrf_of(page)})
        assert r.status_code == 303
        assert b"<Status>Enabled</Status>" in c.ks.get_bucket_versioning(PLAIN)
        page = await c.get(r.headers["location"])
        assert 'id="versioning-status">Enabled<' in page.text and "Saved." in page.text
        r = await c.post("/b/%s/versioning" % PLAIN, data={"status": "Off",
                                                           "csrf": csrf_of(page)})
        assert r.status_code == 400 and "MalformedXML" in r.text
        await c.post("/b/%s/versioning" % PLAIN, data={"status": "Suspended",
                                                       "csrf": csrf_of(page)})
        assert b"<Status>Suspended</Status>" in c.ks.get_bucket_versioning(PLAIN)
        await login(c, RO_ID, RO_KEY)
        page = await c.get("/b/%s/configuration" % PLAIN)
        assert 'id="versioning-form"' not in page.text
        r = await c.post("/b/%s/versioning" % PLAIN, data={"status": "Enabled",
                                                           "csrf": csrf_of(page)})
        assert r.status_code == 403
        assert b"<Status>Suspended</Status>" in c.ks.get_bucket_versioning(PLAIN)


def _sample(name, **labels):
    return metrics.value(name, **labels)


@trio_test
async def test_metrics_resolver_sources_and_fuse_latency(tmp_path):
    """Resolver decisions by source (request, bucket default, none and the three service
    writers) and FUSE requests by operation with latency, after a known sequence."""
    import pyfuse3

    from cosfs.catalog import now_ns
    from cosfs.fuse.ops import Operations
    from cosfs.resolver import EncryptionSpec, WriterKind
    from cosfs.services.replication import Replicator

    dest = "backup-" + PLAIN.rsplit("-", 1)[1]
    cases = [("request", "AES256"), ("bucket-default", "AES256"), ("none", "none"),
             ("inventory", "SM4"), ("origin-pull", "AES256"), ("replica", "AES256")]
    fuse_ops = ("getattr", "lookup")
    async with console(tmp_path) as c:
        before = {k: _sample("cosfs_resolver_decisions_total", source=k[0], algorithm=k[1])
                  for k in cases}
        before.update({op: _sample("cosfs_fuse_request_seconds_count", operation=op)
                       for op in fuse_ops})

        def decisions(source, algorithm):
            return _sample("cosfs_resolver_decisions_total", source=source,
                           algorithm=algorithm) - before[(source, algorithm)]

        await c.ks.put_object(PLAIN, "asked", b"a", sse="AES256")           # request
        await c.ks.put_object(PLAIN, "plain", b"p")                         # none
        # the services' write path: inventory reports with their own encryption, and an
        # origin pull into a bucket with a default
        await c.ks.put_object(PLAIN, "inventory/report.csv.gz", b"r",
                              writer=WriterKind.INVENTORY,
                              inventory_encryption=EncryptionSpec("SM4"))
        await c.ks.put_object(ENC, "pulled", b"o", writer=WriterKind.ORIGIN_PULL)
        # replication: a versioned bucket with a rule; its object (bucket default) is
        # copied by the replicator, whose replica keeps the source's encryption
        c.env.fs.create_bucket(dest, region="ap-shanghai")
        for b in (ENC, dest):
            c.ks.put_bucket_versioning(b, b"Enabled")
        c.ks.put_bucket_replication(ENC, (
            "<ReplicationConfiguration><Role>qcs::cam::uin/1:uin/1</Role><Rule><ID>r1</ID>"
            "<Status>Enabled</Status><Prefix>docs/</Prefix><Destination><Bucket>"
            "qcs::cos:ap-shanghai::%s</Bucket></Destination></Rule>"
            "</ReplicationConfiguration>" % dest).encode())
        await c.ks.put_object(ENC, "docs/secret", b"s")                     # bucket default
        rep = Replicator(c.ks, clock=lambda: now_ns() + 10 ** 12)
        c.env.fs.replication = rep
        await rep.run_due()
        assert (await c.ks.head_object(dest, "docs/secret")).sse == "AES256"
        await c.env.objects.commit_all()
        for source, algorithm in cases:
            assert decisions(source, algorithm) == 1, (source, algorithm)

        # FUSE requests through the adapter, a failing one included
        ops = Operations(c.env.fs)
        await ops.getattr(pyfuse3.ROOT_INODE)
        await ops.getattr(pyfuse3.ROOT_INODE)
        with pytest.raises(pyfuse3.FUSEError):
            await ops.getattr(10 ** 9)
        await ops.lookup(pyfuse3.ROOT_INODE, PLAIN.encode())
        assert _sample("cosfs_fuse_request_seconds_count", operation="getattr") \
            - before["getattr"] == 3
        assert _sample("cosfs_fuse_request_seconds_count", operation="lookup") \
            - before["lookup"] == 1
        assert _sample("cosfs_fuse_request_seconds_sum", operation="getattr") > 0
        assert _sample("cosfs_fuse_request_seconds_bucket", operation="getattr", le="+Inf") \
            == _sample("cosfs_fuse_request_seconds_count", operation="getattr")

        text = (await c.get("/metrics")).text
        assert 'cosfs_resolver_decisions_total{algorithm="AES256",source="replica"}' in text
        assert 'cosfs_fuse_request_seconds_bucket{le="0.001",operation="getattr"}' in text
        shown = metrics.summarize(text)
        assert re.search(r"cosfs_fuse_request_seconds_count\{operation=getattr\} +\d+", shown)
        assert re.search(r"cosfs_fuse_request_seconds_mean\{operation=getattr\} +[0-9.e-]+",
                         shown)
        assert "cosfs_fuse_request_seconds_bucket" not in shown
        assert re.search(r"cosfs_resolver_decisions_total\{algorithm=SM4,source=inventory\} +"
                         r"\d+", shown)


def _replication_doc(dest):
    return ("<ReplicationConfiguration><Role>qcs::cam::uin/1:uin/1</Role><Rule><ID>r1</ID>"
            "<Status>Enabled</Status><Prefix></Prefix><Destination><Bucket>"
            "qcs::cos:ap-shanghai::%s</Bucket></Destination></Rule>"
            "</ReplicationConfiguration>" % dest)


ORIGIN_DOC = ("<OriginConfiguration><OriginRule><RulePriority>1</RulePriority>"
              "<OriginType>Mirror</OriginType><OriginInfo><HostInfo><HostName>o.example.com"
              "</HostName></HostInfo></OriginInfo></OriginRule></OriginConfiguration>")


def _inventory_doc(inv_id, dest):
    from cosfs import inventoryconf as ic
    return ("<InventoryConfiguration><Id>%s</Id><IsEnabled>true</IsEnabled><Destination>"
            "<COSBucketDestination><Format>CSV</Format><Bucket>qcs::cos:%s::%s</Bucket>"
            "<Encryption><SSE-COS/></Encryption></COSBucketDestination></Destination>"
            "<Schedule><Frequency>Daily</Frequency></Schedule>"
            "<IncludedObjectVersions>Current</IncludedObjectVersions><OptionalFields>%s"
            "</OptionalFields></InventoryConfiguration>"
            % (inv_id, REGION, dest, "".join("<Field>%s</Field>" % f for f in ic.FIELDS)))


@trio_test
async def test_replication_origin_and_inventory_pages(tmp_path):
    """Show, edit (validated by the core, errors on the page), delete and status of the
    replication, origin and inventory documents; CSRF; read-only sees and cannot change."""
    from cosfs.inventoryconf import parse_inventory
    from cosfs.services.inventory import InventoryService

    far = "far-" + APPID
    async with console(tmp_path) as c:
        c.env.fs.create_bucket(far, region="ap-shanghai")
        for b in (PLAIN, far):
            c.ks.put_bucket_versioning(b, b"Enabled")
        await login(c)

        # replication: empty, a refused document shown on the page, then saved and shown
        page = await c.get("/b/%s/replication" % PLAIN)
        assert page.status_code == 200 and 'id="document-text">Not configured.<' in page.text
        assert 'id="queued-for-bucket">0<' in page.text and 'id="failed-versions">0<' in page.text
        assert 'id="edit-document"' in page.text and 'id="tab-replication"' in page.text
        form = await c.get("/b/%s/replication?edit=1" % PLAIN)
        assert "&lt;ReplicationConfiguration&gt;" in form.text  # the example, escaped
        assert (await c.post("/b/%s/replication" % PLAIN, data={
            "document": _replication_doc(far), "action": "save"})).status_code == 403
        bad = await c.post("/b/%s/replication" % PLAIN, data={
            "csrf": csrf_of(form), "action": "save",
            "document": "<ReplicationConfiguration><script>alert(1)</script>"})
        assert bad.status_code == 400 and 'id="document-error"' in bad.text
        assert "MalformedXML" in bad.text and "<script>alert(1)" not in bad.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;</textarea>" in bad.text  # kept, escaped
        wrong = await c.post("/b/%s/replication" % PLAIN, data={
            "csrf": csrf_of(form), "action": "save",
            "document": _replication_doc("nope-" + APPID)})
        assert wrong.status_code == 404 and "NoSuchBucket" in wrong.text
        with pytest.raises(CosfsError):
            c.ks.get_bucket_replication(PLAIN)
        r = await c.post("/b/%s/replication" % PLAIN, data={
            "csrf": csrf_of(form), "action": "save", "document": _replication_doc(far)})
        assert r.status_code == 303
        assert far.encode() in c.ks.get_bucket_replication(PLAIN)
        await c.ks.put_object(PLAIN, "queued.txt", b"to be replicated")
        page = await c.get(r.headers["location"])
        assert "Saved." in page.text and "qcs::cos:ap-shanghai::%s" % far in page.text
        assert 'id="queued-for-bucket">1<' in page.text and "not running" in page.text
        assert 'id="delete-document"' in page.text

        # origin: saved, a refused rule explained, deleted
        r = await c.post("/b/%s/origin" % PLAIN, data={"csrf": csrf_of(page), "action": "save",
                                                       "document": ORIGIN_DOC})
        assert r.status_code == 303 and b"o.example.com" in c.ks.get_bucket_origin(PLAIN)
        bad = await c.post("/b/%s/origin" % PLAIN, data={
            "csrf": csrf_of(page), "action": "save",
            "document": ORIGIN_DOC.replace("Mirror", "Proxy")})
        assert bad.status_code == 400 and 'id="document-error"' in bad.text
        assert b"Mirror" in c.ks.get_bucket_origin(PLAIN)

        # inventory: saved under its id, delivered, its last delivery shown
        inv = await c.get("/b/%s/inventory" % PLAIN)
        assert 'id="no-inventory"' in inv.text and 'id="inventory-form"' in inv.text
        bad = await c.post("/b/%s/inventory" % PLAIN, data={
            "csrf": csrf_of(inv), "action": "save", "id": "other",
            "document": _inventory_doc("daily", PLAIN)})
        assert bad.status_code == 400 and 'id="document-error"' in bad.text
        assert 'value="other"' in bad.text
        r = await c.post("/b/%s/inventory" % PLAIN, data={
            "csrf": csrf_of(inv), "action": "save", "id": "daily",
            "document": _inventory_doc("daily", ENC)})
        assert r.status_code == 303
        inv = await c.get(r.headers["location"])
        assert 'data-id="daily"' in inv.text and "never delivered" in inv.text
        doc = c.ks.get_bucket_inventory(PLAIN, "daily")
        await InventoryService(c.ks).deliver(c.env.bucket(PLAIN), parse_inventory(doc),
                                             period="20250101")
        inv = await c.get("/b/%s/inventory" % PLAIN)
        assert re.search(r'class="last-delivery">complete, period 20250101, started '
                         r'[^<]+, finished [^<]+; manifest <code>[^<]*manifest.json</code>',
                         inv.text)
        edit = await c.get("/b/%s/inventory?edit=daily" % PLAIN)
        assert 'value="daily"' in edit.text and "&lt;Id&gt;daily&lt;/Id&gt;" in edit.text

        # read-only: sees every document and status, changes nothing
        await login(c, RO_ID, RO_KEY)
        for kind in ("replication", "origin", "inventory"):
            page = await c.get("/b/%s/%s?edit=1" % (PLAIN, kind))
            assert page.status_code == 200, kind
            for marker in ('id="document-form"', 'id="inventory-form"', 'id="save-document"',
                           'id="edit-document"', 'value="delete"'):
                assert marker not in page.text, (kind, marker)
            r = await c.post("/b/%s/%s" % (PLAIN, kind), data={
                "csrf": csrf_of(page), "action": "delete", "id": "daily"})
            assert r.status_code == 403, kind
        assert "qcs::cos:ap-shanghai::%s" % far in (await c.get(
            "/b/%s/replication" % PLAIN)).text
        assert c.ks.get_bucket_origin(PLAIN) and c.ks.get_bucket_inventory(PLAIN, "daily")

        # deletes, by a full credential
        await login(c)
        page = await c.get("/b/%s/origin" % PLAIN)
        r = await c.post("/b/%s/origin" % PLAIN, data={"csrf": csrf_of(page),
                                                       "action": "delete"})
        assert r.status_code == 303
        assert "Deleted." in (await c.get(r.headers["location"])).text
        with pytest.raises(CosfsError):
            c.ks.get_bucket_origin(PLAIN)
        r = await c.post("/b/%s/inventory" % PLAIN, data={"csrf": csrf_of(page),
                                                          "action": "delete", "id": "daily"})
        assert r.status_code == 303 and "Inventory daily deleted." in (
            await c.get(r.headers["location"])).text
        r = await c.post("/b/%s/replication" % PLAIN, data={"csrf": csrf_of(page),
                                                            "action": "delete"})
        assert r.status_code == 303
        with pytest.raises(CosfsError):
            c.ks.get_bucket_replication(PLAIN)
