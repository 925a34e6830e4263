"""The ASGI application of the COS XML API: routing, authentication, thin handlers.

``ApiApp(keyspace, authenticate=..., appid=..., region=..., endpoints=...)``
is an ASGI 3 callable that hypercorn's trio worker runs on the daemon's trio
thread. Each request:

1. gets a request id (``x-cos-request-id`` on every response, in every log
   line about it and in error documents);
2. is addressed: virtual-hosted when ``Host`` is ``<bucket>.<endpoint>`` for
   one of the configured endpoint suffixes (the region is then taken from a
   ``cos.<region>.myqcloud.com`` suffix), path-style (``/<bucket>/<key>``)
   otherwise;
3. is authenticated by the ``authenticate`` callable the composition root
   passes in (signature checks live in :mod:`cosfs.api.auth`), which returns
   a credential or raises; the credential is then checked against the bucket
   and whether the request writes (``AccessDenied``);
4. is dispatched on method, bucket, key and subresource to one handler that
   converts headers and calls one :class:`cosfs.keyspace.KeySpace` method.

A request head (request line and headers) over ``max_header_bytes`` is
refused first with 431 ``RequestHeaderSectionTooLarge``: the HTTP parser
enforces its limit only on a head that arrives in pieces. Before any answer
starts, ``before_answer()`` is awaited when the composition root gives one
(the mount's kernel entry invalidations), so a client that got its answer
sees the change on the mount. Standard response headers go out as COS spells
them (``Content-Length``, ``ETag``), ``x-cos-*``/``x-amz-*`` in lower case.

Every COS rule (names, resolver, bucket configuration, ETags, error codes
and their HTTP statuses) lives in the core: handlers only translate. A
:class:`cosfs.errors.CosfsError` becomes an XML error document here, the one
place this front-end translates errors; anything unexpected is logged with a
traceback and answered 500 ``InternalError``.

Bodies stream both ways in constant memory: request bodies reach the core as
an async iterator of ``http.request`` chunks (each wait bounded by
``idle_timeout``, a SigV4 body hash checked before the last chunk is
handed on, so a mismatch stores nothing), responses leave in pieces of
:data:`SEND_PIECE` bytes with ``more_body``.
"""

import hashlib
import inspect
import itertools
import logging
import os
import re
import time
import urllib.parse

import trio

from .. import metrics
from ..errors import CosfsError, InvalidArgument, MalformedXML, http_status
from ..inventoryconf import render_post_result
from . import auth
from . import headers as hdr
from . import xmlout

log = logging.getLogger(__name__)

SEND_PIECE = 1 << 20
#: how much of an unread request body is read and dropped before an error answer, so the
#: client sees the answer rather than a reset connection
DRAIN_LIMIT = 1 << 20
MAX_KEYS = 1000
UNSIGNED = "UNSIGNED-PAYLOAD"
_COS_ENDPOINT = re.compile(r"cos\.([a-z]{2}-[a-z]+(?:-[0-9]+)?(?:-fsi)?)\.myqcloud\.com\Z")
#: subresources cosfs does not implement: answered NotImplemented rather than misread
_UNSUPPORTED = ("acl", "cors", "lifecycle", "policy", "tagging", "website",
                "logging", "referer", "domain",
                "restore", "select", "append", "object-lock", "retention",
                "legal-hold", "intelligenttiering", "accelerate", "notification",
                "ownershipControls", "publicAccessBlock", "requestPayment", "torrent",
                "attributes")

# HTTP-level conditions the front-end itself raises; every other code's status is the core's
_FRONT_END_STATUS = {
    "MethodNotAllowed": 405, "NotImplemented": 501, "RequestTimeout": 400,
    "PreconditionFailed": 412, "XAmzContentSHA256Mismatch": 400, "IncompleteBody": 400,
    "EntityTooLarge": 400, "RequestHeaderSectionTooLarge": 431,
}


def error_status(exc):
    """The HTTP status of an error: its class's own, else the front-end's for an HTTP
    condition, else the core's table (:func:`cosfs.errors.http_status`)."""
    own = getattr(type(exc), "status", None)
    if isinstance(own, int):
        return own
    if exc.code in _FRONT_END_STATUS:
        return _FRONT_END_STATUS[exc.code]
    return http_status(exc)


class ClientGone(Exception):
    """The client closed the connection before its request body was complete."""


_ids = itertools.count(1)
_boot = os.urandom(4).hex()


def new_request_id():
    return "%s%08x%06x" % (_boot, int(time.time()), next(_ids) & 0xFFFFFF)


