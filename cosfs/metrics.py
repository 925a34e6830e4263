"""Counters of what the daemon's core does, exported in the Prometheus text format.

The core (data path, read path, collector) counts through the module-level
helpers below; each is one dictionary lookup and one ``inc`` on a
pre-bound :mod:`prometheus_client` child, cheap enough for every chunk. The
FUSE adapter times every request with the function :func:`fuse_timer` binds
once per handler: a bucket count and a sum kept in plain lists (0.2 µs, against
2 µs for the library's histogram, whose locks a request loop does not need),
exported by :class:`_FuseCollector` when scraped.
Everything lives in one private :class:`prometheus_client.CollectorRegistry`
(:data:`REGISTRY`), so several stores in one test process never clash with
the library's global registry.

State that is cheaper to read when scraped than to keep counting (replication
queue, garbage waiting, cache use, objects and bytes per bucket by encryption
state) comes from a ``state()`` callable the composition root registers with
:func:`set_state`; it must return a dict (see :class:`_StateCollector`) and runs
on the thread that renders (the daemon's trio thread).

Metric names and meanings are listed in docs/console.md ("Metrics").
Safe on any thread (the library's counters hold their own locks), except the FUSE
timers: one thread at a time (the request loop's); no trio.
"""

import bisect
import logging

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter,
                               generate_latest)
from prometheus_client import disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series: scrapers do not need them

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: label of plaintext objects in every per-algorithm metric
PLAIN = "none"

_COMMITS = Counter(
    "cosfs_commits", "Catalog commits of object data (a large write commits in steps), by "
    "the stored encryption algorithm", ["algorithm"], registry=REGISTRY)
_BYTES_SEALED = Counter(
    "cosfs_bytes_sealed", "Plaintext bytes handed to the cipher and stored, by algorithm "
    "('none': stored plain)", ["algorithm"], registry=REGISTRY)
_BYTES_OPENED = Counter(
    "cosfs_bytes_opened", "Plaintext bytes read back from the chunk store and authenticated, "
    "by algorithm", ["algorithm"], registry=REGISTRY)
_READS = Counter("cosfs_reads", "Object read requests served by the data path",
                 registry=REGISTRY)
_AUTH_FAILURES = Counter(
    "cosfs_authentication_failures", "Stored chunks that failed authentication or could not "
    "be read (tampering or corruption; answered EIO)", registry=REGISTRY)
_CACHE = Counter("cosfs_cache_segments", "Segments looked up in the read cache, by result",
                 ["result"], registry=REGISTRY)
_PAGE_STORES = Counter("cosfs_kernel_page_stores", "Segments handed to the kernel's page "
                       "cache for random readers that came back to them (cosfs.fuse.pagefill)",
                       registry=REGISTRY)
_RESOLVER = Counter("cosfs_resolver_decisions", "Encryption decisions of new content, by the "
                    "rule that decided (cosfs.resolver SOURCES) and the algorithm chosen",
                    ["source", "algorithm"], registry=REGISTRY)
_LOGINS = Counter("cosfs_console_logins", "Console login attempts, by result", ["result"],
                  registry=REGISTRY)
_HTTP = Counter("cosfs_console_requests", "Console requests, by page and status",
                ["page", "status"], registry=REGISTRY)

_API = Counter("cosfs_api_requests", "XML API requests, by operation (the handler; 'none' "
               "when refused before one was chosen) and HTTP status", ["operation", "status"],
               registry=REGISTRY)
#: upper bounds (seconds) of the FUSE latency histogram: 100 µs .. 5 s
FUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_FUSE_HELP = ("FUSE requests, by operation (the handler of cosfs.fuse.ops): count and time "
              "from the handler's start to its answer")
_commits = {}
_bytes_sealed = {}
_bytes_opened = {}
_resolver = {}
_cache_hit = _CACHE.labels("hit")
_cache_miss = _CACHE.labels("miss")


def _child(cache, counter, algorithm):
    key = algorithm or PLAIN
    child = cache.get(key)
    if child is None:
        child = cache[key] = counter.labels(key)
    return child


def committed(algorithm):
    """Object data was committed; ``algorithm``: its stored label or None (plain)."""
    _child(_commits, _COMMITS, algorithm).inc()


def sealed(algorithm, nbytes):
    """``nbytes`` of plaintext were sealed (or stored plain when ``algorithm`` is None)."""
    _child(_bytes_sealed, _BYTES_SEALED, algorithm).inc(nbytes)


def opened(algorithm, nbytes):
    """``nbytes`` of plaintext were read from the store and authenticated."""
    _child(_bytes_opened, _BYTES_OPENED, algorithm).inc(nbytes)


def read():
    _READS.inc()


def page_store():
    """A segment went into the kernel's page cache."""
    _PAGE_STORES.inc()


def authentication_failed():
    _AUTH_FAILURES.inc()


def cache_lookups(hits, misses):
    if hits:
        _cache_hit.inc(hits)
    if misses:
        _cache_miss.inc(misses)


def resolved(algorithm, source):
    """The resolver chose ``algorithm`` (None: plain) for new content by the rule
    ``source`` (one of :data:`cosfs.resolver.SOURCES`)."""
    key = (source, algorithm or PLAIN)
    child = _resolver.get(key)
    if child is None:
        child = _resolver[key] = _RESOLVER.labels(*key)
    child.inc()


