"""The client of the daemon's control socket, and ``cosfs versions`` which uses it.

Commands that must reach the objects of a running daemon speak the XML API on its
control socket (:mod:`cosfs.controlsocket`); on a store that is not mounted they
run the same application in-process over the opened store (same code, same
answers).

``cosfs versions`` (list, get, restore, delete) is the command line of object
versions: a target is a path on a mount (``/mnt/bucket/dir/file``: the path need
not exist any more) or, with ``--config``, ``bucket/key``.
"""

import contextlib
import json
import logging
import os
import sys
import urllib.parse

from .controlsocket import check_folder, socket_path
from .errors import CosfsError, InvalidArgument

log = logging.getLogger(__name__)

# -- the client --------------------------------------------------------------------
class Client:
    """XML API requests to a store's daemon, or in-process when it is not running.

    Use ``async with Client.open(config) as c`` inside ``trio.run``."""

    def __init__(self, http):
        self.http = http

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config):
        import httpx
        path = socket_path(config.store)
        if os.path.exists(path):
            check_folder(os.path.dirname(path))  # never talk to a socket others could place
            transport = httpx.AsyncHTTPTransport(uds=path)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://cosfs",
                                             timeout=None) as http:
                    await http.get("/")  # is a daemon there?
                    yield cls(http)
                    return
            except httpx.TransportError:
                log.debug("no daemon answers on %s: opening the store", path)
        if isinstance(config, _StoreOnly):
            raise CosfsError("the daemon of %s does not answer on %s" % (config.store, path),
                             code="ServiceUnavailable")
        async with cls._in_process(config) as client:
            yield client

    @classmethod
    @contextlib.asynccontextmanager
    async def _in_process(cls, config):
        import httpx
        import trio

        from .mount import build, build_control_app, open_store
        store = open_store(config, create=False, purpose="used by cosfs versions")
        try:
            objects, fs = build(store)
            app = build_control_app(config, store, objects, fs)
            async with trio.open_nursery() as nursery:
                objects.attach(nursery)
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://cosfs",
                                             timeout=None) as http:
                    yield cls(http)
                await objects.commit_all(durable=True)
                await objects.collect_garbage()
                nursery.cancel_scope.cancel()
        finally:
            store.close()

    async def call(self, method, bucket, key="", params=None, headers=None, stream_to=None):
        """Send one request; returns (status, headers, body). A COS error answer raises
        CosfsError with its code. ``stream_to``: a binary file the body is written to."""
        url = "/%s/%s" % (bucket, urllib.parse.quote(key, safe="/"))
        req = self.http.build_request(method, url, params=params, headers=headers)
        resp = await self.http.send(req, stream=True)
        try:
            if resp.status_code >= 300:
                body = await resp.aread()
                raise _error(resp.status_code, body)
            if stream_to is not None:
                async for piece in resp.aiter_bytes():
                    stream_to.write(piece)
                return resp.status_code, resp.headers, b""
            return resp.status_code, resp.headers, await resp.aread()
        finally:
            await resp.aclose()


def _error(status, body):
    from . import xmldoc
    try:
        root = xmldoc.parse(body, "Error")
        code = xmldoc.text(root, "Code", required=False) or "InternalError"
        message = xmldoc.text(root, "Message", required=False) or code
    except CosfsError:
        code, message = "InternalError", "HTTP status %d" % status
    return CosfsError(message, code=code)


# -- cosfs versions -------------------------------------------------------------------
def _mount_target(path):
    """(mountpoint, bucket, key) of a path on a cosfs mount (the path may be gone)."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    dev = os.lstat(existing).st_dev
    root = existing
    while root != "/" and os.lstat(os.path.dirname(root)).st_dev == dev:
        root = os.path.dirname(root)
    rel = os.path.relpath(path, root)
    if rel == ".":
        raise InvalidArgument("%s is the mount root: name a bucket or an object" % path)
    bucket, _, key = rel.partition("/")
    return root, bucket, key


def _target(args):
    """(Config, bucket, key) of the ``versions`` target."""
    from .config import load
    if args.config:
        bucket, _, key = args.target.lstrip("/").partition("/")
        return load(args.config), bucket, key
    root, bucket, key = _mount_target(args.target)
    try:
        status = json.loads(os.getxattr(root, "user.cos.status"))
    except OSError:
        raise CosfsError("%s is not on a cosfs mount (or give --config CONFIG and "
                         "bucket/key)" % args.target, code="NoSuchBucket") from None
    return _StoreOnly(status["store"]), bucket, key


class _StoreOnly:
    """What the client needs of a config when only the daemon's store path is known."""

    def __init__(self, store):
        self.store = store


def _show(listing_body, out, only=None):
    from . import xmldoc
    root = xmldoc.parse(listing_body, "ListVersionsResult")
    rows = []
    for elem in root:
        if elem.tag not in ("Version", "DeleteMarker"):
            continue
        rows.append((elem.findtext("VersionId"), elem.findtext("IsLatest") == "true",
                     elem.tag == "DeleteMarker", elem.findtext("Size") or "-",
                     elem.findtext("LastModified"), (elem.findtext("ETag") or "").strip('"'),
                     elem.findtext("Key")))
    for vid, latest, marker, size, mtime, etag, key in rows:
        if only is not None and key != only:
            continue
        out.write("%-24s %-6s %-13s %12s %s %-32s %s\n" % (
            vid, "latest" if latest else "", "delete-marker" if marker else "", size, mtime,
            etag or "-", key))
    truncated = root.findtext("IsTruncated") == "true"
    return truncated, root.findtext("NextKeyMarker"), root.findtext("NextVersionIdMarker")


async def _versions(args, config, bucket, key):
    async with Client.open(config) as client:
        if args.action == "list":
            # an object: its versions only (not those of keys it is a prefix of); a
            # bucket, a directory on the mount or a key ending in "/": everything below
            folder = not key or key.endswith("/") or (
                not args.config and os.path.isdir(args.target))
            if folder and key and not key.endswith("/"):
                key += "/"
            params = {"versions": "", "prefix": key}
            while True:
                _, _, body = await client.call("GET", bucket, params=params)
                truncated, km, vm = _show(body, sys.stdout, None if folder else key)
                if not truncated:
                    return 0
                params.update({"key-marker": km, "version-id-marker": vm or ""})
        if not key:
            raise InvalidArgument("%s needs an object, not a bucket" % args.action)
        if not args.version_id:
            raise InvalidArgument("%s needs --version-id ID (see cosfs versions list)"
                                  % args.action)
        vid = args.version_id
        if args.action == "get":
            out = sys.stdout.buffer if args.output in (None, "-") else open(args.output, "wb")
            try:
                await client.call("GET", bucket, key, params={"versionId": vid},
                                  stream_to=out)
            finally:
                if out is not sys.stdout.buffer:
                    out.close()
            return 0
        if args.action == "restore":
            source = "/%s/%s?versionId=%s" % (bucket, urllib.parse.quote(key, safe="/"),
                                              urllib.parse.quote(vid))
            _, headers, _ = await client.call("PUT", bucket, key,
                                              headers={"x-cos-copy-source": source})
            print("restored %s/%s version %s as version %s"
                  % (bucket, key, vid, headers.get("x-cos-version-id", "null")))
            return 0
        _, headers, _ = await client.call("DELETE", bucket, key, params={"versionId": vid})
        print("deleted version %s of %s/%s" % (vid, bucket, key))
        return 0


def cmd_versions(args):
    """``cosfs versions list|get|restore|delete TARGET``."""
    import trio
    config, bucket, key = _target(args)
    return trio.run(_versions, args, config, bucket, key)
