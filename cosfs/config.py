"""The mount configuration: a YAML file turned into frozen dataclasses.

The only module that imports :mod:`yaml`. :func:`load` reads a file,
:func:`from_dict` validates an already parsed mapping (tests, the command
line). Both return a :class:`Config` or raise :class:`errors.ConfigError`
with one line of the form::

    <file>:<line>: <key path>: <what was expected>, found <what was there>

(``<line>`` is left out when unknown, e.g. for a missing top-level key or a
mapping built in code). Plain blocking file I/O: call it before trio starts
or from a worker thread. Every key is described in ``docs/config.md``.

YAML is read with the safe loader only (no arbitrary tags). Line numbers come
from the composed node tree, which is walked once before construction.
"""

import difflib
import ipaddress
import logging
import os
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import errors, names

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

DEFAULT_REGION = "ap-guangzhou"
DEFAULT_CHUNK_SIZE = 1 * MiB
MIN_CHUNK_SIZE = 64 * KiB
MAX_CHUNK_SIZE = 64 * MiB
CHUNK_ALIGN = 64 * KiB
DEFAULT_CACHE_SIZE = 256 * MiB
DEFAULT_WRITE_BUFFER = 256 * MiB
DEFAULT_REQUEST_POLL_US = 50
MAX_REQUEST_POLL_US = 1000
#: FUSE request loops: pyfuse3's (through libfuse), or cosfs's own (cosfs.fuse.session)
FUSE_LOOPS = ("native", "pyfuse3")
LOG_LEVELS = ("debug", "info", "warning", "error")
CONFIG_ENCRYPTIONS = ("AES256", "SM4")

TOP_KEYS = (
    "mountpoint", "store", "keys", "appid", "region", "regions", "buckets",
    "chunk_size", "cache_size", "write_buffer", "log_file", "log_level",
    "allow_other", "default_permissions", "writeback_cache", "fsync_on_close",
    "request_poll_us", "fuse_loop", "api", "origin",
    "inventory", "stores", "console", "snapshots",
)
REQUIRED_KEYS = ("store", "keys", "appid")
BUCKET_KEYS = ("name", "region", "encryption")
API_KEYS = (
    "enabled", "listen", "allow_remote", "endpoints", "credentials", "tls_cert", "tls_key",
    "max_header_bytes", "max_xml_bytes", "idle_timeout",
)
DEFAULT_API_LISTEN = "127.0.0.1:8360"
CONSOLE_KEYS = ("enabled", "listen", "allow_remote", "session_timeout")
DEFAULT_CONSOLE_LISTEN = "127.0.0.1:8361"
DEFAULT_SESSION_TIMEOUT = 3600.0
DEFAULT_API_PORT = 8360
DEFAULT_MAX_HEADER_BYTES = 16 * KiB
DEFAULT_MAX_XML_BYTES = 2 * MiB
DEFAULT_IDLE_TIMEOUT = 30.0
ORIGIN_KEYS = ("connect_timeout", "read_timeout", "timeout", "retries", "miss_ttl")
CREDENTIALS_NAME = "credentials"
_HOST_SUFFIX = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*"
                          r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

# Binary multiples only. "KB"/"MB"/"GB" are refused rather than guessed, since
# half the world reads them as powers of ten.
_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB,
    "m": MiB, "mib": MiB,
    "g": GiB, "gib": GiB,
    "t": TiB, "tib": TiB,
}
_AMBIGUOUS_UNITS = {"kb": "KiB", "mb": "MiB", "gb": "GiB", "tb": "TiB"}
_SIZE = re.compile(r"\s*([0-9]+)\s*([A-Za-z]*)\s*\Z")

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = _repr.maxdict = 4
_repr.maxlevel = 2


@dataclass(frozen=True)
class BucketSpec:
    """A bucket the mount creates at first start if it is missing.

    ``name`` is a full ``<name>-<APPID>``; ``region`` one of the configured
    regions; ``encryption`` the default encryption given to the bucket when it
    is created (None, ``AES256`` or ``SM4``). An existing bucket's settings are
    never changed by the configuration.
    """

    name: str
    region: str
    encryption: "str | None" = None