class Request:
    """One request as the handlers and the authenticator see it.

    ``headers`` maps lower-case names to values (repeated headers joined with
    ``,``); ``params`` maps query names to their first value (``""`` for a bare
    ``?encryption``); ``query`` keeps every pair in order; ``path`` is the
    percent-decoded path. ``bucket``/``key`` come from the addressing rule.
    """

    def __init__(self, scope, receive, request_id, idle_timeout):
        self.scope = scope
        self._receive = receive
        self.request_id = request_id
        self.idle_timeout = idle_timeout
        self.method = scope["method"].upper()
        self.raw_path = scope.get("raw_path") or scope["path"].encode()
        self.query_string = scope.get("query_string", b"")
        self.query = urllib.parse.parse_qsl(self.query_string.decode("latin-1"),
                                            keep_blank_values=True, encoding="utf-8")
        self.params = {}
        for name, value in self.query:
            self.params.setdefault(name, value)
        self.headers = {}
        for name, value in scope["headers"]:
            name = name.decode("latin-1").lower()
            value = value.decode("latin-1")
            self.headers[name] = self.headers[name] + "," + value if name in self.headers else value
        self.path = urllib.parse.unquote(self.raw_path.split(b"?", 1)[0].decode("latin-1"),
                                         encoding="utf-8", errors="surrogateescape")
        self.host = self.headers.get("host", "").rsplit(":", 1)[0] \
            if not self.headers.get("host", "").startswith("[") else self.headers["host"]
        self.host = self.host.lower().rstrip(".")
        self.bucket = None
        self.key = ""
        self.region = None
        self.virtual = False
        #: what the authenticator returned, and the credential in it
        self.auth = None
        self.credential = None
        self.credential_id = "-"
        self.body_started = False
        self.body_done = False

    @property
    def sigv4(self):
        return self.headers.get("authorization", "").startswith("AWS4-") or \
            "X-Amz-Algorithm" in self.params

    @property
    def resource(self):
        return self.path

    async def receive_chunk(self):
        """The next piece of the request body (b"" once complete). Raises ClientGone, or
        ``RequestTimeout`` when the client sends nothing for ``idle_timeout`` seconds."""
        if self.body_done:
            return b""
        self.body_started = True
        with trio.move_on_after(self.idle_timeout) as scope:
            message = await self._receive()
        if scope.cancelled_caught:
            raise CosfsError("no body data arrived for %gs" % self.idle_timeout,
                             code="RequestTimeout")
        if message["type"] == "http.disconnect":
            raise ClientGone()
        if not message.get("more_body", False):
            self.body_done = True
        return message.get("body", b"")

    async def raw_body(self):
        """Async iterator over the request body as sent."""
        while True:
            chunk = await self.receive_chunk()
            if chunk:
                yield chunk
            if self.body_done:
                return

    async def read_all(self, limit):
        """The whole (small, XML) body; over ``limit`` bytes is ``MalformedXML``."""
        parts, size = [], 0
        async for chunk in self.body():
            size += len(chunk)
            if size > limit:
                raise MalformedXML("the request body is larger than %d bytes" % limit)
            parts.append(chunk)
        return b"".join(parts)

    def body(self):
        """The request body as the object's content: the authentication result's decoder
        removes aws-chunked framing and checks payload hashes and checksums; its
        ``finish`` runs before the iterator ends, so a body that fails a check raises
        before the core could commit anything."""
        make = getattr(self.auth, "body_decoder", None)
        decoder = make() if make is not None else _Sha256Check(self)
        return _decoded(self.raw_body(), decoder)

    async def drain(self):
        """Read and drop what is left of a small body (before an early error answer)."""
        if self.body_done:
            return
        try:
            length = int(self.headers.get("content-length", "0") or 0)
        except ValueError:
            return
        if length > DRAIN_LIMIT:
            return
        seen = 0
        while not self.body_done and seen <= DRAIN_LIMIT:
            seen += len(await self.receive_chunk())


async def _decoded(source, decoder):
    async for chunk in source:
        data = decoder.feed(chunk)
        if data:
            yield data
    decoder.finish()


class _Sha256Check:
    """The SigV4 payload hash check for an authenticator that brings no body decoder."""

    def __init__(self, req):
        declared = req.headers.get("x-amz-content-sha256")
        if declared and (declared.startswith("STREAMING-")
                         or "aws-chunked" in req.headers.get("content-encoding", "").lower()):
            raise CosfsError("aws-chunked uploads are not available", code="NotImplemented")
        self.expected = declared.lower() if declared and declared != UNSIGNED and req.sigv4 \
            else None
        self.hash = hashlib.sha256()

    def feed(self, data):
        if self.expected:
            self.hash.update(data)
        return data

    def finish(self):
        if self.expected and self.hash.hexdigest() != self.expected:
            raise CosfsError("the body's SHA-256 does not match x-amz-content-sha256",
                             code="XAmzContentSHA256Mismatch")


