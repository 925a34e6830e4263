"""The credentials file of the XML API: SecretId/SecretKey pairs and what each may do.

Format (JSON lines, UTF-8): lines starting with ``#`` and blank lines are
ignored; every other line is one JSON object::

    {"secret_id": "AKID...", "secret_key": "...", "access": "full",
     "buckets": ["photos-1250000000"], "created": "2025-01-31T12:00:00Z"}

``access`` is ``full`` or ``read-only``; ``buckets`` is null (every bucket)
or a list of bucket names the key is limited to; ``created`` is UTC in ISO
8601. A SecretId is ``AKID`` and 32 random letters and digits, a SecretKey
40 random letters and digits (both from :mod:`secrets`).

Rules:

* The file holds secrets: :func:`load` refuses one whose mode gives group or
  others any access (as the key store does), a symbolic link, or anything
  but a regular file, with a one-line :class:`cosfs.errors.CredentialsError`.
* :func:`add` and :func:`remove` rewrite the whole file atomically (a
  temporary file written with mode 0600 and fsynced, renamed over the old
  one, then the folder fsynced), under an exclusive ``flock`` on the folder,
  so concurrent commands never lose each other's change and a reader sees
  the old or the new file, never a mix.
* No secret key appears in a message, a log line or a ``repr``.

Blocking functions on files; no trio. :class:`CredentialsFile` is the
daemon's view: it re-reads the file when it changed, so ``cosfs credentials
add`` takes effect without a restart.
"""

import builtins
import datetime
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import string
from dataclasses import dataclass

from . import durable
from .errors import CredentialsError

log = logging.getLogger(__name__)

FULL = "full"
READ_ONLY = "read-only"
ACCESS = (FULL, READ_ONLY)
SECRET_ID_PREFIX = "AKID"
SECRET_ID_RANDOM = 32
SECRET_KEY_LENGTH = 40
HEADER = "# cosfs API credentials: one JSON object per line; keep this file mode 0600\n"

_ALNUM = string.ascii_letters + string.digits
_ID_RE = re.compile(r"[A-Za-z0-9]{16,128}\Z")
_KEY_RE = re.compile(r"[\x21-\x7e]{16,128}\Z")
_FIELDS = {"secret_id", "secret_key", "access", "buckets", "created"}
#: a credentials file larger than this is refused (a few thousand keys fit easily)
MAX_FILE_BYTES = 4 << 20


@dataclass(frozen=True)
class Credential:
    """One SecretId/SecretKey pair; ``buckets`` is None for every bucket."""

    secret_id: str
    secret_key: str
    access: str = FULL
    buckets: "tuple[str, ...] | None" = None
    created: str = ""

    def __repr__(self):
        return "Credential(%s, %s, buckets=%s, created=%s)" % (
            self.secret_id, self.access, "all" if self.buckets is None else [*self.buckets],
            self.created)

    __str__ = __repr__

    @property
    def read_only(self):
        return self.access == READ_ONLY

    def allows(self, bucket, write):
        """True if this key may touch ``bucket`` (None: the service) for reading or writing."""
        if write and self.read_only:
            return False
        return bucket is None or self.buckets is None or bucket in self.buckets

    def to_json(self):
        return json.dumps({"secret_id": self.secret_id, "secret_key": self.secret_key,
                           "access": self.access,
                           "buckets": None if self.buckets is None else [*self.buckets],
                           "created": self.created}, ensure_ascii=True)


class Credentials:
    """The loaded file: an ordered, read-only collection looked up by SecretId."""

    def __init__(self, entries=()):
        self._entries = tuple(entries)
        self._by_id = {c.secret_id: c for c in self._entries}

    def lookup(self, secret_id):
        """The :class:`Credential` with this SecretId, or None."""
        return self._by_id.get(secret_id)

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def __repr__(self):
        return "Credentials(%d keys)" % len(self._entries)