@dataclass(frozen=True)
class ApiConfig:
    """The ``api:`` section: the COS XML API the daemon serves (see docs/config.md).

    ``host``/``port`` come from ``listen`` (port 0: any free port); ``endpoints``
    are the lower-case host suffixes of virtual-hosted addressing
    (``<bucket>.<suffix>``); ``credentials`` is the credentials file;
    ``tls_cert``/``tls_key`` are both set or both None; ``idle_timeout`` is in
    seconds.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_API_PORT
    allow_remote: bool = False
    endpoints: "tuple[str, ...]" = ()
    credentials: "Path | None" = None
    tls_cert: "Path | None" = None
    tls_key: "Path | None" = None
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_xml_bytes: int = DEFAULT_MAX_XML_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    @property
    def listen(self):
        """``host:port`` as hypercorn binds it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ConsoleConfig:
    """The ``console:`` section: the web console and ``/metrics`` (docs/console.md).

    Its own listener (default ``127.0.0.1:8361``) beside the API's; logins use the
    API's credentials file (``credentials``); ``session_timeout`` in seconds.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8361
    allow_remote: bool = False
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    credentials: "Path | None" = None

    @property
    def listen(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class OriginSettings:
    """The ``origin:`` section: time limits of origin pull (docs/config.md, "Origin pull").

    All times in seconds: ``connect_timeout`` to connect to an origin host,
    ``read_timeout`` without a byte from it, ``timeout`` for a whole fetch (all hosts
    and retries); ``retries`` more rounds over the hosts after a timeout, a dropped
    connection or a 5xx; ``miss_ttl`` how long an origin 404 is remembered.
    """

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    timeout: float = 600.0
    retries: int = 1
    miss_ttl: float = 10.0


@dataclass(frozen=True)
class InventorySettings:
    """The ``inventory:`` section (docs/config.md, "Inventory"): ``rows_per_file``, the
    rows of one data file of a report (1 to 1,000,000)."""

    rows_per_file: int = 10000


@dataclass(frozen=True)
class SnapshotSettings:
    """The ``snapshots:`` section (docs/config.md, "Catalog snapshots"): how often the
    catalog is copied into the S3 stores. ``interval`` seconds between snapshots of a
    changed catalog (0: only at fsync and unmount); ``on_fsync``: fsync, fsyncdir and
    syncfs return only once a snapshot holds what they made durable; ``keep``: the
    snapshots kept per store (1 to 100)."""

    interval: float = 30.0
    on_fsync: bool = True
    keep: int = 3


@dataclass(frozen=True)
class Config:
    """A validated mount configuration; all paths are absolute."""

    path: "Path | None"
    mountpoint: "Path | None"
    store: Path
    keys: Path
    appid: str
    region: str
    regions: "tuple[str, ...]"
    buckets: "tuple[BucketSpec, ...]"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    cache_size: int = DEFAULT_CACHE_SIZE
    write_buffer: int = DEFAULT_WRITE_BUFFER
    log_file: "Path | None" = None
    log_level: str = "warning"
    allow_other: bool = False
    #: the kernel checks permissions even where only root can reach the mount
    default_permissions: bool = False
    writeback_cache: bool = False
    fsync_on_close: bool = False
    #: longest busy poll for the next FUSE request before the daemon sleeps (0: none)
    request_poll_us: int = DEFAULT_REQUEST_POLL_US
    #: which FUSE request loop answers the kernel (FUSE_LOOPS)
    fuse_loop: str = "native"
    api: ApiConfig = ApiConfig()
    origin: OriginSettings = OriginSettings()
    inventory: InventorySettings = InventorySettings()
    console: ConsoleConfig = ConsoleConfig()
    snapshots: SnapshotSettings = SnapshotSettings()
    #: region -> S3StoreSettings for regions whose chunks live on an S3 service
    #: (every other region keeps a local folder); a tuple of pairs, sorted
    stores: "tuple[tuple[str, S3StoreSettings], ...]" = ()

    def store_of(self, region):
        """The :class:`S3StoreSettings` of ``region``, or None for a local store."""
        return dict(self.stores).get(region)

    def bucket(self, name):
        """The :class:`BucketSpec` called *name*, or None."""
        for spec in self.buckets:
            if spec.name == name:
                return spec
        return None


def parse_size(value):
    """Turn ``1048576``, ``"1MiB"``, ``"256 MiB"``, ``"64K"`` into bytes.

    Units are binary and case-insensitive: B, K/KiB, M/MiB, G/GiB, T/TiB.
    Raises ValueError with a short reason (booleans, floats, negative
    numbers, KB/MB/GB and unknown units are refused).
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1MiB or 1048576")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size that is not negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 1MiB or 1048576")
    match = _SIZE.match(value)
    if not match:
        raise ValueError("expected a whole number with an optional unit such as 1MiB")
    number, unit = match.groups()
    unit = unit.lower()
    if unit in _AMBIGUOUS_UNITS:
        raise ValueError(f"ambiguous unit {match.group(2)}: write {_AMBIGUOUS_UNITS[unit]} (powers of 1024)")
    if unit not in _UNITS:
        raise ValueError("expected a unit among B, K, KiB, M, MiB, G, GiB, T, TiB")
    return int(number) * _UNITS[unit]


