"""The ASGI application of the web console: login, pages and actions over the key space.

``ConsoleApp(keyspace, credentials=..., sessions=...)`` is an ASGI 3 callable
run by hypercorn's trio worker on the daemon's trio thread (see
:mod:`cosfs.console.server`). Every page and action goes through one
:class:`cosfs.keyspace.KeySpace` method; the console holds no COS rule of its
own (names, encryption choices and errors come from the core, and a
:class:`cosfs.errors.CosfsError` is shown as its message with its HTTP status,
the one place this front-end translates errors).

Access rules:

* Without a live session every page redirects to ``/login`` (actions answer
  403); ``/static/*`` and ``/login`` are open. ``/metrics`` is answered to
  loopback clients and to logged-in sessions only.
* A session is the ``cosfs_session`` cookie (HttpOnly, SameSite=Strict,
  Path=/, Max-Age of the session timeout). Every POST carries the session's
  CSRF token in the ``csrf`` field (before any file of an upload); a missing
  or wrong token is 403 and changes nothing. The login form is protected the
  same way by a short-lived ``cosfs_login`` cookie compared with its field.
* The credential is looked up again on every request, so a removed
  SecretId ends its sessions; ``Credential.allows(bucket, write)`` decides,
  so a read-only credential sees everything and changes nothing.
* Failed logins wait :data:`LOGIN_DELAY` seconds, are logged with the
  client address, and start the per-client back-off of
  :class:`cosfs.console.sessions.LoginThrottle` (attempts during it: 429).

Bucket documents: ``/b/BUCKET/replication`` and ``/origin`` show, edit (a
textarea of the XML), save and delete one document, ``/inventory`` every
inventory by id; each goes to the key space's PUT/DELETE of that document (the
API's and CLI's parsers and rules). A :class:`cosfs.errors.CosfsError` from
saving is shown on the edit page, with the text as sent and the code's status.

Pages are Jinja2 templates with autoescaping; responses carry a strict
Content-Security-Policy (scripts and styles from ``/static`` only).
"""

import http.cookies
import logging
import mimetypes
import pathlib
import re
import time
import urllib.parse

import jinja2
import trio

from .. import metrics
from ..bucketconf import EncryptionConfig, parse_encryption, render_encryption
from ..errors import CosfsError, http_status
from ..versioning import STATUSES, parse_versioning, render_versioning
from . import forms
from .sessions import LoginThrottle, check_login

log = logging.getLogger(__name__)

HERE = pathlib.Path(__file__).resolve().parent
SESSION_COOKIE = "cosfs_session"
LOGIN_COOKIE = "cosfs_login"
LOGIN_DELAY = 1.0
PAGE_KEYS = 200
ALGORITHM_CHOICES = (("AES256", "SSE-COS (AES256)"), ("SM4", "SSE-COS (SM4)"),
                     ("KMS", "SSE-KMS"), ("", "None"))
UPLOAD_CHOICES = (("", "Bucket default"), ("AES256", "AES256"), ("SM4", "SM4"),
                  ("cos/kms", "KMS"))
HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
     b"img-src 'self'; form-action 'self'; connect-src 'self'; frame-ancestors 'none'; "
     b"base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
