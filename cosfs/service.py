"""Running cosfs as a system service: what mount(8), systemd and logrotate need.

- :func:`parse_mount_options`: the ``-o`` options that ``mount(8)`` hands to
  the ``mount.fuse.cosfs`` helper (an ``/etc/fstab`` line), mapped onto
  configuration keys, kernel mount flags, or accepted and ignored; anything
  else is refused with one line (``docs/config.md`` lists them all).
- :func:`sd_notify`: systemd's readiness protocol (``Type=notify``): one
  datagram to the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a path, or an
  abstract name written with a leading ``@``). No library needed.
- Logging: :class:`ReopeningFileHandler` reopens its file on SIGHUP (after
  logrotate moved it), creating it 0600; :func:`stderr_is_journal` tells
  whether standard error is connected to the systemd journal
  (``JOURNAL_STREAM``), which stamps lines itself, so the daemon then writes
  a syslog priority prefix instead of a timestamp; :class:`LastError` keeps
  the last ERROR for the status report.
- :func:`format_status`: the human form of the status a running daemon
  reports (``cosfs status``).

Pure functions and small classes; blocking I/O only in :func:`sd_notify` (one
non-blocking datagram) and when a log file is (re)opened.
"""

import datetime
import logging
import os
import socket
from dataclasses import dataclass, field

from .config import LOG_LEVELS, parse_size

log = logging.getLogger(__name__)


# -- mount(8) options ----------------------------------------------------------------------
#: ``-o`` options that set a configuration key (the value overrides the file's).
CONFIG_OPTIONS = {
    "allow_other": "flag",
    "default_permissions": "flag",
    "writeback_cache": "flag",
    "fsync_on_close": "flag",
    "log_file": "path",
    "log_level": "level",
    "cache_size": "size",
    "write_buffer": "size",
}

#: Options handed on to the kernel mount, and the options that undo them.
KERNEL_OPTIONS = ("ro", "noexec")
_UNDO = {"rw": "ro", "exec": "noexec"}

#: Options mount(8), systemd or mount.fuse3 pass that need nothing from cosfs: fstab
#: bookkeeping (defaults, auto, noauto, _netdev, nofail, user...), defaults cosfs keeps
#: anyway (async; rw and exec above), and flags whose secure default cosfs
#: always keeps (the mount is always nosuid and nodev). Access times are the catalog's.
IGNORED_OPTIONS = frozenset((
    "defaults", "auto", "noauto", "_netdev", "nofail", "user", "nouser", "users", "owner",
    "group", "async", "dev", "nodev", "suid", "nosuid", "atime", "noatime",
    "relatime", "norelatime", "strictatime", "nostrictatime", "diratime", "nodiratime",
    "lazytime", "nolazytime", "silent", "loud",
))
IGNORED_PREFIXES = ("x-", "X-", "comment=", "uhelper=", "helper=")

#: Options refused with a reason rather than as unknown.
REFUSED_OPTIONS = {
    "sync": "synchronous writes are not supported: use fsync_on_close",
    "dirsync": "synchronous writes are not supported: use fsync_on_close",
    "allow_root": "not supported: use allow_other",
}