# -- reading ---------------------------------------------------------------------------
def _open_private(path):
    """An open fd on ``path`` after the mode checks, or raise CredentialsError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CredentialsError("credentials file %s is a symbolic link" % path) from None
        raise CredentialsError("credentials file %s: cannot open: %s"
                               % (path, exc.strerror)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CredentialsError("credentials file %s is not a regular file" % path)
    if st.st_mode & 0o077:
        os.close(fd)
        raise CredentialsError("credentials file %s has mode %04o: group and others must have "
                               "no access (chmod 600 %s)" % (path, stat.S_IMODE(st.st_mode), path))
    return fd, st


def _parse_line(path, lineno, line):
    def bad(what):
        return CredentialsError("credentials file %s:%d: %s" % (path, lineno, what))
    try:
        obj = json.loads(line)
    except ValueError:
        raise bad("not a JSON object") from None
    if not isinstance(obj, dict):
        raise bad("not a JSON object")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise bad("unknown field %r" % unknown[0][:40])
    sid, key = obj.get("secret_id"), obj.get("secret_key")
    if not isinstance(sid, str) or not _ID_RE.match(sid):
        raise bad("secret_id: expected 16 to 128 letters and digits")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        # never echo the value: it is a secret
        raise bad("secret_key of %s: expected 16 to 128 printable ASCII characters" % sid)
    access = obj.get("access", FULL)
    if access not in ACCESS:
        raise bad("access of %s: expected full or read-only" % sid)
    buckets = obj.get("buckets")
    if buckets is not None:
        if not isinstance(buckets, builtins.list) or \
                not all(isinstance(b, str) and b for b in buckets):
            raise bad("buckets of %s: expected null or a list of bucket names" % sid)
        buckets = tuple(buckets)
    created = obj.get("created", "")
    if not isinstance(created, str):
        raise bad("created of %s: expected a time as text" % sid)
    return Credential(sid, key, access, buckets, created)


def _parse(path, data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialsError("credentials file %s is not UTF-8 text" % path) from None
    entries, seen = [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cred = _parse_line(path, lineno, line)
        if cred.secret_id in seen:
            raise CredentialsError("credentials file %s:%d: secret_id %s appears twice"
                                   % (path, lineno, cred.secret_id))
        seen.add(cred.secret_id)
        entries.append(cred)
    return Credentials(entries)


def _read(path):
    """(Credentials, stat signature) of ``path``; FileNotFoundError passes through."""
    fd, st = _open_private(path)
    try:
        if st.st_size > MAX_FILE_BYTES:
            raise CredentialsError("credentials file %s is larger than %d bytes"
                                   % (path, MAX_FILE_BYTES))
        chunks = []
        while True:
            piece = os.read(fd, 1 << 16)
            if not piece:
                break
            chunks.append(piece)
    except OSError as exc:
        raise CredentialsError("credentials file %s: cannot read: %s"
                               % (path, exc.strerror)) from None
    finally:
        os.close(fd)
    return _parse(path, b"".join(chunks)), _signature(st)


def _signature(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


def load(path, *, missing_ok=False):
    """Read the credentials file at ``path``.

    Raises CredentialsError (one line) when the file is too open, not a
    regular file, malformed, or missing (unless ``missing_ok``: then an empty
    collection).
    """
    path = os.fspath(path)
    try:
        return _read(path)[0]
    except FileNotFoundError:
        if missing_ok:
            return Credentials()
        raise CredentialsError("credentials file %s does not exist (create a key with "
                               "cosfs credentials add)" % path) from None


class CredentialsFile:
    """The daemon's view of a credentials file, re-read whenever it changed.

    :meth:`lookup` costs one ``stat`` when nothing changed. A missing file
    means no key is valid (every request is refused); a file that became
    too open or malformed raises CredentialsError from :meth:`lookup` until
    it is fixed (the log says why, once per change).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self._sig = None
        self._creds = Credentials()
        self._error = None

    def current(self):
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            if self._sig != "missing":
                log.warning("credentials file %s does not exist: every API request is refused",
                            self.path)
            self._sig, self._creds, self._error = "missing", Credentials(), None
            return self._creds
        except OSError as exc:
            raise CredentialsError("credentials file %s: cannot access: %s"
                                   % (self.path, exc.strerror)) from None
        if _signature(st) != self._sig:
            try:
                creds, sig = _read(self.path)
            except FileNotFoundError:
                return self.current()
            except CredentialsError as exc:
                log.error("%s", exc)
                self._sig, self._creds, self._error = _signature(st), Credentials(), exc
                raise
            self._sig, self._creds, self._error = sig, creds, None
            log.info("credentials file %s: %d key(s)", self.path, len(creds))
        if self._error is not None:
            raise self._error
        return self._creds

    def lookup(self, secret_id):
        return self.current().lookup(secret_id)


# -- writing ---------------------------------------------------------------------------
def new_secret_id():
    return SECRET_ID_PREFIX + "".join(secrets.choice(_ALNUM) for _ in range(SECRET_ID_RANDOM))


def new_secret_key():
    return "".join(secrets.choice(_ALNUM) for _ in range(SECRET_KEY_LENGTH))


class _Locked:
    """An exclusive flock on the file's folder for one read-modify-write."""

    def __init__(self, path):
        self.folder = os.path.dirname(os.path.abspath(path))

    def __enter__(self):
        try:
            durable.makedirs(self.folder, 0o700)
            self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CredentialsError("credentials folder %s: %s"
                                   % (self.folder, exc.strerror)) from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock


def _write(path, creds):
    """Replace ``path`` with ``creds`` atomically and durably; the new file is 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    temp = os.path.join(folder, ".%s.tmp.%s" % (os.path.basename(path), secrets.token_hex(4)))
    data = (HEADER + "".join(c.to_json() + "\n" for c in creds)).encode()
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            durable.write_private(fd, data)
        finally:
            os.close(fd)
        os.rename(temp, path)
        durable.fsync_dir(folder)
    except OSError as exc:
        raise CredentialsError("credentials file %s: cannot write: %s"
                               % (path, exc.strerror)) from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def add(path, access=FULL, buckets=None):
    """Create a new key in the file at ``path`` (created 0600 if missing); return it.

    ``buckets``: None or an iterable of bucket names (duplicates dropped,
    order kept). The caller validates the names.
    """
    if access not in ACCESS:
        raise CredentialsError("access must be full or read-only, not %r" % str(access)[:40])
    if buckets is not None:
        buckets = tuple(dict.fromkeys(buckets))
    path = os.fspath(path)
    with _Locked(path):
        creds = [*load(path, missing_ok=True)]
        taken = {c.secret_id for c in creds}
        sid = new_secret_id()
        while sid in taken:
            sid = new_secret_id()
        cred = Credential(sid, new_secret_key(), access, buckets, _now())
        _write(path, creds + [cred])
    log.info("credentials: added %s (%s)", sid, access)
    return cred


def list_credentials(path):
    """Every key in the file (an empty list when the file does not exist)."""
    return [c for c in load(os.fspath(path), missing_ok=True)]


def remove(path, secret_id):
    """Remove the key ``secret_id``; True if it was there."""
    path = os.fspath(path)
    with _Locked(path):
        creds = load(path, missing_ok=True)
        if creds.lookup(secret_id) is None:
            return False
        _write(path, [c for c in creds if c.secret_id != secret_id])
    log.info("credentials: removed %s", secret_id)
    return True
