"""Origin pull ("back-to-origin"): a missing object fetched from the bucket's origin.

:meth:`OriginPull.pull` is the one place a miss is handled; the composition root
hands it to the filesystem layer as ``fs.on_miss``, which calls it for a lookup
of a missing name below a bucket (stat, open...), and the key space calls the
same hook for a GET or HEAD of a missing key through the XML API.

``pull(bucket_ino, key)``, on the trio thread:

* no ``origin`` configuration, or no rule (first by priority) whose prefix and
  suffix the key matches: False at once, nothing fetched; but a key that is a
  folder of a rule's prefix (``a`` or ``a/b`` for the prefix ``a/b/c``) becomes a
  directory, so a lookup on the mount can reach the keys the rule covers;
* a 404 from the origin is remembered for ``origin.miss_ttl`` seconds (shells
  and editors probe for many names) and gives False (the caller answers ENOENT
  / NoSuchKey);
* otherwise ``GET <protocol>://<host>/<origin path>`` (httpx on trio, redirects
  followed when the rule says so). A 2xx answer is streamed into the object
  write path by :meth:`cosfs.keyspace.KeySpace.put_object` with the writer kind
  ``ORIGIN_PULL`` (the resolver gives the bucket default encryption), in bounded
  memory, with the answer's content headers and ``x-cos-meta-*`` as metadata;
  the object is published under the key only once complete: True;
* any other answer, a timeout or a dropped connection: the next host (standby
  hosts after their main host), then the whole list again ``origin.retries``
  times; then :class:`~cosfs.errors.OriginFailed` (EIO, HTTP 424), after a
  WARNING naming each URL and what it answered. A failed or interrupted pull
  leaves nothing behind. The whole pull is bounded by ``origin.timeout``.
* a redirect of ``<path>`` to ``<path>/`` (a web server's folder) makes the key
  a directory, so a lookup on the mount can go on to the objects below it.

Concurrent pulls of one key fetch once: later callers wait for the first one's
outcome (and fetch themselves only if it was cancelled).
"""

import logging
from dataclasses import dataclass, field

import httpx
import trio

from .. import __version__
from ..errors import CosfsError, OriginFailed
from ..originconf import parse_origin
from ..resolver import WriterKind

log = logging.getLogger(__name__)

#: at most this many remembered 404s (expired ones are dropped first)
MAX_MISSES = 10000
MAX_REDIRECTS = 5
_META = "x-cos-meta-"
_CONTENT_HEADERS = ("content-type", "cache-control", "content-disposition", "content-encoding",
                    "content-language", "expires")


class _Failure(Exception):
    """One attempt failed; the message says which URL answered what."""


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    stored: "bool | None" = None
    error: "CosfsError | None" = None


def origin_metadata(response_headers):
    """(content headers, user metadata) to keep from an origin's answer, as
    :func:`cosfs.keyspace.metadata_xattrs` takes them. Values that are not printable,
    names COS does not allow and metadata past the COS limits are left out."""
    headers, meta = {}, {}
    total = 0
    for name, value in response_headers.items():
        low = name.lower()
        if not value.isprintable() or len(value) > 2048:
            continue
        if low in _CONTENT_HEADERS:
            headers[low] = value
        elif low.startswith(_META):
            short = low[len(_META):]
            if short and all(c.isalnum() and c.isascii() or c == "-" for c in short) and \
                    total + len(short) + len(value.encode()) <= 4096:
                meta[short] = value
                total += len(short) + len(value.encode())
    return headers, meta


def _is_folder(url, resp):
    """True when the origin redirected ``url`` to the same path with a ``/`` added (what
    web servers answer for a folder), whether the redirect was followed or not."""
    requested = httpx.URL(url).path
    if requested.endswith("/"):
        return False
    if resp.history:
        return resp.history[0].is_redirect and resp.url.path == requested + "/"
    if resp.is_redirect:
        target = resp.url.join(resp.headers.get("location", ""))
        return target.path == requested + "/"
    return False