CONFIG_KINDS = ("versioning", "replication", "origin", "inventory")
#: starting points shown in an empty editor (the core decides what is valid)
EXAMPLES = {
    "replication": """<ReplicationConfiguration>
  <Role>qcs::cam::uin/100000000001:uin/100000000001</Role>
  <Rule>
    <ID>rule-1</ID>
    <Status>Enabled</Status>
    <Prefix></Prefix>
    <Destination>
      <Bucket>qcs::cos:REGION::DESTINATION-BUCKET</Bucket>
    </Destination>
  </Rule>
</ReplicationConfiguration>
""",
    "origin": """<OriginConfiguration>
  <OriginRule>
    <RulePriority>1</RulePriority>
    <OriginType>Mirror</OriginType>
    <OriginCondition><HTTPStatusCode>404</HTTPStatusCode><Prefix></Prefix></OriginCondition>
    <OriginParameter><Protocol>HTTP</Protocol></OriginParameter>
    <OriginInfo><HostInfo><HostName>origin.example.com</HostName></HostInfo></OriginInfo>
  </OriginRule>
</OriginConfiguration>
""",
    "inventory": """<InventoryConfiguration>
  <Id>ID</Id>
  <IsEnabled>true</IsEnabled>
  <Destination>
    <COSBucketDestination>
      <Format>CSV</Format>
      <Bucket>qcs::cos:REGION::DESTINATION-BUCKET</Bucket>
      <Prefix>inventory</Prefix>
      <Encryption><SSE-COS/></Encryption>
    </COSBucketDestination>
  </Destination>
  <Schedule><Frequency>Daily</Frequency></Schedule>
  <IncludedObjectVersions>Current</IncludedObjectVersions>
  <OptionalFields><Field>Size</Field><Field>ETag</Field></OptionalFields>
</InventoryConfiguration>
""",
}
#: the single documents with a page of their own: title, the core's GET, PUT and DELETE
DOCUMENTS = {
    "replication": ("Cross-Region Replication", "get_bucket_replication",
                    "put_bucket_replication", "delete_bucket_replication"),
    "origin": ("Origin Pull", "get_bucket_origin", "put_bucket_origin",
               "delete_bucket_origin"),
}


class Denied(Exception):
    """The request is refused (403) with this message."""


class Redirect(Exception):
    def __init__(self, location):
        super().__init__(location)
        self.location = location


def _size(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024


def _time(ns):
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))


def _quote(text):
    return urllib.parse.quote(text, safe="")


def _environment():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(size=_size, time=_time, q=_quote)
    return env


class Request:
    """One HTTP request as the handlers need it."""

    def __init__(self, scope, receive):
        self.scope = scope
        self._receive = receive
        self.method = scope["method"]
        self.path = scope["path"]
        self.query = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode(
            "latin-1"), keep_blank_values=True))
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                        for k, v in scope.get("headers", ())}
        cookies = http.cookies.SimpleCookie()
        try:
            cookies.load(self.headers.get("cookie", ""))
        except http.cookies.CookieError:
            pass
        self.cookies = {k: m.value for k, m in cookies.items()}
        client = scope.get("client") or ("", 0)
        self.client = client[0] or "unknown"
        self.session = None
        self.credential = None

    async def chunks(self):
        """The body, piece by piece (an async iterator of bytes)."""
        while True:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                raise forms.FormError("the client went away")
            data = event.get("body", b"")
            if data:
                yield data
            if not event.get("more_body", False):
                return

    async def form(self):
        body = b""
        async for piece in self.chunks():
            body += piece
            if len(body) > forms.MAX_FORM_BYTES:
                raise forms.FormError("the form is too large")
        return forms.parse_urlencoded(body)


def _loopback(addr):
    return addr in ("127.0.0.1", "::1", "localhost") or addr.startswith("127.")