class Response:
    """Tracks what was sent, so an error after the start line is logged, not sent twice."""

    def __init__(self, send, request, before_answer=None):
        self._send = send
        self._before_answer = before_answer
        self.request = request
        self.status = None
        self.code = None
        self.sent_bytes = 0

    @property
    def started(self):
        return self.status is not None

    async def start(self, status, headers=(), *, length=None):
        req = self.request
        out = [("x-cos-request-id", req.request_id), ("server", "cosfs")]
        if req.sigv4:
            out.append(("x-amz-request-id", req.request_id))
        out += list(headers)
        if length is not None:
            out.append(("content-length", str(length)))
        self.status = status
        if self._before_answer is not None:
            # the mount must show what this request changed before the client hears of it
            await self._before_answer()
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [(_wire_name(k), _header_value(v)) for k, v in out]})

    async def body(self, data, more=False):
        self.sent_bytes += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(self, status, body=b"", headers=(), content_type="application/xml"):
        extra = [("content-type", content_type)] if body else []
        await self.start(status, extra + list(headers), length=len(body))
        await self.body(body)


#: standard response headers in the case COS sends them; cos-python-sdk-v5 returns the
#: headers as a plain dict, so callers index them by this spelling
_WIRE_NAMES = {"etag": b"ETag", "content-md5": b"Content-MD5"}


def _wire_name(name):
    if name.startswith("x-"):
        return name.encode("latin-1")
    known = _WIRE_NAMES.get(name)
    if known is not None:
        return known
    return "-".join(part.capitalize() for part in name.split("-")).encode("latin-1")