class OriginPull:
    """The origin pull service of one daemon over a :class:`~cosfs.keyspace.KeySpace`.

    ``settings`` is the configuration's :class:`~cosfs.config.OriginSettings`;
    ``transport`` (tests) an httpx transport to use instead of the network.
    ``fetches`` counts the GET requests sent.
    """

    def __init__(self, keyspace, settings, *, transport=None):
        self.ks = keyspace
        self.catalog = keyspace.catalog
        self.settings = settings
        self.transport = transport
        self.fetches = 0
        self._configs = {}
        self._misses = {}
        self._flights = {}

    def _config(self, doc):
        cfg = self._configs.get(doc)
        if cfg is None:
            cfg = parse_origin(doc)
            if len(self._configs) > 256:
                self._configs.clear()
            self._configs[doc] = cfg
        return cfg

    def _remember_miss(self, ident):
        now = trio.current_time()
        if len(self._misses) >= MAX_MISSES:
            self._misses = {k: t for k, t in self._misses.items() if t > now}
            if len(self._misses) >= MAX_MISSES:
                self._misses.clear()
        self._misses[ident] = now + self.settings.miss_ttl

    async def pull(self, bucket_ino, key, *, folders=True) -> bool:
        """Fetch the missing ``key`` (bytes, UTF-8) of the bucket from its origin; see the
        module docstring. ``folders``: a key found to be a folder (of a rule's prefix, or
        on the origin) becomes a directory (for lookups on the mount; the API asks for
        objects only, so a folder is a miss there). Raises OriginFailed, or the CosfsError
        of the write path."""
        doc = self.catalog.get_bucket_config(bucket_ino, "origin")
        if doc is None:
            return False
        try:
            text = key.decode("utf-8")
            cfg = self._config(doc)
        except (UnicodeDecodeError, CosfsError):
            return False
        rule = cfg.rule_for(text)
        if rule is None and folders and text and \
                any(r.prefix.startswith(text + "/") for r in cfg.rules):
            # a folder on the way to a rule's prefix: it exists for the rule's keys
            row = self.catalog.bucket_by_inode(bucket_ino)
            if row is None:
                return False
            await self.ks.put_object(row[1], text + "/", b"")
            return True
        if rule is None or not text:
            return False
        ident = (bucket_ino, key)
        miss = (bucket_ino, key, folders)  # a folder is a miss for the API only
        expires = self._misses.get(miss)
        if expires is not None:
            if expires > trio.current_time():
                return False
            del self._misses[miss]
        while ident in self._flights:
            flight = self._flights[ident]
            await flight.done.wait()
            if flight.error is not None:
                raise OriginFailed(str(flight.error), errno=flight.error.errno,
                                   code=flight.error.code)
            if flight.stored is not None:
                return flight.stored
        flight = _Flight()
        self._flights[ident] = flight
        try:
            flight.stored = await self._fetch(bucket_ino, text, rule, folders)
            if not flight.stored:
                self._remember_miss(miss)
            return flight.stored
        except CosfsError as exc:
            flight.error = exc
            raise
        except Exception as exc:
            flight.error = OriginFailed("origin pull failed: %s" % exc)
            raise
        finally:
            del self._flights[ident]
            flight.done.set()

    async def _fetch(self, bucket_ino, key, rule, folders):
        row = self.catalog.bucket_by_inode(bucket_ino)
        if row is None:
            return False
        bucket = row[1]
        s = self.settings
        timeout = httpx.Timeout(connect=s.connect_timeout, read=s.read_timeout,
                                write=s.read_timeout, pool=s.connect_timeout)
        headers = {"User-Agent": "cosfs/%s origin-pull" % __version__,
                   "Accept-Encoding": "identity"}
        headers.update(rule.new_headers)
        failures = []
        with trio.move_on_after(s.timeout) as scope:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=rule.follow_redirection,
                                         max_redirects=MAX_REDIRECTS, trust_env=False,
                                         transport=self.transport, headers=headers) as client:
                for attempt in range(s.retries + 1):
                    if attempt:
                        await trio.sleep(min(0.2 * attempt, 2.0))
                    for host in rule.candidates():
                        url = rule.url(host, key)
                        try:
                            return await self._try(client, url, bucket, key, folders)
                        except _Failure as exc:
                            failures.append(str(exc))
                            log.warning("origin pull of %s/%s: %s", bucket, key, exc)
        if scope.cancelled_caught:
            failures.append("no answer within origin.timeout (%gs)" % s.timeout)
            log.warning("origin pull of %s/%s: no answer within origin.timeout (%gs)",
                        bucket, key, s.timeout)
        raise OriginFailed("origin pull of %s/%s failed: %s"
                           % (bucket, key, failures[-1] if failures else "no origin host"))

    async def _try(self, client, url, bucket, key, folders):
        """One GET: True when stored, False on 404; raises _Failure."""
        self.fetches += 1
        try:
            async with client.stream("GET", url) as resp:
                status = resp.status_code
                if _is_folder(url, resp):
                    if not folders:
                        log.info("origin pull of %s/%s: %s is a folder on the origin, not "
                                 "an object", bucket, key, url)
                        return False
                    # a web server's answer for a folder: it holds objects, so the mount
                    # gets a directory and the lookup can go on below it
                    await self.ks.put_object(bucket, key + "/", b"")
                    log.info("origin pull of %s/%s: %s is a folder on the origin", bucket,
                             key, url)
                    return True
                if status == 404:
                    log.info("origin pull of %s/%s: GET %s answered 404", bucket, key, url)
                    return False
                if not 200 <= status < 300 or status == 206:
                    where = resp.headers.get("location")
                    raise _Failure("GET %s answered %d %s%s" % (
                        url, status, resp.reason_phrase,
                        " (redirect to %s not followed)" % where if where else ""))
                headers, meta = origin_metadata(resp.headers)
                info = await self.ks.put_object(bucket, key, resp.aiter_raw(), headers=headers,
                                                meta=meta, writer=WriterKind.ORIGIN_PULL)
        except httpx.HTTPError as exc:
            raise _Failure("GET %s failed: %s: %s" % (url, type(exc).__name__,
                                                      exc or "no detail")) from None
        log.info("origin pull of %s/%s: stored %d bytes from %s (%s)", bucket, key, info.size,
                 url, info.sse or "plain")
        return True