class ConsoleApp:
    """See the module docstring. ``credentials`` has ``lookup(secret_id)``;
    ``sessions`` is a :class:`cosfs.console.sessions.Sessions`; ``regions`` the regions
    a new bucket may be created in; ``before_answer`` as for the API."""

    def __init__(self, keyspace, *, credentials, sessions, regions, throttle=None,
                 before_answer=None, login_delay=LOGIN_DELAY, secure_cookies=False):
        self.ks = keyspace
        self.credentials = credentials
        self.sessions = sessions
        self.regions = tuple(regions)
        self.throttle = throttle or LoginThrottle()
        self.before_answer = before_answer
        self.login_delay = login_delay
        self.secure_cookies = secure_cookies
        self.env = _environment()

    # -- ASGI -------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        req = Request(scope, receive)
        page = "other"
        try:
            page, status, headers, body = await self._route(req)
        except Redirect as r:
            status, headers, body = 303, [(b"location", r.location.encode("utf-8"))], b""
        except Denied as exc:
            status, headers, body = self._page(req, "error.html", 403, title="Not allowed",
                                               message=str(exc))
        except forms.FormError as exc:
            status, headers, body = self._page(req, "error.html", 400, title="Bad request",
                                               message=str(exc))
        except CosfsError as exc:
            status, headers, body = self._page(req, "error.html", http_status(exc),
                                               title=exc.code, message=str(exc))
        except Exception:
            log.exception("console %s %s failed", req.method, req.path)
            status, headers, body = self._page(req, "error.html", 500, title="Internal error",
                                               message="the console met an internal error "
                                                       "(see the daemon log)")
        if req.method == "POST" and self.before_answer is not None:
            await self.before_answer()
        metrics.console_request(page, status)
        if isinstance(body, (bytes, bytearray)):
            await send({"type": "http.response.start", "status": status,
                        "headers": HEADERS + headers + [(b"content-length",
                                                         str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": bytes(body)})
        else:  # a streamed download
            await send({"type": "http.response.start", "status": status,
                        "headers": HEADERS + headers})
            async with body as reader:
                async for piece in reader.pieces():
                    await send({"type": "http.response.body", "body": piece,
                                "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        log.info("console %s %s %s -> %d", req.client, req.method, req.path, status)

    # -- routing ---------------------------------------------------------------
    async def _route(self, req):
        path, method = req.path, req.method
        if path == "/favicon.ico":
            return "static", 404, [(b"content-type", b"text/plain")], b"not found"
        if path.startswith("/static/") and method == "GET":
            return ("static",) + self._static(path[len("/static/"):])
        if path == "/login":
            if method == "POST":
                return ("login",) + await self._login(req)
            return ("login",) + self._login_page(req)
        self._load_session(req)
        if path == "/metrics" and method == "GET":
            if req.session is None and not _loopback(req.client):
                raise Denied("metrics are served to loopback clients and logged-in users")
            try:  # the scan off the trio thread; render reads it
                await self.ks.usage_apart()
            except Exception:  # a scrape must never fail for it: the last counts stay
                log.exception("cannot count the buckets' objects for metrics")
            return "metrics", 200, [(b"content-type", metrics.CONTENT_TYPE.encode())], \
                metrics.render()
        if req.session is None:
            if method == "GET":
                raise Redirect("/login")
            raise Denied("log in first")
        if method == "POST":
            if path == "/logout":
                await self._check_csrf(req, await req.form())
                self.sessions.end(req.session.token)
                log.info("console logout of %s from %s", req.credential.secret_id, req.client)
                raise Redirect("/login")
            if path == "/buckets":
                return ("create_bucket",) + await self._create_bucket(req)
        if path == "/" and method == "GET":
            return ("index",) + await self._index(req)
        parts = path.split("/")
        if len(parts) >= 3 and parts[1] == "b":
            bucket = urllib.parse.unquote(parts[2])
            action = "/".join(parts[3:])
            handler = _BUCKET_ROUTES.get((method, action))
            if handler is not None:
                if not req.credential.allows(bucket, False):
                    raise Denied("this SecretId has no access to bucket %s" % bucket)
                name, fn = handler
                return (name,) + await fn(self, req, bucket)
        return ("other",) + self._page(req, "error.html", 404, title="Not found",
                                       message="there is no such page")

    def _static(self, name):
        folder = HERE / "static"
        target = (folder / name).resolve()
        if target.parent != folder or not target.is_file():
            return 404, [(b"content-type", b"text/plain")], b"not found"
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return 200, [(b"content-type", kind.encode())], target.read_bytes()

    # -- sessions ---------------------------------------------------------------
    def _load_session(self, req):
        session = self.sessions.get(req.cookies.get(SESSION_COOKIE))
        if session is None:
            return
        cred = self.credentials.lookup(session.secret_id)
        if cred is None:  # the SecretId was removed: its sessions end
            self.sessions.end(session.token)
            return
        req.session, req.credential = session, cred

    async def _check_csrf(self, req, fields):
        if not req.session.csrf_ok(fields.get("csrf")):
            log.warning("console %s %s from %s refused: missing or wrong CSRF token",
                        req.method, req.path, req.client)
            raise Denied("the form has expired or was not sent by this console; "
                         "reload the page and try again")

    def _writable(self, req, bucket):
        if not req.credential.allows(bucket, True):
            raise Denied("SecretId %s may not change %s" % (
                req.credential.secret_id, "bucket " + bucket if bucket else "buckets"))

    def _cookie(self, name, value, max_age):
        parts = ["%s=%s" % (name, value), "Path=/", "HttpOnly", "SameSite=Strict",
                 "Max-Age=%d" % max_age]
        if self.secure_cookies:
            parts.append("Secure")
        return (b"set-cookie", "; ".join(parts).encode())

    def _login_page(self, req, status=200, message=None):
        import secrets
        # kept while the browser has one: another tab or a favicon fetch must not
        # invalidate the form already shown
        token = req.cookies.get(LOGIN_COOKIE, "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{32}", token):
            token = secrets.token_urlsafe(24)
        status, headers, body = self._page(req, "login.html", status, title="Log in",
                                           message=message, login_token=token)
        return status, headers + [self._cookie(LOGIN_COOKIE, token, 600)], body

    async def _login(self, req):
        import hmac
        fields = await req.form()
        expected = req.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(expected.encode(),
                                                   fields.get("login_token", "").encode()):
            log.warning("console login from %s refused: missing or wrong form token", req.client)
            return self._login_page(req, 403, "The login form expired; please try again.")
        wait = self.throttle.wait(req.client)
        if wait > 0:
            metrics.login("throttled")
            log.warning("console login from %s refused: %.0f s left after failed logins",
                        req.client, wait)
            return self._login_page(req, 429, "Too many failed logins: wait %d seconds."
                                    % max(1, round(wait)))
        secret_id = fields.get("secret_id", "").strip()
        cred = check_login(self.credentials, secret_id, fields.get("secret_key", ""))
        if cred is None:
            penalty = self.throttle.failed(req.client)
            metrics.login("failed")
            log.warning("console login failed for SecretId %r from %s (next attempt counts "
                        "in %.0f s)", secret_id[:40], req.client, penalty)
            await trio.sleep(self.login_delay)
            return self._login_page(req, 401, "Wrong SecretId or SecretKey.")
        self.throttle.succeeded(req.client)
        metrics.login("ok")
        session = self.sessions.create(cred.secret_id)
        log.info("console login of %s (%s) from %s", cred.secret_id, cred.access, req.client)
        return 303, [(b"location", b"/"),
                     self._cookie(SESSION_COOKIE, session.token, self.sessions.timeout),
                     self._cookie(LOGIN_COOKIE, "", 0)], b""

    # -- rendering -----------------------------------------------------------
    def _page(self, req, template, status=200, **values):
        values.setdefault("message", None)
        values.setdefault("title", "cosfs console")
        html = self.env.get_template(template).render(
            session=req.session, credential=req.credential,
            csrf=req.session.csrf if req.session is not None else "", **values)
        return status, [(b"content-type", b"text/html; charset=utf-8")], html.encode("utf-8")

    def _default_of(self, bucket):
        """(algorithm or None, error text or None) of the bucket's default encryption."""
        try:
            return parse_encryption(self.ks.get_bucket_encryption(bucket)).algorithm, None
        except CosfsError as exc:
            if exc.code == "NoSuchEncryptionConfiguration":
                return None, None
            return None, str(exc)

    # -- pages --------------------------------------------------------------------
    async def _index(self, req):
        usage = await self.ks.usage_apart()
        rows, totals = [], {}
        for info in self.ks.list_buckets():
            if not req.credential.allows(info.name, False):
                continue
            per = usage.get(info.name, {})
            default, problem = self._default_of(info.name)
            rows.append({"name": info.name, "region": info.region, "created": info.created_ns,
                         "encryption": default, "problem": problem,
                         "objects": sum(c for c, _ in per.values()),
                         "bytes": sum(b for _, b in per.values())})
            for alg, (count, nbytes) in per.items():
                old = totals.get(alg or "none", (0, 0))
                totals[alg or "none"] = (old[0] + count, old[1] + nbytes)
        top = max([c for c, _ in totals.values()] or [0]) or 1
        chart = [{"label": alg, "objects": c, "bytes": b, "width": max(1, round(300 * c / top))}
                 for alg, (c, b) in sorted(totals.items())]
        figures = {
            "auth_failures": metrics.value("cosfs_authentication_failures_total"),
            "sealed": {alg: metrics.value("cosfs_bytes_sealed_total", algorithm=alg)
                       for alg in ("AES256", "SM4", "cos/kms", "none")},
            "opened": {alg: metrics.value("cosfs_bytes_opened_total", algorithm=alg)
                       for alg in ("AES256", "SM4", "cos/kms", "none")},
        }
        return self._page(req, "index.html", title="Buckets", buckets=rows, chart=chart,
                          figures=figures, regions=self.regions,
                          choices=ALGORITHM_CHOICES, message=req.query.get("message"))

    async def _create_bucket(self, req):
        fields = await req.form()
        await self._check_csrf(req, fields)
        name = fields.get("name", "").strip()
        self._writable(req, name)
        await self.ks.create_bucket(name, fields.get("region") or self.regions[0])
        algorithm = fields.get("encryption", "")
        if algorithm:
            await self.ks.put_bucket_encryption(
                name, render_encryption(EncryptionConfig(algorithm)))
        log.info("console: %s created bucket %s", req.credential.secret_id, name)
        raise Redirect("/b/%s/" % _quote(name))

    async def _bucket(self, req, bucket):
        info = self.ks.bucket(bucket)
        prefix = req.query.get("prefix", "")
        plain_only = req.query.get("filter") == "plain"
        marker = req.query.get("marker") or None
        # the "not encrypted" filter lists the whole bucket below the prefix, without folders
        listing = self.ks.list_objects(bucket, prefix=prefix, marker=marker,
                                       delimiter=None if plain_only else "/",
                                       max_keys=PAGE_KEYS)
        listing = await self.ks.fill_etags(bucket, listing)
        objects = [o for o in listing.contents
                   if not (plain_only and (o.sse is not None or o.is_dir_marker))
                   and o.key != prefix]
        folders = [] if plain_only else listing.common_prefixes
        crumbs, acc = [], ""
        for part in prefix.split("/")[:-1]:
            acc += part + "/"
            crumbs.append((part, acc))
        default, problem = self._default_of(bucket)
        return self._page(req, "bucket.html", title=bucket, bucket=info, prefix=prefix,
                          crumbs=crumbs, objects=objects, folders=folders,
                          plain_only=plain_only, next_marker=listing.next_marker,
                          default=default, problem=problem, upload_choices=UPLOAD_CHOICES,
                          writable=req.credential.allows(bucket, True), tab="files")

    async def _upload(self, req, bucket):
        boundary = forms.boundary_of(req.headers.get("content-type", ""))
        if boundary is None:
            raise forms.FormError("expected a multipart/form-data upload")
        events = forms.multipart_events(req.chunks(), boundary)
        fields, stored = {}, []
        async for ev in events:
            if ev[0] != "part":
                continue
            name, filename = ev[1], ev[2]
            if filename is None:
                fields[name] = await forms.field_value(events)
                continue
            await self._check_csrf(req, fields)  # before the first byte is stored
            self._writable(req, bucket)
            if not filename:  # an empty file input
                async for _ in forms.file_body(events):
                    pass
                continue
            key = fields.get("prefix", "") + filename
            info = await self.ks.put_object(bucket, key, forms.file_body(events),
                                            sse=fields.get("sse") or None)
            stored.append(key)
            log.info("console: %s uploaded %s/%s (%d bytes, %s)", req.credential.secret_id,
                     bucket, key, info.size, info.sse or "not encrypted")
        if not stored:
            await self._check_csrf(req, fields)
            raise forms.FormError("choose at least one file to upload")
        raise Redirect("/b/%s/?prefix=%s" % (_quote(bucket), _quote(fields.get("prefix", ""))))

    async def _download(self, req, bucket):
        key = req.query.get("key", "")
        reader = await self.ks.open_object(bucket, key)
        name = key.rsplit("/", 1)[-1] or "object"
        headers = [(b"content-type", b"application/octet-stream"),
                   (b"content-length", str(reader.info.size).encode()),
                   (b"content-disposition",
                    ("attachment; filename*=UTF-8''%s" % _quote(name)).encode())]
        return 200, headers, reader

    async def _confirm_delete(self, req, bucket):
        key = req.query.get("key", "")
        self._writable(req, bucket)
        info = await self.ks.head_object(bucket, key)
        return self._page(req, "confirm.html", title="Delete object", bucket=bucket,
                          what="object", key=key, info=info,
                          action="/b/%s/delete" % _quote(bucket),
                          back="/b/%s/?prefix=%s" % (_quote(bucket),
                                                     _quote(key.rpartition("/")[0] + "/"
                                                            if "/" in key else "")))

    async def _delete(self, req, bucket):
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        key = fields.get("key", "")
        await self.ks.delete_object(bucket, key)
        log.info("console: %s deleted %s/%s", req.credential.secret_id, bucket, key)
        folder = key.rpartition("/")[0] + "/" if "/" in key.rstrip("/") else ""
        raise Redirect("/b/%s/?prefix=%s" % (_quote(bucket), _quote(folder)))

    async def _confirm_delete_bucket(self, req, bucket):
        self._writable(req, bucket)
        self.ks.bucket(bucket)
        return self._page(req, "confirm.html", title="Delete bucket", bucket=bucket,
                          what="bucket", key=bucket, info=None,
                          action="/b/%s/delete-bucket" % _quote(bucket),
                          back="/b/%s/" % _quote(bucket))

    async def _delete_bucket(self, req, bucket):
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        await self.ks.delete_bucket(bucket)
        log.info("console: %s deleted bucket %s", req.credential.secret_id, bucket)
        raise Redirect("/?message=" + _quote("Bucket %s deleted." % bucket))

    async def _encryption(self, req, bucket):
        info = self.ks.bucket(bucket)
        default, problem = self._default_of(bucket)
        editing = req.query.get("edit") == "1" and req.credential.allows(bucket, True)
        return self._page(req, "encryption.html", title="Bucket Encryption - " + bucket,
                          bucket=info, default=default, problem=problem, editing=editing,
                          choices=ALGORITHM_CHOICES,
                          writable=req.credential.allows(bucket, True),
                          message=req.query.get("message"), tab="encryption")

    async def _save_encryption(self, req, bucket):
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        algorithm = fields.get("algorithm", "")
        if algorithm:
            await self.ks.put_bucket_encryption(
                bucket, render_encryption(EncryptionConfig(algorithm)))
        else:
            await self.ks.delete_bucket_encryption(bucket)
        log.info("console: %s set the default encryption of %s to %s",
                 req.credential.secret_id, bucket, algorithm or "none")
        raise Redirect("/b/%s/encryption?message=%s" % (_quote(bucket), _quote("Saved.")))

    async def _configuration(self, req, bucket):
        info = self.ks.bucket(bucket)
        docs = []
        getters = {"versioning": lambda: self.ks.get_bucket_versioning(bucket),
                   "replication": lambda: self.ks.get_bucket_replication(bucket),
                   "origin": lambda: self.ks.get_bucket_origin(bucket),
                   "inventory": lambda: self.ks.list_bucket_inventory(bucket)}
        for kind in CONFIG_KINDS:
            try:
                text = getters[kind]().decode("utf-8", "replace")
            except CosfsError as exc:
                text = None if exc.code.startswith("NoSuch") else str(exc)
            docs.append((kind, text))
        replication = getattr(self.ks.fs, "replication", None)
        try:
            versioning = parse_versioning(self.ks.get_bucket_versioning(bucket))
        except CosfsError:  # never enabled: the empty document
            versioning = None
        return self._page(req, "configuration.html", title="Configuration - " + bucket,
                          bucket=info, docs=docs, tab="configuration",
                          versioning=versioning, statuses=STATUSES,
                          writable=req.credential.allows(bucket, True),
                          message=req.query.get("message"),
                          replication=replication.status() if replication else None)

    async def _save_versioning(self, req, bucket):
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        status = fields.get("status", "")
        self.ks.put_bucket_versioning(bucket, render_versioning(status))
        log.info("console: %s set the versioning of %s to %s", req.credential.secret_id,
                 bucket, status)
        raise Redirect("/b/%s/configuration?message=%s" % (_quote(bucket), _quote("Saved.")))

    # -- replication, origin and inventory documents ---------------------------------------
    async def _call(self, name, *args):
        """A key space method that may be sync or async (the document setters are both)."""
        result = getattr(self.ks, name)(*args)
        if hasattr(result, "__await__"):
            result = await result
        return result

    def _stored(self, getter, *args):
        """(document text or None when there is none, error text or None)."""
        try:
            return getattr(self.ks, getter)(*args).decode("utf-8", "replace"), None
        except CosfsError as exc:
            if exc.code.startswith("NoSuch") or exc.code.endswith("NotFoundError"):
                return None, None
            return None, "%s: %s" % (exc.code, exc)

    def _document_page(self, req, bucket, kind, *, status=200, text=None, error=None):
        info = self.ks.bucket(bucket)
        title, getter = DOCUMENTS[kind][:2]
        doc, problem = self._stored(getter, bucket)
        writable = req.credential.allows(bucket, True)
        editing = writable and (req.query.get("edit") == "1" or error is not None)
        return self._page(req, "document.html", status, title="%s - %s" % (title, bucket),
                          heading=title, bucket=info, kind=kind, doc=doc, problem=problem,
                          editing=editing, writable=writable, error=error,
                          text=text if text is not None else (doc or EXAMPLES[kind]),
                          message=req.query.get("message"), tab=kind,
                          replication=(self.ks.replication_status(bucket)
                                       if kind == "replication" else None))

    async def _replication(self, req, bucket):
        return self._document_page(req, bucket, "replication")

    async def _origin(self, req, bucket):
        return self._document_page(req, bucket, "origin")

    async def _save_document(self, req, bucket, kind):
        """PUT (``action=save``, the ``document`` field) or DELETE (``action=delete``) of a
        bucket document through the core; a refusal is shown on the edit page with the
        text as sent."""
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        _, _, setter, deleter = DOCUMENTS[kind]
        text = fields.get("document", "")
        deleting = fields.get("action") == "delete"
        try:
            if deleting:
                await self._call(deleter, bucket)
            else:
                await self._call(setter, bucket, text.encode("utf-8"))
        except CosfsError as exc:
            log.info("console: %s: %s document of %s refused: %s (%s)",
                     req.credential.secret_id, kind, bucket, exc, exc.code)
            return self._document_page(req, bucket, kind, status=http_status(exc), text=text,
                                       error="%s: %s" % (exc.code, exc))
        log.info("console: %s %s the %s document of %s", req.credential.secret_id,
                 "deleted" if deleting else "saved", kind, bucket)
        raise Redirect("/b/%s/%s?message=%s" % (_quote(bucket), kind,
                                                 _quote("Deleted." if deleting else "Saved.")))

    async def _save_replication(self, req, bucket):
        return await self._save_document(req, bucket, "replication")

    async def _save_origin(self, req, bucket):
        return await self._save_document(req, bucket, "origin")

    def _inventory_page(self, req, bucket, *, status=200, edit_id=None, text=None,
                        error=None):
        info = self.ks.bucket(bucket)
        writable = req.credential.allows(bucket, True)
        configs = [{"id": inv_id, "text": doc.decode("utf-8", "replace"),
                    "status": self.ks.inventory_status(bucket, inv_id)}
                   for inv_id, doc in self.ks.bucket_inventories(bucket)]
        if edit_id is None:
            edit_id = req.query.get("edit", "")
        if text is None:
            text = next((c["text"] for c in configs if c["id"] == edit_id), EXAMPLES["inventory"])
        return self._page(req, "inventory.html", status, title="Inventory - " + bucket,
                          bucket=info, configs=configs, writable=writable, edit_id=edit_id,
                          text=text, error=error, message=req.query.get("message"),
                          tab="inventory")

    async def _inventory(self, req, bucket):
        return self._inventory_page(req, bucket)

    async def _save_inventory(self, req, bucket):
        """PUT (``action=save``: ``id`` and ``document``) or DELETE (``action=delete``:
        ``id``) of one inventory configuration; a refusal is shown on the page."""
        fields = await req.form()
        await self._check_csrf(req, fields)
        self._writable(req, bucket)
        inv_id, text = fields.get("id", "").strip(), fields.get("document", "")
        deleting = fields.get("action") == "delete"
        try:
            if deleting:
                await self.ks.delete_bucket_inventory(bucket, inv_id)
            else:
                await self.ks.put_bucket_inventory(bucket, inv_id, text.encode("utf-8"))
        except CosfsError as exc:
            log.info("console: %s: inventory %r of %s refused: %s (%s)",
                     req.credential.secret_id, inv_id[:64], bucket, exc, exc.code)
            return self._inventory_page(req, bucket, status=http_status(exc), edit_id=inv_id,
                                        text=text, error="%s: %s" % (exc.code, exc))
        log.info("console: %s %s inventory %s of %s", req.credential.secret_id,
                 "deleted" if deleting else "saved", inv_id, bucket)
        raise Redirect("/b/%s/inventory?message=%s" % (
            _quote(bucket), _quote("Inventory %s %s." % (inv_id, "deleted" if deleting
                                                           else "saved"))))


_BUCKET_ROUTES = {
    ("GET", ""): ("bucket", ConsoleApp._bucket),
    ("POST", "upload"): ("upload", ConsoleApp._upload),
    ("GET", "download"): ("download", ConsoleApp._download),
    ("GET", "delete"): ("confirm_delete", ConsoleApp._confirm_delete),
    ("POST", "delete"): ("delete", ConsoleApp._delete),
    ("GET", "delete-bucket"): ("confirm_delete_bucket", ConsoleApp._confirm_delete_bucket),
    ("POST", "delete-bucket"): ("delete_bucket", ConsoleApp._delete_bucket),
    ("GET", "encryption"): ("encryption", ConsoleApp._encryption),
    ("POST", "encryption"): ("save_encryption", ConsoleApp._save_encryption),
    ("GET", "configuration"): ("configuration", ConsoleApp._configuration),
    ("POST", "versioning"): ("save_versioning", ConsoleApp._save_versioning),
    ("GET", "replication"): ("replication", ConsoleApp._replication),
    ("POST", "replication"): ("save_replication", ConsoleApp._save_replication),
    ("GET", "origin"): ("origin", ConsoleApp._origin),
    ("POST", "origin"): ("save_origin", ConsoleApp._save_origin),
    ("GET", "inventory"): ("inventory", ConsoleApp._inventory),
    ("POST", "inventory"): ("save_inventory", ConsoleApp._save_inventory),
}