def fuse_timer(operation):
    """The ``observe(seconds)`` of the FUSE latency histogram's ``operation`` series.

    Bound once per handler (at import of :mod:`cosfs.fuse.ops`), so a request costs
    one bisection and two additions, and no label lookup. Call it from one thread
    at a time (the request loop's); a scrape on another thread may see a sum a
    request ahead of the counts.
    """
    counts, total = _fuse.setdefault(operation, ([0] * (len(FUSE_BUCKETS) + 1), [0.0]))

    def observe(seconds, bounds=FUSE_BUCKETS, counts=counts, total=total,
                where=bisect.bisect_left):
        counts[where(bounds, seconds)] += 1  # first bound >= seconds: its "le" bucket
        total[0] += seconds
    return observe


#: operation -> (per-bucket counts, the last for +Inf; [sum of seconds])
_fuse = {}


class _FuseCollector:
    """The FUSE timers as the histogram ``cosfs_fuse_request_seconds``."""

    _LE = [floatToGoString(b) for b in FUSE_BUCKETS] + ["+Inf"]

    def collect(self):
        family = HistogramMetricFamily("cosfs_fuse_request_seconds", _FUSE_HELP,
                                       labels=["operation"])
        for operation, (counts, total) in sorted(_fuse.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._LE, list(counts)):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric([operation], buckets, total[0])
        yield family

    def describe(self):
        return []


REGISTRY.register(_FuseCollector())


def login(result):
    """A console login: ``ok``, ``failed`` or ``throttled``."""
    _LOGINS.labels(result).inc()


def api_request(operation, status):
    _API.labels(operation, str(status)).inc()


def console_request(page, status):
    _HTTP.labels(page, str(status)).inc()


class _StateCollector:
    """Gauges read at scrape time from the registered ``state()``: a dict with

    * ``replication``: {"queued", "replicated", "failed"} or None;
    * ``garbage_blobs``: blobs waiting for the collector;
    * ``cache``: {"used_bytes", "size_bytes"};
    * ``write_buffer``: {"used_bytes", "size_bytes"};
    * ``usage``: {bucket: {algorithm or None: (objects, bytes)}}.
    """

    def __init__(self):
        self.state = None

    def collect(self):
        if self.state is None:
            return
        try:
            state = self.state()
        except Exception:  # a scrape must never take the daemon down
            log.exception("cannot read the daemon state for metrics")
            return
        repl = state.get("replication")
        if repl is not None:
            for name, help_ in (("queued", "Replication tasks waiting"),
                                ("replicated", "Replication tasks done since start"),
                                ("failed", "Replication tasks failed since start")):
                yield GaugeMetricFamily("cosfs_replication_" + name, help_,
                                        value=repl.get(name) or 0)
        if "garbage_blobs" in state:
            yield GaugeMetricFamily("cosfs_garbage_blobs", "Released blobs waiting for the "
                                    "collector", value=state["garbage_blobs"])
        for part in ("cache", "write_buffer"):
            if part in state:
                for what in ("used_bytes", "size_bytes"):
                    yield GaugeMetricFamily("cosfs_%s_%s" % (part, what),
                                            "%s %s" % (part.replace("_", " "),
                                                       what.replace("_", " ")),
                                            value=state[part][what])
        usage = state.get("usage")
        if usage is not None:
            objs = GaugeMetricFamily("cosfs_bucket_objects", "Current objects of a bucket, by "
                                     "stored encryption", labels=["bucket", "algorithm"])
            size = GaugeMetricFamily("cosfs_bucket_bytes", "Plaintext bytes of a bucket's "
                                     "current objects, by stored encryption",
                                     labels=["bucket", "algorithm"])
            for bucket, per in sorted(usage.items()):
                for alg, (count, nbytes) in sorted(per.items(), key=lambda i: i[0] or ""):
                    objs.add_metric([bucket, alg or PLAIN], count)
                    size.add_metric([bucket, alg or PLAIN], nbytes)
            yield objs
            yield size

    def describe(self):
        return []


_state = _StateCollector()
REGISTRY.register(_state)


def set_state(state):
    """Register the daemon's ``state()`` callable (None: forget it)."""
    _state.state = state


def render() -> bytes:
    """Every metric in the Prometheus text format (content type :data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)


def value(name, **labels):
    """The current value of one sample (tests, the console's dashboard); 0.0 when unset."""
    got = REGISTRY.get_sample_value(name, labels or None)
    return 0.0 if got is None else got


def summarize(text) -> str:
    """A scraped ``/metrics`` text as aligned ``name{labels}  value`` lines (``cosfs stats``).

    A histogram is shown per series as its ``_count``, ``_sum`` and ``_mean`` (sum/count,
    a derived line of this summary only); its buckets, and series with no observation
    yet, are left out (``cosfs stats --raw`` shows them).
    """
    from prometheus_client.parser import text_string_to_metric_families

    def shown(value):
        return "%d" % value if float(value).is_integer() else "%.6g" % value

    lines = []
    for family in text_string_to_metric_families(text):
        series = {}
        for sample in family.samples:
            labels = ",".join("%s=%s" % kv for kv in sorted(sample.labels.items())
                              if kv[0] != "le")
            if family.type == "histogram":
                series.setdefault(labels, {})[sample.name[len(family.name):]] = sample.value
                continue
            lines.append(("%s{%s}" % (sample.name, labels) if labels else sample.name,
                          shown(sample.value)))
        for labels, parts in series.items():
            count = parts.get("_count", 0)
            if not count:
                continue
            total = parts.get("_sum", 0.0)
            for suffix, value in (("_count", count), ("_sum", total),
                                  ("_mean", total / count)):
                name = family.name + suffix
                lines.append(("%s{%s}" % (name, labels) if labels else name, shown(value)))
    width = max([len(n) for n, _ in lines] or [0])
    return "\n".join("%-*s  %s" % (width, n, v) for n, v in lines)