def format_size(size):
    """The shortest exact binary spelling of *size*: ``1MiB``, ``65536`` -> ``64KiB``."""
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def load(path, *, mountpoint=None, overrides=None):
    """Read and validate the YAML configuration file at *path*.

    Relative paths in the file resolve against the file's folder;
    *mountpoint* (from the command line, relative to the current directory)
    replaces the file's ``mountpoint``. *overrides* (top-level key -> value,
    e.g. from ``mount -o``) replace the file's values before validation.
    Returns a :class:`Config`; raises :class:`errors.ConfigError` (one line,
    see the module docstring).
    """
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"{source}: cannot read config file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.ConfigError(f"{source}: config file is not UTF-8 text (bad byte at offset {exc.start})") from None
    lines = {}
    try:
        # the reader refuses control characters already here, before any parsing
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(_one_line(f"{source}: malformed YAML: {exc}")) from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _collect_lines(node, (), lines, set(), _Context(source, lines))
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = exc.problem or exc.context or "syntax error"
        raise errors.ConfigError(_one_line(f"{where}: malformed YAML: {problem}")) from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(_one_line(f"{source}: malformed YAML: {exc}")) from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        # an explicit tag (!!float, !!timestamp...) on a value that is not of that type
        raise errors.ConfigError(f"{source}: malformed YAML: a tagged value is not of its tag's "
                                 "type") from None
    finally:
        loader.dispose()
    override = Path(os.path.expanduser(mountpoint)).absolute() if mountpoint is not None else None
    if overrides and isinstance(data, dict):
        data = dict(data)
        data.update(overrides)
        for key in overrides:
            lines.pop((key,), None)  # an error in a value given here is not the file's line
    return _build(data, path.absolute().parent, _Context(source, lines),
                  path=path.absolute(), mountpoint=override)


def from_dict(data, *, base_dir, source="<config>", mountpoint=None):
    """Validate an already parsed mapping (same keys as the file).

    Relative paths resolve against *base_dir*; *source* names the origin in
    error messages; *mountpoint* overrides ``data["mountpoint"]``. The result
    has ``path=None``. Raises :class:`errors.ConfigError`.
    """
    override = Path(os.path.expanduser(mountpoint)).absolute() if mountpoint is not None else None
    return _build(data, Path(os.path.expanduser(base_dir)).absolute(), _Context(source, {}),
                  path=None, mountpoint=override)