def _header_value(value):
    text = str(value)
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        # user metadata is UTF-8: sent percent-encoded, as COS does for non-ASCII values
        return urllib.parse.quote(text, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii")


class ApiApp:
    """The ASGI application. ``authenticate(request)`` (sync or async) returns the
    authentication result or raises a CosfsError; the result is the credential itself or
    carries it as ``.credential``, and may bring ``body_decoder()`` (feed/finish) for
    the request body. ``allows(credential, bucket, write)`` decides access (default: the
    credential's ``allows`` method). ``max_header_bytes`` limits the request head;
    ``before_answer`` (async, no arguments) is awaited before every answer starts."""

    def __init__(self, keyspace, *, authenticate, appid, region, endpoints=(),
                 max_xml_bytes=2 << 20, idle_timeout=30.0, allows=None,
                 max_header_bytes=None, before_answer=None):
        self.ks = keyspace
        self.authenticate = authenticate
        self.appid = appid
        self.region = region
        self.endpoints = tuple(sorted({e.lower() for e in endpoints}, key=len, reverse=True))
        self.max_xml_bytes = max_xml_bytes
        self.idle_timeout = idle_timeout
        self.allows = allows or _default_allows
        self.max_header_bytes = max_header_bytes
        self.before_answer = before_answer

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        req = Request(scope, receive, new_request_id(), self.idle_timeout)
        resp = Response(send, req, self.before_answer)
        started = time.monotonic()
        try:
            self._check_header_size(scope)
            await self._dispatch(req, resp)
        except CosfsError as exc:
            await self._fail(req, resp, exc.code, str(exc), error_status(exc))
        except hdr.NotModified:
            await resp.whole(304)
        except ClientGone:
            resp.code = "ClientGone"
            log.info("%s %s %s: the client went away before its body was complete",
                     req.request_id, req.method, req.path)
        except Exception:
            log.exception("%s %s %s failed", req.request_id, req.method, req.path)
            await self._fail(req, resp, "InternalError", "we encountered an internal error",
                             500)
        log.info("%s %s %s %s -> %s%s %d bytes %.1f ms", req.request_id,
                 req.credential_id, req.method,
                 req.path, resp.status, " " + resp.code if resp.code else "", resp.sent_bytes,
                 (time.monotonic() - started) * 1000)
        metrics.api_request(getattr(req, "operation", "none"), resp.status)

    async def _fail(self, req, resp, code, message, status):
        resp.code = code
        if resp.started:
            log.warning("%s %s %s failed after the answer started: %s: %s", req.request_id,
                        req.method, req.path, code, message)
            return
        if status >= 500:
            log.error("%s %s %s: %s: %s", req.request_id, req.method, req.path, code, message)
        try:
            if req.body_started or req.method in ("PUT", "POST"):
                await req.drain()
        except (CosfsError, ClientGone):
            pass
        body = b"" if req.method == "HEAD" else xmlout.error(code, message, req.resource,
                                                             req.request_id)
        await resp.whole(status, body)

    def _check_header_size(self, scope):
        """The HTTP parser limits only a request head that arrives in pieces: a whole
        head read at once is measured here, as sent (request line and header lines)."""
        if self.max_header_bytes is None:
            return
        size = len(scope["method"]) + len(scope.get("raw_path") or b"") + 12
        if scope.get("query_string"):
            size += 1 + len(scope["query_string"])
        size += sum(len(n) + len(v) + 4 for n, v in scope["headers"])
        if size > self.max_header_bytes:
            raise CosfsError("the request line and headers take %d bytes, more than %d"
                             % (size, self.max_header_bytes),
                             code="RequestHeaderSectionTooLarge")

    # -- addressing and access -------------------------------------------------------
    def _address(self, req):
        host = req.host
        for suffix in self.endpoints:
            if host.endswith("." + suffix):
                req.bucket = host[:-len(suffix) - 1]
                req.key = req.path[1:]
                req.virtual = True
                m = _COS_ENDPOINT.match(suffix)
                req.region = m.group(1) if m else None
                return
        m = _COS_ENDPOINT.match(host)
        req.region = m.group(1) if m else None
        path = req.path[1:]
        if path:
            req.bucket, _, req.key = path.partition("/")

    async def _authorize(self, req, bucket, write):
        if req.credential is None:
            result = self.authenticate(req)
            if inspect.isawaitable(result):
                result = await result
            cred = getattr(result, "credential", result)
            if cred is None:
                raise _denied("anonymous requests are not allowed")
            req.auth, req.credential = result, cred
            req.credential_id = getattr(cred, "secret_id", None) or "-"
        if bucket is not None and not self.allows(req.credential, bucket, write):
            raise _denied("access to %s is not allowed with this credential%s"
                               % (bucket, " (read-only)" if write else ""))

    # -- dispatch ---------------------------------------------------------------------
    async def _dispatch(self, req, resp):
        self._address(req)
        p, m = req.params, req.method
        write = auth.is_write(m)  # everything but GET, HEAD and OPTIONS
        await self._authorize(req, req.bucket, write)
        unsupported = [name for name in _UNSUPPORTED if name in p]
        if unsupported:
            raise CosfsError("the %s subresource is not supported" % unsupported[0],
                             code="NotImplemented")
        if req.bucket is None:
            if m == "GET":
                req.operation = "list_buckets"
                return await self.list_buckets(req, resp)
            raise CosfsError("only GET is allowed on the service", code="MethodNotAllowed")
        if not req.key:
            handler = _BUCKET_ROUTES.get((m, _bucket_sub(p)))
        else:
            handler = _OBJECT_ROUTES.get((m, _object_sub(p, req.headers)))
        if handler is None:
            raise CosfsError("%s is not allowed on this resource" % m, code="MethodNotAllowed")
        req.operation = handler.__name__
        return await handler(self, req, resp)

    # -- service and buckets -----------------------------------------------------------
    async def list_buckets(self, req, resp):
        rows = []
        for b in self.ks.list_buckets():
            if self.allows(req.credential, b.name, False):
                rows.append((b.name, b.region, getattr(b, "created_ns", 0) or 0))
        await resp.whole(200, xmlout.list_buckets(rows, self.appid))

    async def put_bucket(self, req, resp):
        region = req.region
        body = await req.read_all(self.max_xml_bytes)
        if body.strip():
            region = _location_constraint(body, self.max_xml_bytes) or region
        await self.ks.create_bucket(req.bucket, region or self.region)
        await resp.whole(200, headers=[("location", "/" + req.bucket)])

    async def head_bucket(self, req, resp):
        b = self.ks.bucket(req.bucket)
        await resp.whole(200, headers=[("x-cos-bucket-region", b.region),
                                       ("x-amz-bucket-region", b.region)])

    async def delete_bucket(self, req, resp):
        await self.ks.delete_bucket(req.bucket)
        await resp.whole(204)

    async def get_location(self, req, resp):
        await resp.whole(200, xmlout.location(self.ks.bucket(req.bucket).region))

    async def get_encryption(self, req, resp):
        await resp.whole(200, self.ks.get_bucket_encryption(req.bucket))

    async def put_encryption(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        await self.ks.put_bucket_encryption(req.bucket, body)
        await resp.whole(200)

    async def delete_encryption(self, req, resp):
        await self.ks.delete_bucket_encryption(req.bucket)
        await resp.whole(204)

    async def get_versioning(self, req, resp):
        await resp.whole(200, self.ks.get_bucket_versioning(req.bucket))

    async def put_versioning(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        self.ks.put_bucket_versioning(req.bucket, body)
        await resp.whole(200)

    async def get_replication(self, req, resp):
        await resp.whole(200, self.ks.get_bucket_replication(req.bucket))

    async def put_replication(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        self.ks.put_bucket_replication(req.bucket, body)
        await resp.whole(200)

    async def delete_replication(self, req, resp):
        self.ks.delete_bucket_replication(req.bucket)
        await resp.whole(204)

    async def list_versions(self, req, resp):
        """GET ?versions: every version and delete marker (GET Bucket Object versions)."""
        p = req.params
        max_keys = _int_param(p, "max-keys", MAX_KEYS, 0, None)
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter") or None
        key_marker, vid_marker = p.get("key-marker") or None, p.get("version-id-marker") or None
        listing = self.ks.list_object_versions(
            req.bucket, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=vid_marker, max_keys=min(max_keys, MAX_KEYS))
        listing = await self.ks.fill_version_etags(req.bucket, listing)
        await resp.whole(200, xmlout.list_versions(
            req.bucket, listing, prefix=prefix, delimiter=delimiter, key_marker=key_marker,
            version_id_marker=vid_marker, max_keys=max_keys, url=_encoding_type(p),
            appid=self.appid))

    async def get_origin(self, req, resp):
        await resp.whole(200, self.ks.get_bucket_origin(req.bucket))

    async def put_origin(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        await self.ks.put_bucket_origin(req.bucket, body)
        await resp.whole(200)

    async def delete_origin(self, req, resp):
        await self.ks.delete_bucket_origin(req.bucket)
        await resp.whole(204)

    async def get_inventory(self, req, resp):
        """GET ?inventory&id=: one configuration; without id: List Bucket Inventory."""
        if "id" in req.params:
            await resp.whole(200, self.ks.get_bucket_inventory(req.bucket, req.params["id"]))
        else:
            await resp.whole(200, self.ks.list_bucket_inventory(
                req.bucket, token=req.params.get("continuation-token") or None))

    async def put_inventory(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        await self.ks.put_bucket_inventory(req.bucket, req.params.get("id"), body)
        await resp.whole(200)

    async def delete_inventory(self, req, resp):
        await self.ks.delete_bucket_inventory(req.bucket, req.params.get("id"))
        await resp.whole(204)

    async def post_inventory(self, req, resp):
        """POST ?inventory&id=: a one-off report, answered once it is delivered."""
        body = await req.read_all(self.max_xml_bytes)
        job = await self.ks.post_bucket_inventory(req.bucket, req.params.get("id"), body)
        await resp.whole(200, render_post_result(job))

    async def list_objects(self, req, resp):
        p = req.params
        url = _encoding_type(p)
        max_keys = _int_param(p, "max-keys", MAX_KEYS, 0, None)
        v2 = p.get("list-type") == "2"
        if "list-type" in p and p["list-type"] not in ("1", "2"):
            raise InvalidArgument("list-type must be 1 or 2")
        prefix, delimiter = p.get("prefix", ""), p.get("delimiter") or None
        token = p.get("continuation-token")
        if v2:
            marker = _decode_token(token) if token is not None else p.get("start-after", "")
        else:
            marker = p.get("marker", "")
        listing = self.ks.list_objects(req.bucket, prefix=prefix, delimiter=delimiter,
                                       marker=marker, max_keys=min(max_keys, MAX_KEYS))
        fill = getattr(self.ks, "fill_etags", None)
        if fill is not None:  # ETags of objects written on the mount are computed on demand
            listing = await fill(req.bucket, listing)
        if v2:
            next_token = _encode_token(_next_marker(listing)) if listing.is_truncated else None
            body = xmlout.list_objects_v2(
                req.bucket, listing, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                url=url, appid=self.appid, continuation_token=token, next_token=next_token,
                start_after=p.get("start-after"), fetch_owner=p.get("fetch-owner") == "true")
        else:
            if listing.is_truncated and not listing.next_marker:
                listing = _with_next_marker(listing)
            body = xmlout.list_objects_v1(req.bucket, listing, prefix=prefix,
                                          delimiter=delimiter, marker=marker, max_keys=max_keys,
                                          url=url, appid=self.appid)
        await resp.whole(200, body)

    async def delete_objects(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        keys, quiet = xmlout.parse_delete(body, self.max_xml_bytes)
        deleted, failed = [], []
        for key, version_id in keys:
            try:
                vid, marker = await self.ks.delete_object(req.bucket, key,
                                                          version_id=version_id)
                if version_id is None and marker:
                    deleted.append((key, None, vid))
                elif version_id is not None:
                    deleted.append((key, version_id, version_id if marker else None))
                else:
                    deleted.append(key)
            except CosfsError as exc:
                if exc.code == "NoSuchKey":
                    deleted.append(key)  # deleting what is not there succeeds, as in COS
                else:
                    failed.append((key, exc.code, str(exc)))
        await resp.whole(200, xmlout.delete_result(deleted, failed, quiet=quiet,
                                                   url=_encoding_type(req.params)))

    # -- objects ------------------------------------------------------------------------
    def _write_args(self, req):
        sse, key_id = hdr.sse_request(req.headers)
        return dict(sse=sse, kms_key_id=key_id, meta=hdr.user_meta(req.headers),
                    headers=hdr.content_headers(req.headers))

    async def put_object(self, req, resp):
        args = self._write_args(req)
        md5 = hdr.content_md5(req.headers)
        info = await self.ks.put_object(req.bucket, req.key, req.body(),
                                        content_md5=md5, **args)
        await resp.whole(200, headers=[("etag", xmlout.quote_etag(info.etag))]
                         + hdr.sse_headers(info, amz=req.sigv4)
                         + hdr.version_headers(info, amz=req.sigv4))

    async def head_object(self, req, resp):
        vid = req.params.get("versionId")
        if vid is not None:
            info = await self.ks.head_version(req.bucket, req.key, vid)
        else:
            info = await self.ks.head_object(req.bucket, req.key, pull=True)
        hdr.check_conditions(req.headers, info)
        await resp.start(200, hdr.object_headers(info, amz=req.sigv4)
                         + [("accept-ranges", "bytes")], length=info.size)
        await resp.body(b"")

    async def get_object(self, req, resp):
        vid = req.params.get("versionId")
        if vid is not None:
            reader = await self.ks.open_version(req.bucket, req.key, vid)
        else:
            reader = await self.ks.open_object(req.bucket, req.key, pull=True)
        try:
            info = reader.info
            hdr.check_conditions(req.headers, info)
            rng = hdr.parse_range(req.headers.get("range"), info.size)
            start, end = rng if rng else (0, info.size)
            headers = _overrides(hdr.object_headers(info, amz=req.sigv4), req.params)
            headers.append(("accept-ranges", "bytes"))
            if rng:
                headers.append(("content-range", "bytes %d-%d/%d" % (start, end - 1, info.size)))
            await resp.start(206 if rng else 200, headers, length=end - start)
            offset = start
            while offset < end:
                data = await reader.read(offset, min(SEND_PIECE, end - offset))
                if not data:
                    raise CosfsError("object %s ended early at %d of %d bytes"
                                     % (req.key, offset, end), code="InternalError")
                offset += len(data)
                await resp.body(data, more=offset < end)
            if start == end:
                await resp.body(b"")
        finally:
            await reader.aclose()

    async def delete_object(self, req, resp):
        headers = []
        try:
            vid, marker = await self.ks.delete_object(req.bucket, req.key,
                                                      version_id=req.params.get("versionId"))
        except CosfsError as exc:
            if exc.code not in ("NoSuchKey", "NoSuchVersion"):
                raise
        else:
            families = hdr.FAMILIES if req.sigv4 else hdr.FAMILIES[:1]
            for family in families:
                if vid:
                    headers.append((family + "version-id", vid))
                if marker:
                    headers.append((family + "delete-marker", "true"))
        await resp.whole(204, headers=headers)

    def _copy_source(self, req):
        raw = req.headers.get("x-cos-copy-source") or req.headers.get("x-amz-copy-source")
        path, _, query = raw.partition("?")
        src = urllib.parse.unquote(path, errors="surrogateescape").lstrip("/")
        first, _, key = src.partition("/")
        bucket = first
        for suffix in self.endpoints:
            if first.lower().endswith("." + suffix):
                bucket = first[:-len(suffix) - 1]
                break
        if not bucket or not key:
            raise InvalidArgument("the copy source must be <bucket>/<key> or "
                                  "<bucket>.cos.<region>.myqcloud.com/<key>")
        version = urllib.parse.parse_qs(query).get("versionId", [None])[0] if query else None
        return bucket, key, version

    def _copy_prefix(self, req):
        return "x-cos-copy-source-" if "x-cos-copy-source" in req.headers \
            else "x-amz-copy-source-"

    async def copy_object(self, req, resp):
        src_bucket, src_key, src_version = self._copy_source(req)
        await self._authorize(req, src_bucket, False)
        if src_version is not None:
            src = await self.ks.head_version(src_bucket, src_key, src_version)
        else:
            src = await self.ks.head_object(src_bucket, src_key)
        hdr.check_conditions(req.headers, src, prefix=self._copy_prefix(req), for_copy=True)
        directive = (req.headers.get("x-cos-metadata-directive")
                     or req.headers.get("x-amz-metadata-directive") or "Copy")
        if directive not in ("Copy", "Replaced", "REPLACE", "COPY"):
            raise InvalidArgument("the metadata directive must be Copy or Replaced")
        replace = directive in ("Replaced", "REPLACE")
        info = await self.ks.copy_object(src_bucket, src_key, req.bucket, req.key,
                                         replace_metadata=replace, src_version_id=src_version,
                                         **self._write_args(req))
        await resp.whole(200, xmlout.copy_result(info.etag, info.mtime_ns),
                         headers=hdr.sse_headers(info, amz=req.sigv4)
                         + hdr.version_headers(info, amz=req.sigv4))

    # -- multipart ------------------------------------------------------------------------
    async def create_upload(self, req, resp):
        upload_id = await self.ks.create_upload(req.bucket, req.key, **self._write_args(req))
        await resp.whole(200, xmlout.initiate_result(req.bucket, req.key, upload_id))

    def _part_number(self, req):
        return _int_param(req.params, "partNumber", None, 1, 10000)

    async def upload_part(self, req, resp):
        part = await self.ks.upload_part(req.bucket, req.key, req.params["uploadId"],
                                         self._part_number(req), req.body(),
                                         content_md5=hdr.content_md5(req.headers),
                                         size=hdr.content_size(req.headers))
        etag = part if isinstance(part, str) else part.etag
        await resp.whole(200, headers=[("etag", xmlout.quote_etag(etag))])

    async def upload_part_copy(self, req, resp):
        src_bucket, src_key, src_version = self._copy_source(req)
        if src_version is not None:
            raise CosfsError("a part cannot be copied from a noncurrent version",
                             code="NotImplemented")
        await self._authorize(req, src_bucket, False)
        src = await self.ks.head_object(src_bucket, src_key)
        hdr.check_conditions(req.headers, src, prefix=self._copy_prefix(req), for_copy=True)
        rng = None
        raw_range = req.headers.get("x-cos-copy-source-range") or \
            req.headers.get("x-amz-copy-source-range")
        if raw_range is not None:
            rng = hdr.parse_range(raw_range, src.size)
            if rng is None:
                raise InvalidArgument("the copy source range must be bytes=first-last")
        part = await self.ks.upload_part_copy(req.bucket, req.key, req.params["uploadId"],
                                              self._part_number(req), src_bucket, src_key,
                                              range=rng)
        await resp.whole(200, xmlout.copy_result(part.etag, part.mtime_ns, part=True))

    async def complete_upload(self, req, resp):
        body = await req.read_all(self.max_xml_bytes)
        parts = xmlout.parse_complete(body, self.max_xml_bytes)
        info = await self.ks.complete_upload(req.bucket, req.key, req.params["uploadId"], parts)
        where = "/%s/%s" % (req.bucket, urllib.parse.quote(req.key))
        await resp.whole(200, xmlout.complete_result(where, req.bucket, req.key, info.etag),
                         headers=hdr.sse_headers(info, amz=req.sigv4))

    async def abort_upload(self, req, resp):
        await self.ks.abort_upload(req.bucket, req.key, req.params["uploadId"])
        await resp.whole(204)

    async def list_parts(self, req, resp):
        p = req.params
        marker = _int_param(p, "part-number-marker", 0, 0, 10000)
        max_parts = _int_param(p, "max-parts", 1000, 0, 1000)
        result = await _maybe_await(self.ks.list_parts(req.bucket, req.key, p["uploadId"],
                                                       marker=marker, max_parts=max_parts))
        await resp.whole(200, xmlout.list_parts(
            req.bucket, req.key, p["uploadId"], result.parts, marker=marker,
            next_marker=result.next_marker, max_parts=max_parts, truncated=result.is_truncated,
            appid=self.appid, url=_encoding_type(p)))

    async def list_uploads(self, req, resp):
        p = req.params
        max_uploads = _int_param(p, "max-uploads", 1000, 0, 1000)
        result = await _maybe_await(self.ks.list_uploads(
            req.bucket, prefix=p.get("prefix", ""), delimiter=p.get("delimiter") or None,
            key_marker=p.get("key-marker", ""), upload_id_marker=p.get("upload-id-marker", ""),
            max_uploads=max_uploads))
        await resp.whole(200, xmlout.list_uploads(
            req.bucket, result.uploads, result.common_prefixes, prefix=p.get("prefix", ""),
            delimiter=p.get("delimiter"), key_marker=p.get("key-marker"),
            upload_id_marker=p.get("upload-id-marker"),
            next_key_marker=result.next_key_marker,
            next_upload_id_marker=result.next_upload_id_marker, max_uploads=max_uploads,
            truncated=result.is_truncated, appid=self.appid, url=_encoding_type(p)))


def _denied(message):
    return CosfsError(message, code="AccessDenied")


def _bucket_sub(p):
    for name in ("encryption", "origin", "inventory", "location", "uploads", "delete",
                 "versioning", "versions", "replication"):
        if name in p:
            return name
    return None


def _object_sub(p, headers):
    if "uploadId" in p:
        if "partNumber" in p:
            return "part-copy" if ("x-cos-copy-source" in headers
                                   or "x-amz-copy-source" in headers) else "part"
        return "upload"
    if "uploads" in p:
        return "uploads"
    if "x-cos-copy-source" in headers or "x-amz-copy-source" in headers:
        return "copy"
    return None


_BUCKET_ROUTES = {
    ("PUT", None): ApiApp.put_bucket,
    ("HEAD", None): ApiApp.head_bucket,
    ("DELETE", None): ApiApp.delete_bucket,
    ("GET", None): ApiApp.list_objects,
    ("GET", "location"): ApiApp.get_location,
    ("GET", "encryption"): ApiApp.get_encryption,
    ("PUT", "encryption"): ApiApp.put_encryption,
    ("DELETE", "encryption"): ApiApp.delete_encryption,
    ("GET", "versioning"): ApiApp.get_versioning,
    ("PUT", "versioning"): ApiApp.put_versioning,
    ("GET", "versions"): ApiApp.list_versions,
    ("GET", "replication"): ApiApp.get_replication,
    ("PUT", "replication"): ApiApp.put_replication,
    ("DELETE", "replication"): ApiApp.delete_replication,
    ("GET", "origin"): ApiApp.get_origin,
    ("PUT", "origin"): ApiApp.put_origin,
    ("DELETE", "origin"): ApiApp.delete_origin,
    ("GET", "inventory"): ApiApp.get_inventory,
    ("PUT", "inventory"): ApiApp.put_inventory,
    ("DELETE", "inventory"): ApiApp.delete_inventory,
    ("POST", "inventory"): ApiApp.post_inventory,
    ("GET", "uploads"): ApiApp.list_uploads,
    ("POST", "delete"): ApiApp.delete_objects,
}
_OBJECT_ROUTES = {
    ("PUT", None): ApiApp.put_object,
    ("PUT", "copy"): ApiApp.copy_object,
    ("GET", None): ApiApp.get_object,
    ("HEAD", None): ApiApp.head_object,
    ("DELETE", None): ApiApp.delete_object,
    ("POST", "uploads"): ApiApp.create_upload,
    ("PUT", "part"): ApiApp.upload_part,
    ("PUT", "part-copy"): ApiApp.upload_part_copy,
    ("POST", "upload"): ApiApp.complete_upload,
    ("DELETE", "upload"): ApiApp.abort_upload,
    ("GET", "upload"): ApiApp.list_parts,
}

_OVERRIDES = ("content-type", "content-language", "expires", "cache-control",
              "content-disposition", "content-encoding")


def _overrides(headers, params):
    """Apply ``response-content-type`` and the other ``response-*`` query overrides."""
    out = list(headers)
    for name in _OVERRIDES:
        value = params.get("response-" + name)
        if value is not None:
            out = [(k, v) for k, v in out if k != name] + [(name, value)]
    return out


def _default_allows(cred, bucket, write):
    allows = getattr(cred, "allows", None)
    if callable(allows):
        return allows(bucket, write)
    if write and getattr(cred, "read_only", False):
        return False
    buckets = getattr(cred, "buckets", None)
    return not buckets or bucket in buckets


def _encoding_type(p):
    value = p.get("encoding-type")
    if value not in (None, "", "url"):
        raise InvalidArgument("encoding-type must be url")
    return value == "url"


def _int_param(p, name, default, low, high):
    value = p.get(name)
    if value is None:
        if default is None:
            raise InvalidArgument("%s is required" % name)
        return default
    if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
        raise InvalidArgument("%s must be a whole number%s" % (
            name, " from %d to %d" % (low, high) if high is not None else ""))
    return int(value)


def _encode_token(marker):
    import base64
    return base64.urlsafe_b64encode(marker.encode("utf-8", "surrogatepass")).decode()


def _decode_token(token):
    import base64
    import binascii
    try:
        return base64.urlsafe_b64decode(token.encode()).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError, UnicodeError):
        raise InvalidArgument("the continuation token is not valid") from None


def _next_marker(listing):
    if getattr(listing, "next_marker", None):
        return listing.next_marker
    last = [c.key for c in listing.contents] + list(listing.common_prefixes)
    return max(last, key=lambda k: k.encode("utf-8", "surrogatepass")) if last else ""


def _with_next_marker(listing):
    try:
        return listing._replace(next_marker=_next_marker(listing))
    except AttributeError:
        listing.next_marker = _next_marker(listing)
        return listing


def _location_constraint(body, limit):
    from .. import xmldoc
    root = xmldoc.parse(body, "CreateBucketConfiguration", max_bytes=limit)
    return xmldoc.text(root, "LocationConstraint", required=False) or None


async def _maybe_await(value):
    return await value if inspect.isawaitable(value) else value


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