_TRUE = ("", "true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class OptionError(ValueError):
    """A ``-o`` option cosfs refuses; the message is one line naming it."""


@dataclass
class MountOptions:
    config: dict = field(default_factory=dict)   # configuration key -> value
    kernel: list = field(default_factory=list)   # flags for the kernel mount
    ignored: list = field(default_factory=list)  # accepted, nothing to do
    unknown: list = field(default_factory=list)  # refused, kept only when sloppy


def split_options(texts):
    """``["rw,allow_other", "log_level=info"]`` -> ``["rw", "allow_other", "log_level=info"]``."""
    out = []
    for text in texts:
        out += [part for part in text.split(",") if part]
    return out


def parse_mount_options(texts, *, sloppy=False) -> MountOptions:
    """Sort the ``-o`` options (each text comma-separated) into a :class:`MountOptions`.

    A later option overrides an earlier one for the same key, as in mount(8).
    Raises OptionError for an unknown option (unless ``sloppy``: then it is
    kept in ``unknown``) or a bad value.
    """
    result = MountOptions()
    for option in split_options(texts):
        name, eq, value = option.partition("=")
        kind = CONFIG_OPTIONS.get(name)
        if kind is not None:
            result.config[name] = _option_value(name, kind, value, bool(eq))
        elif option in KERNEL_OPTIONS:
            if option not in result.kernel:
                result.kernel.append(option)
        elif option in _UNDO:
            # rw after ro, exec after noexec: the later option wins, as in mount(8)
            if _UNDO[option] in result.kernel:
                result.kernel.remove(_UNDO[option])
            result.ignored.append(option)
        elif option in IGNORED_OPTIONS or option.startswith(IGNORED_PREFIXES):
            result.ignored.append(option)
        elif name in REFUSED_OPTIONS:
            raise OptionError("option %s: %s" % (name, REFUSED_OPTIONS[name]))
        elif sloppy:
            result.unknown.append(option)
        else:
            raise OptionError("unknown option %r (cosfs takes %s, and the usual fstab options; "
                              "see docs/config.md)" % (option[:60], ", ".join(CONFIG_OPTIONS)))
    return result


def _option_value(name, kind, value, has_value):
    if kind == "flag":
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise OptionError("option %s: expected %s or %s=yes/no, found %r"
                          % (name, name, name, value[:40]))
    if not has_value or not value:
        raise OptionError("option %s needs a value: %s=..." % (name, name))
    if kind == "size":
        try:
            parse_size(value)
        except ValueError as exc:
            raise OptionError("option %s: %s, found %r" % (name, exc, value[:40])) from None
    elif kind == "level" and value.lower() not in LOG_LEVELS:
        raise OptionError("option %s: expected one of %s, found %r"
                          % (name, ", ".join(LOG_LEVELS), value[:40]))
    return value.lower() if kind == "level" else value


# -- systemd -----------------------------------------------------------------------------------
def sd_notify(message, environ=None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd's notification socket.

    A no-op returning False when ``NOTIFY_SOCKET`` is not set (not run by
    systemd with ``Type=notify``). A failure to send is logged, never raised:
    the mount works whether or not systemd hears about it.
    """
    environ = os.environ if environ is None else environ
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is not a path or an abstract socket name; cannot "
                    "notify systemd", address[:80])
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", message.split("\n")[0], exc)
        return False
    return True


def stderr_is_journal(environ=None) -> bool:
    """True if standard error is the systemd journal's stream (``JOURNAL_STREAM``
    names its device and inode), not a file or terminal it was redirected to."""
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(2)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


# -- logging -------------------------------------------------------------------------------------
LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
#: the journal adds time, host and pid itself; ``<N>`` sets the entry's priority
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


class JournalFormatter(logging.Formatter):
    """Records for the journal: a syslog priority prefix (``<3>`` for ERROR...) so
    ``journalctl -p err`` finds them, and no timestamp or pid (the journal has both)."""

    def __init__(self):
        super().__init__(JOURNAL_FORMAT)

    def format(self, record):
        record.priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        return super().format(record)


class ReopeningFileHandler(logging.FileHandler):
    """A log file that :meth:`reopen` opens again by name (after logrotate moved it).

    The file is created with mode 0600 whatever the umask: object names in the
    log are private.
    """

    def __init__(self, filename):
        super().__init__(filename, mode="a", encoding="utf-8")

    def _open(self):
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)

    def reopen(self):
        """Switch to a freshly opened file of the same name; the old one is closed."""
        self.acquire()
        try:
            old = self.stream
            self.stream = self._open()
            if old is not None:
                try:
                    old.close()
                except OSError:
                    pass
        finally:
            self.release()


def reopen_log_files(logger=None) -> list:
    """Reopen every :class:`ReopeningFileHandler` of ``logger`` (the root logger);
    returns their paths. Errors are logged (to the old file) and skipped."""
    logger = logger or logging.getLogger()
    done = []
    for handler in list(logger.handlers):
        if isinstance(handler, ReopeningFileHandler):
            try:
                handler.reopen()
                done.append(handler.baseFilename)
            except OSError as exc:
                log.error("cannot reopen log file %s: %s", handler.baseFilename, exc)
    return done


def log_destination(logger=None):
    """Where ``logger`` (the root logger) writes: a file path, ``"journal"`` or
    ``"stderr"``."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
        if isinstance(handler.formatter, JournalFormatter):
            return "journal"
    return "stderr"


class LastError(logging.Handler):
    """Remembers the last ERROR (or worse) record and counts them, for the status."""

    MAX_MESSAGE = 500

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0
        self.last = None  # {"time": ISO UTC, "logger": name, "message": first line}

    def emit(self, record):
        try:
            message = record.getMessage().splitlines()[0] if record.getMessage() else ""
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        if len(message) > self.MAX_MESSAGE:
            message = message[:self.MAX_MESSAGE] + "..."
        self.count += 1
        self.last = {"time": iso_time(record.created), "logger": record.name,
                     "message": message}


# -- status --------------------------------------------------------------------------------------
def iso_time(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def human_bytes(n):
    """1536 -> ``1.5 KiB``; exact below 1 KiB."""
    n = int(n)
    if n < 1024:
        return "%d B" % n
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024.0
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit)
    return "%d B" % n  # pragma: no cover


def human_duration(seconds):
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd %dh %dm" % (days, hours, minutes)
    if hours:
        return "%dh %dm" % (hours, minutes)
    if minutes:
        return "%dm %ds" % (minutes, secs)
    return "%ds" % secs


def format_status(st) -> str:
    """The status dict of a running daemon (see ``mount.DaemonStatus``) as text."""
    keys = st.get("key_store", {})
    unc = st.get("uncommitted", {})
    cache = st.get("cache", {})
    errors = st.get("errors", {})
    retired = keys.get("retired") or []
    lines = [
        ("mounted at", "%s (pid %s, cosfs %s)" % (st.get("mountpoint"), st.get("pid"),
                                                  st.get("version"))),
        ("since", "%s (up %s)" % (st.get("started"), human_duration(st.get("uptime_seconds", 0)))),
        ("store", st.get("store")),
        ("key store", "%s (current master key %s; versions %s%s)" % (
            keys.get("path"), keys.get("current"), ", ".join(keys.get("versions", [])),
            "; retired " + ", ".join(retired) if retired else "")),
        ("log", st.get("log")),
    ]
    buckets = st.get("buckets", [])
    if not buckets:
        lines.append(("buckets", "none"))
    for i, b in enumerate(buckets):
        lines.append(("buckets" if i == 0 else "", "%s (%s, %s)" % (
            b["name"], b["region"], b["encryption"] or "no default encryption")))
    if st.get("buckets_total", len(buckets)) > len(buckets):
        lines.append(("", "... %d more" % (st["buckets_total"] - len(buckets))))
    lines += [
        ("open files", str(st.get("open_files", 0))),
        ("uncommitted", "%s in %d object(s): %s buffered, %s sealed (limit %s)" % (
            human_bytes(st.get("dirty_bytes", 0)), unc.get("objects", 0),
            human_bytes(unc.get("buffered_bytes", 0)), human_bytes(unc.get("sealed_bytes", 0)),
            human_bytes(unc.get("write_buffer", 0)))),
        ("cache", "%s of %s (%d segments)" % (human_bytes(cache.get("used_bytes", 0)),
                                              human_bytes(cache.get("size_bytes", 0)),
                                              cache.get("segments", 0))),
    ]
    repl = st.get("replication")
    if repl:
        lines.append(("replication", "%d queued, %d replicated, %d failed since start%s" % (
            repl.get("queued", 0), repl.get("replicated", 0), repl.get("failed", 0),
            "; last failure: %s" % repl["last_error"] if repl.get("last_error") else "")))
    snap = st.get("catalog_snapshots")
    if snap:
        lines.append(("catalog snapshot", "%s%s" % (
            "%s, %s ago" % (snap["last"], human_duration(snap.get("age_seconds") or 0))
            if snap.get("last") else "none yet",
            "; %d failed since start" % snap["failures"] if snap.get("failures") else "")))
    last = errors.get("last")
    if last:
        lines.append(("last error", "%s: %s (%d error(s) since start)" % (
            last["time"], last["message"], errors.get("count", 0))))
    else:
        lines.append(("last error", "none"))
    width = max(len(label) for label, _ in lines)
    return "\n".join("%-*s  %s" % (width, label, value) for label, value in lines)