class _Context:
    """Where errors point: the source name and a key path -> line map."""

    def __init__(self, source, lines):
        self.source = source
        self.lines = lines

    def line(self, path):
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def fail(self, path, message):
        line = self.line(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        key = _key_path(path)
        text = f"{where}: {key}: {message}" if key else f"{where}: {message}"
        raise errors.ConfigError(_one_line(text))


def _key_path(path):
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _one_line(text):
    return " ".join(text.split())


def _collect_lines(node, path, lines, seen, ctx):
    """Record the line of every key and list item; refuse duplicate keys.

    Each node is visited once, so aliases can neither loop nor blow up.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys_here = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            child = path + (key,)
            lines[child] = key_node.start_mark.line + 1
            if key in keys_here:
                ctx.fail(child, "duplicate key")
            keys_here.add(key)
            _collect_lines(value_node, child, lines, seen, ctx)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = path + (index,)
            lines[child] = item.start_mark.line + 1
            _collect_lines(item, child, lines, seen, ctx)


def _describe(value):
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()} (YAML reads yes/no/on/off as booleans)"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the text {_repr.repr(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} {_repr.repr(value)}"


def _check_keys(ctx, mapping, known, path):
    for key in mapping:
        if not isinstance(key, str):
            ctx.fail(path, f"keys must be names, found {_describe(key)}")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"
            ctx.fail(path + (key,), f"unknown key{hint}")


def _text(ctx, data, path, *, required=False, default=None):
    key = path[-1]
    if key not in data:
        if required:
            ctx.fail(path, "required key is missing")
        return default
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        ctx.fail(path, f"expected text, found {_describe(value)}")
    return value.strip()


def _path(ctx, data, path, base_dir, *, required=False):
    key = path[-1]
    if key in data and data[key] is None and not required:
        return None
    text = _text(ctx, data, path, required=required)
    if text is None:
        return None
    # os.path, not pathlib: Path("./~x") drops the "./" and would read "~x" as a user's home
    expanded = os.path.expanduser(text)
    if expanded.startswith("~"):
        ctx.fail(path, f"cannot find the home directory of {_describe(text)}")
    return Path(os.path.normpath(base_dir / expanded))


def _size(ctx, data, path, default):
    key = path[-1]
    if key not in data:
        return default
    try:
        return parse_size(data[key])
    except ValueError as exc:
        ctx.fail(path, f"{exc}, found {_describe(data[key])}")


def _flag(ctx, data, path):
    value = data.get(path[-1], False)
    if not isinstance(value, bool):
        ctx.fail(path, f"expected true or false, found {_describe(value)}")
    return value


def _appid(ctx, data):
    path = ("appid",)
    if "appid" not in data:
        ctx.fail(path, "required key is missing")
    value = data["appid"]
    # An unquoted APPID arrives as a YAML integer; accept it.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        value = str(value)
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]+", value.strip()):
        ctx.fail(path, f"expected the APPID as digits such as \"1250000000\", found {_describe(value)}")
    return value.strip()


def _region(ctx, value, path):
    if not isinstance(value, str):
        ctx.fail(path, f"expected a region name such as ap-guangzhou, found {_describe(value)}")
    try:
        names.validate_region(value)
    except errors.InvalidArgument:
        ctx.fail(path, f"expected a region name such as ap-guangzhou, found {_describe(value)}")
    return value


def _regions(ctx, data):
    if "regions" not in data:
        return None
    value = data["regions"]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        ctx.fail(("regions",), f"expected a non-empty list of regions, found {_describe(value)}")
    out = []
    for index, item in enumerate(value):
        region = _region(ctx, item, ("regions", index))
        if region not in out:
            out.append(region)
    return tuple(out)


def _buckets(ctx, data, appid, region, regions):
    value = data.get("buckets", [])
    if value is None:
        value = []
    if not isinstance(value, list):
        ctx.fail(("buckets",), f"expected a list of buckets, found {_describe(value)}")
    specs = []
    seen = set()
    for index, item in enumerate(value):
        path = ("buckets", index)
        if isinstance(item, str):
            item = {"name": item}
            name_path = path
        elif isinstance(item, dict):
            _check_keys(ctx, item, BUCKET_KEYS, path)
            name_path = path + ("name",)
        else:
            ctx.fail(path, f"expected a bucket name or a mapping with name/region/encryption, "
                           f"found {_describe(item)}")
        if "name" not in item:
            ctx.fail(name_path, "required key is missing")
        name = item["name"]
        if not isinstance(name, str):
            ctx.fail(name_path, f"expected a bucket name such as photos-{appid}, found {_describe(name)}")
        bucket_region = region
        if item.get("region") is not None:
            bucket_region = _region(ctx, item["region"], path + ("region",))
            if bucket_region not in regions:
                ctx.fail(path + ("region",),
                         f"expected one of the configured regions ({', '.join(regions)}), "
                         f"found {bucket_region!r}")
        try:
            names.validate_bucket_name(name, bucket_region, appid)
        except errors.InvalidBucketName as exc:
            ctx.fail(name_path, f"{exc.code}: {exc}")
        if name in seen:
            ctx.fail(name_path, f"bucket {name!r} is listed twice")
        seen.add(name)
        encryption = item.get("encryption")
        if encryption is not None and encryption not in CONFIG_ENCRYPTIONS:
            ctx.fail(path + ("encryption",),
                     f"expected AES256, SM4 or nothing, found {_describe(encryption)}")
        specs.append(BucketSpec(name=name, region=bucket_region, encryption=encryption))
    return tuple(specs)


def _nested(inner, outer):
    """True when *inner* is *outer* or lies below it (symlinks resolved)."""
    inner, outer = inner.resolve(), outer.resolve()
    return inner == outer or outer in inner.parents


def _build(data, base_dir, ctx, *, path, mountpoint):
    if not isinstance(data, dict):
        found = "an empty document" if data is None else _describe(data)
        ctx.fail((), f"expected a mapping of settings at the top level, found {found}")
    _check_keys(ctx, data, TOP_KEYS, ())
    for key in REQUIRED_KEYS:
        if key not in data:
            ctx.fail((key,), "required key is missing")

    store = _path(ctx, data, ("store",), base_dir, required=True)
    keys = _path(ctx, data, ("keys",), base_dir, required=True)
    if mountpoint is None:
        mountpoint = _path(ctx, data, ("mountpoint",), base_dir)
    appid = _appid(ctx, data)

    regions = _regions(ctx, data)
    if "region" in data:
        region = _region(ctx, data["region"], ("region",))
    else:
        region = regions[0] if regions else DEFAULT_REGION
    if regions is None:
        regions = (region,)
    elif region not in regions:
        ctx.fail(("region",), f"expected one of the configured regions ({', '.join(regions)}), "
                              f"found {region!r}")
    buckets = _buckets(ctx, data, appid, region, regions)

    chunk_size = _size(ctx, data, ("chunk_size",), DEFAULT_CHUNK_SIZE)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size % CHUNK_ALIGN:
        ctx.fail(("chunk_size",), "expected a multiple of 64KiB between 64KiB and 64MiB, "
                                  f"found {format_size(chunk_size)}")
    cache_size = _size(ctx, data, ("cache_size",), DEFAULT_CACHE_SIZE)
    if 0 < cache_size < chunk_size:
        ctx.fail(("cache_size",), f"expected 0 (no cache) or at least chunk_size "
                                  f"({format_size(chunk_size)}), found {format_size(cache_size)}")
    write_buffer = _size(ctx, data, ("write_buffer",), DEFAULT_WRITE_BUFFER)
    if write_buffer < chunk_size:
        ctx.fail(("write_buffer",), f"expected at least chunk_size ({format_size(chunk_size)}), "
                                    f"found {format_size(write_buffer)}")

    log_file = _path(ctx, data, ("log_file",), base_dir)
    log_level = data.get("log_level", "warning")
    if not isinstance(log_level, str) or log_level.lower() not in LOG_LEVELS:
        ctx.fail(("log_level",), f"expected one of {', '.join(LOG_LEVELS)}, found {_describe(log_level)}")

    # The key store must stay apart from the data it protects, and the daemon
    # must never read or write its own backing files through its own mount.
    if _nested(keys, store):
        ctx.fail(("keys",), f"expected a folder outside store ({store}), found {keys}")
    if _nested(store, keys):
        ctx.fail(("store",), f"expected a folder outside keys ({keys}), found {store}")
    if mountpoint is not None:
        for key, folder in (("store", store), ("keys", keys)):
            if _nested(folder, mountpoint) or _nested(mountpoint, folder):
                ctx.fail((key,), f"expected a folder apart from the mountpoint ({mountpoint}), "
                                 f"found {folder}")

    api = _api(ctx, data, base_dir, store, regions)
    console = _console(ctx, data, api)
    origin = _origin(ctx, data)
    inventory = _inventory(ctx, data)
    stores = _stores(ctx, data, base_dir, store, regions)
    snapshots = _snapshots(ctx, data)

    return Config(
        path=path,
        mountpoint=mountpoint,
        store=store,
        keys=keys,
        appid=appid,
        region=region,
        regions=regions,
        buckets=buckets,
        chunk_size=chunk_size,
        cache_size=cache_size,
        write_buffer=write_buffer,
        log_file=log_file,
        log_level=log_level.lower(),
        allow_other=_flag(ctx, data, ("allow_other",)),
        default_permissions=_flag(ctx, data, ("default_permissions",)),
        writeback_cache=_flag(ctx, data, ("writeback_cache",)),
        fsync_on_close=_flag(ctx, data, ("fsync_on_close",)),
        request_poll_us=_request_poll(ctx, data),
        fuse_loop=_fuse_loop(ctx, data),
        api=api,
        origin=origin,
        inventory=inventory,
        console=console,
        stores=stores,
        snapshots=snapshots,
    )


@dataclass(frozen=True)
class S3StoreSettings:
    """One region's chunk store on an S3-compatible service (docs/config.md, "S3 stores").

    ``endpoint`` is an http(s) URL; ``prefix`` is put before each blob's name;
    ``credentials`` a 0600 file (checked when the store is opened);
    ``signing_region`` the region name for SigV4 (None: ``us-east-1``);
    times in seconds; ``cache`` the read cache folder, ``cache_size`` its limit
    in bytes (0: no cache); ``max_connections`` the connection pool's size;
    ``write_back`` stages blobs in ``staging`` (at most ``staging_size`` bytes) and
    uploads them with ``upload_threads`` threads.
    """

    endpoint: str
    bucket: str
    credentials: Path
    cache: Path
    prefix: str = ""
    signing_region: "str | None" = None
    verify_tls: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retry_time: float = 60.0
    cache_size: int = 1 * GiB
    max_connections: int = 16
    write_back: bool = False
    staging: "Path | None" = None
    staging_size: int = 1 * GiB
    upload_threads: int = 4


S3_KEYS = ("type", "endpoint", "bucket", "prefix", "credentials", "signing_region", "verify_tls",
           "connect_timeout", "read_timeout", "retry_time", "cache", "cache_size",
           "max_connections", "write_back", "staging", "staging_size", "upload_threads")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def _stores(ctx, data, base_dir, store, regions):
    """The ``stores:`` section: region -> store settings; regions not named stay local."""
    value = data.get("stores")
    if value is None:
        return ()
    if not isinstance(value, dict):
        ctx.fail(("stores",), f"expected a mapping of region to store settings, "
                              f"found {_describe(value)}")
    out = []
    for region, item in value.items():
        path = ("stores", region)
        if region not in regions:
            ctx.fail(path, f"expected one of the configured regions ({', '.join(regions)}), "
                           f"found {region!r}")
        if not isinstance(item, dict):
            ctx.fail(path, f"expected a mapping with type: local or type: s3, "
                           f"found {_describe(item)}")
        kind = item.get("type", "local")
        if kind == "local":
            _check_keys(ctx, item, ("type",), path)
            continue
        if kind != "s3":
            ctx.fail(path + ("type",), f"expected local or s3, found {_describe(kind)}")
        _check_keys(ctx, item, S3_KEYS, path)
        endpoint = _text(ctx, item, path + ("endpoint",), required=True)
        if not re.match(r"https?://[^/\s]+/?\Z", endpoint):
            ctx.fail(path + ("endpoint",), f"expected an http:// or https:// URL with no path, "
                                           f"found {_describe(endpoint)}")
        bucket = _text(ctx, item, path + ("bucket",), required=True)
        if not _S3_BUCKET.match(bucket):
            ctx.fail(path + ("bucket",), f"expected an S3 bucket name (3 to 63 lower-case "
                                         f"letters, digits, dots and hyphens), found {bucket!r}")
        prefix = _text(ctx, item, path + ("prefix",), default="")
        if prefix.startswith("/") or len(prefix.encode()) > 512:
            ctx.fail(path + ("prefix",), f"expected a key prefix not starting with / (at most "
                                         f"512 bytes), found {prefix!r}")
        credentials = _path(ctx, item, path + ("credentials",), base_dir, required=True)
        signing_region = _text(ctx, item, path + ("signing_region",))
        cache = _path(ctx, item, path + ("cache",), base_dir) or store / "cache" / region
        if _nested(cache, store / "blobs"):
            ctx.fail(path + ("cache",), f"expected a folder outside {store / 'blobs'}, "
                                        f"found {cache}")
        connections = item.get("max_connections", S3StoreSettings.max_connections)
        if isinstance(connections, bool) or not isinstance(connections, int) or \
                not 1 <= connections <= 256:
            ctx.fail(path + ("max_connections",), f"expected a whole number from 1 to 256, "
                                                  f"found {_describe(connections)}")
        verify = item.get("verify_tls", True)
        if not isinstance(verify, bool):
            ctx.fail(path + ("verify_tls",), f"expected true or false, found {_describe(verify)}")
        write_back = item.get("write_back", False)
        if not isinstance(write_back, bool):
            ctx.fail(path + ("write_back",), f"expected true or false, "
                                             f"found {_describe(write_back)}")
        staging = _path(ctx, item, path + ("staging",), base_dir) or store / "staging" / region
        others = [(store / "blobs", "the store's blobs"), (cache, "the read cache")]
        others += [(o.staging, "the upload queue of %s" % r) for r, o in out]
        for other, what in others:
            if _nested(staging, other) or _nested(other, staging):
                ctx.fail(path + ("staging",), f"expected a folder apart from {what} ({other}), "
                                              f"found {staging}")
        threads = item.get("upload_threads", S3StoreSettings.upload_threads)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
            ctx.fail(path + ("upload_threads",), f"expected a whole number from 1 to 64, "
                                                 f"found {_describe(threads)}")
        d = S3StoreSettings
        out.append((region, S3StoreSettings(
            endpoint=endpoint.rstrip("/"), bucket=bucket, prefix=prefix,
            credentials=credentials, signing_region=signing_region, verify_tls=verify,
            connect_timeout=_seconds(ctx, item, path + ("connect_timeout",), d.connect_timeout),
            read_timeout=_seconds(ctx, item, path + ("read_timeout",), d.read_timeout),
            retry_time=_seconds(ctx, item, path + ("retry_time",), d.retry_time),
            cache=cache, cache_size=_size(ctx, item, path + ("cache_size",), d.cache_size),
            max_connections=connections, write_back=write_back, staging=staging,
            staging_size=_size(ctx, item, path + ("staging_size",), d.staging_size),
            upload_threads=threads)))
    return tuple(sorted(out))


def _section(ctx, data, name, keys, what):
    """The mapping under top-level key ``name`` (None when absent), its keys checked."""
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        ctx.fail((name,), f"expected a mapping of {what}, found {_describe(value)}")
    _check_keys(ctx, value, keys, (name,))
    return value


def _fuse_loop(ctx, data):
    value = data.get("fuse_loop", "native")
    if value not in FUSE_LOOPS:
        ctx.fail(("fuse_loop",), f"expected one of {', '.join(FUSE_LOOPS)}, "
                                 f"found {_describe(value)}")
    return value


def _request_poll(ctx, data):
    value = data.get("request_poll_us", DEFAULT_REQUEST_POLL_US)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= MAX_REQUEST_POLL_US:
        ctx.fail(("request_poll_us",), f"expected a whole number of microseconds from 0 to "
                                       f"{MAX_REQUEST_POLL_US}, found {_describe(value)}")
    return value


def _inventory(ctx, data):
    """The ``inventory:`` section (how reports are split into data files)."""
    value = _section(ctx, data, "inventory", ("rows_per_file",), "inventory settings")
    if value is None:
        return InventorySettings()
    rows = value.get("rows_per_file", InventorySettings.rows_per_file)
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= 1_000_000:
        ctx.fail(("inventory", "rows_per_file"), f"expected a whole number from 1 to 1000000, "
                                                 f"found {_describe(rows)}")
    return InventorySettings(rows_per_file=rows)


def _snapshots(ctx, data):
    """The ``snapshots:`` section (catalog snapshots into the S3 stores)."""
    value = _section(ctx, data, "snapshots", ("interval", "on_fsync", "keep"),
                     "snapshot settings")
    if value is None:
        return SnapshotSettings()
    d = SnapshotSettings()
    interval = value.get("interval", d.interval)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or \
            not 0 <= interval <= 86400:
        ctx.fail(("snapshots", "interval"), f"expected seconds from 0 (only at fsync and "
                                            f"unmount) to 86400, found {_describe(interval)}")
    keep = value.get("keep", d.keep)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 100:
        ctx.fail(("snapshots", "keep"), f"expected a whole number from 1 to 100, "
                                        f"found {_describe(keep)}")
    on_fsync = value.get("on_fsync", d.on_fsync)
    if not isinstance(on_fsync, bool):
        ctx.fail(("snapshots", "on_fsync"), f"expected true or false, found {_describe(on_fsync)}")
    return SnapshotSettings(interval=float(interval), on_fsync=on_fsync, keep=keep)


def _origin(ctx, data):
    """The ``origin:`` section (time limits and retries of origin pull)."""
    value = _section(ctx, data, "origin", ORIGIN_KEYS, "origin pull settings")
    if value is None:
        return OriginSettings()
    d = OriginSettings()
    retries = value.get("retries", d.retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        ctx.fail(("origin", "retries"), f"expected a whole number from 0 to 10, "
                                        f"found {_describe(retries)}")
    miss_ttl = value.get("miss_ttl", d.miss_ttl)
    if isinstance(miss_ttl, bool) or not isinstance(miss_ttl, (int, float)) or \
            not 0 <= miss_ttl <= 3600:
        ctx.fail(("origin", "miss_ttl"), f"expected a number of seconds from 0 to 3600, "
                                         f"found {_describe(miss_ttl)}")
    return OriginSettings(
        connect_timeout=_seconds(ctx, value, ("origin", "connect_timeout"), d.connect_timeout),
        read_timeout=_seconds(ctx, value, ("origin", "read_timeout"), d.read_timeout),
        timeout=_seconds(ctx, value, ("origin", "timeout"), d.timeout),
        retries=retries,
        miss_ttl=float(miss_ttl),
    )


def _console(ctx, data, api):
    """The ``console:`` section; absent or empty means no console."""
    value = data.get("console")
    if value is None:
        return ConsoleConfig(credentials=api.credentials)
    if not isinstance(value, dict):
        ctx.fail(("console",), f"expected a mapping of console settings, found {_describe(value)}")
    _check_keys(ctx, value, CONSOLE_KEYS, ("console",))
    host, port = _listen(ctx, value.get("listen", DEFAULT_CONSOLE_LISTEN), ("console", "listen"))
    allow_remote = _flag(ctx, value, ("console", "allow_remote"))
    if not _is_loopback(host) and not allow_remote:
        ctx.fail(("console", "listen"), f"{host} is not a loopback address: set "
                                        f"console.allow_remote: true to serve other hosts")
    timeout = _seconds(ctx, value, ("console", "session_timeout"), DEFAULT_SESSION_TIMEOUT)
    if timeout < 60:
        ctx.fail(("console", "session_timeout"), f"expected 60 to 3600 seconds, found {timeout:g}")
    return ConsoleConfig(enabled=_flag(ctx, value, ("console", "enabled")), host=host, port=port,
                         allow_remote=allow_remote, session_timeout=timeout,
                         credentials=api.credentials)


def _listen(ctx, value, path):
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    if not isinstance(value, str):
        ctx.fail(path, f"expected host:port such as {DEFAULT_API_LISTEN}, found {_describe(value)}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535 or \
            (not text.startswith("[") and ":" in host):
        ctx.fail(path, f"expected host:port such as {DEFAULT_API_LISTEN} (IPv6 as [::1]:8360), "
                       f"found {_describe(value)}")
    return host, int(port)


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _seconds(ctx, data, path, default):
    key = path[-1]
    if key not in data:
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        ctx.fail(path, f"expected a number of seconds above 0 and at most 3600, "
                       f"found {_describe(value)}")
    return float(value)


def _api(ctx, data, base_dir, store, regions):
    """The ``api:`` section; absent or empty means the API is off."""
    endpoints = tuple(f"cos.{r}.myqcloud.com" for r in regions)
    default_credentials = store / CREDENTIALS_NAME
    value = data.get("api")
    if value is None:
        return ApiConfig(endpoints=endpoints, credentials=default_credentials)
    if not isinstance(value, dict):
        ctx.fail(("api",), f"expected a mapping of API settings, found {_describe(value)}")
    _check_keys(ctx, value, API_KEYS, ("api",))
    host, port = _listen(ctx, value.get("listen", DEFAULT_API_LISTEN), ("api", "listen"))
    allow_remote = _flag(ctx, value, ("api", "allow_remote"))
    if not _is_loopback(host) and not allow_remote:
        ctx.fail(("api", "listen"), f"{host} is not a loopback address: set api.allow_remote: "
                                    f"true to serve other hosts, found {_describe(value['listen'])}")
    if "endpoints" in value:
        raw = value["endpoints"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            ctx.fail(("api", "endpoints"), f"expected a non-empty list of host names such as "
                                           f"cos.ap-guangzhou.myqcloud.com, found {_describe(raw)}")
        found = []
        for index, item in enumerate(raw):
            where = ("api", "endpoints", index)
            if not isinstance(item, str) or not _HOST_SUFFIX.match(item.strip().lower().rstrip(".")):
                ctx.fail(where, f"expected a host name such as cos.ap-guangzhou.myqcloud.com, "
                                f"found {_describe(item)}")
            name = item.strip().lower().rstrip(".")
            if name not in found:
                found.append(name)
        endpoints = tuple(found)
    credentials = _path(ctx, value, ("api", "credentials"), base_dir) or default_credentials
    tls_cert = _path(ctx, value, ("api", "tls_cert"), base_dir)
    tls_key = _path(ctx, value, ("api", "tls_key"), base_dir)
    if (tls_cert is None) != (tls_key is None):
        missing = "tls_key" if tls_key is None else "tls_cert"
        ctx.fail(("api", missing), "tls_cert and tls_key go together: give both or neither")
    max_header = _size(ctx, value, ("api", "max_header_bytes"), DEFAULT_MAX_HEADER_BYTES)
    if not 4 * KiB <= max_header <= 1 * MiB:
        ctx.fail(("api", "max_header_bytes"), f"expected a size from 4KiB to 1MiB, "
                                              f"found {format_size(max_header)}")
    max_xml = _size(ctx, value, ("api", "max_xml_bytes"), DEFAULT_MAX_XML_BYTES)
    if not 64 * KiB <= max_xml <= 64 * MiB:
        ctx.fail(("api", "max_xml_bytes"), f"expected a size from 64KiB to 64MiB, "
                                           f"found {format_size(max_xml)}")
    return ApiConfig(
        enabled=_flag(ctx, value, ("api", "enabled")),
        host=host,
        port=port,
        allow_remote=allow_remote,
        endpoints=endpoints,
        credentials=credentials,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_header_bytes=max_header,
        max_xml_bytes=max_xml,
        idle_timeout=_seconds(ctx, value, ("api", "idle_timeout"), DEFAULT_IDLE_TIMEOUT),
    )
