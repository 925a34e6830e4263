"""The COS-managed key store: versioned master keys that wrap per-object data keys.

The key store is a directory kept apart from the data (mode 0700) holding one
file per master key version, ``master-v1.key``, ``master-v2.key``... The
highest version is the current one: new data keys are wrapped with it, while
every older version still unwraps what it wrapped. Rotation adds a file and
never touches an existing one; :meth:`KeyStore.retire` removes an old version
that nothing needs any more (the caller checks that). The file format, the
wrapped key format and the check values are documented in ``docs/format.md``
("Key store").

Threads: :meth:`KeyStore.wrap`, :meth:`KeyStore.unwrap` and
:meth:`KeyStore.check_values` may be called from any thread at once (they do
no I/O except to pick up a version another process added); :meth:`rotate`
does blocking file I/O (fsync), so call it from a worker thread under trio,
and it serialises itself with a lock. :meth:`KeyStore.open` is blocking too.

Errors: :class:`cosfs.errors.KeyStoreError` (one line naming the path) for a
missing, unreadable, corrupt or too open store or an unknown key version;
:class:`cosfs.errors.IntegrityError` for a wrapped key that fails
authentication. Key bytes never appear in messages, logs or reprs.
"""

import datetime
import errno
import hashlib
import hmac
import logging
import os
import re
import stat
import struct
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cosfs import durable
from cosfs.errors import IntegrityError, KeyStoreError

log = logging.getLogger(__name__)

MASTER_KEY_SIZE = 32
FILE_MAGIC = "cosfs-master-key 1"
_FILE_NAME = re.compile(r"master-v([1-9][0-9]{0,8})\.key")
_TEMP_NAME = re.compile(r"\.master-v[0-9]+\.key\.tmp\.[0-9a-f]+")
# a key file being retired: renamed here before it is overwritten and unlinked
_RETIRING_NAME = re.compile(r"\.master-v([1-9][0-9]{0,8})\.key\.retiring")
_MAX_FILE_SIZE = 4096

# Wrapped data key: magic, format version, master key version number; then
# a 12-byte random nonce and the AES-256-GCM ciphertext with its 16-byte tag.
WRAP_MAGIC = b"CKW"
WRAP_FORMAT = 1
_WRAP_HEADER = struct.Struct(">3sBI")
_NONCE_SIZE = 12
_TAG_SIZE = 16

_WRAP_INFO = b"cosfs key wrap v1"
_CHECK_MESSAGE = b"cosfs key check"
_CHECK_HEX_CHARS = 32


class _MasterKey:
    """One loaded master key version; keeps derived keys only, never prints them."""

    __slots__ = ("number", "aead", "check")

    def __init__(self, number, secret):
        self.number = number
        # Separate derived keys for wrapping and for the check value, so the
        # check value recorded in the catalog says nothing about the wrap key.
        wrap_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                        info=_WRAP_INFO).derive(secret)
        self.aead = AESGCM(wrap_key)
        self.check = hmac.new(secret, _CHECK_MESSAGE, hashlib.sha256).hexdigest()[
            :_CHECK_HEX_CHARS]

    def __repr__(self):
        return "<master key v%d>" % self.number


class KeyStore:
    """A directory of master key versions; see the module docstring."""

    def __init__(self, path, keys, missing=(), leftovers=()):
        """Private: use :meth:`KeyStore.open`."""
        self._path = path
        self._lock = threading.Lock()
        # Replaced as a whole (never mutated) so readers in other threads
        # always see a consistent mapping without taking the lock.
        self._keys = dict(keys)
        self._current = self._keys[max(self._keys)]
        self._missing = tuple(sorted(missing))
        self._leftovers = tuple(sorted(leftovers))

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, path, *, create: bool, allow_gaps: bool = False) -> "KeyStore":
        """Open the key store at ``path``; with ``create``, make it if needed.

        ``create=True`` creates the directory with mode 0700 (parents with
        the default mode) and a first master key when it holds no key file.
        Nothing existing is ever overwritten or re-moded. Raises
        KeyStoreError when the store is missing (without ``create``),
        unreadable, too open (group/other bits on the directory or a key
        file), holds a corrupt, truncated or unrecognised key file, or has a
        gap in its versions. ``allow_gaps=True`` accepts gaps and leaves the
        check to the caller (:meth:`missing_versions`): versions may be
        missing because they were retired, which only the catalog knows.
        Blocking.
        """
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not create:
                raise KeyStoreError("key store %s does not exist" % path) from None
            _make_directory(path)
            st = os.stat(path)
        except OSError as exc:
            raise KeyStoreError("key store %s: cannot access: %s"
                                % (path, exc.strerror)) from None
        if not stat.S_ISDIR(st.st_mode):
            raise KeyStoreError("key store %s is not a directory" % path)
        _check_private(path, st, "directory", "700")

        keys, leftovers = _load_all(path)
        if not keys:
            if not create:
                raise KeyStoreError("key store %s holds no master key" % path)
            keys[1] = _MasterKey(1, _write_key_file(path, 1))
            log.info("created master key v1 in key store %s", path)
        missing = sorted(set(range(1, max(keys) + 1)) - set(keys))
        if missing and not allow_gaps:
            raise KeyStoreError("key store %s is missing master key %s (versions must "
                                "run from v1 without gaps)"
                                % (path, ", ".join("v%d" % n for n in missing)))
        return cls(path, keys, missing, leftovers)

    # -- versions ------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def current_version(self) -> str:
        """The version new wraps use, e.g. ``"v3"``."""
        return "v%d" % self._current.number

    def versions(self) -> list:
        """All loaded versions, oldest first: ``["v1", "v2", ...]``."""
        return ["v%d" % n for n in sorted(self._keys)]

    def missing_versions(self) -> list:
        """Versions below the current one that have no key file, oldest first.

        Always empty unless the store was opened with ``allow_gaps=True``.
        """
        return ["v%d" % n for n in self._missing]

    def retiring_leftovers(self) -> list:
        """Versions whose key file an interrupted :meth:`retire` left behind
        (renamed, perhaps partly overwritten); :meth:`retire` removes them."""
        return ["v%d" % n for n in self._leftovers]

    def retire(self, version: str) -> bool:
        """Remove the key file of ``version`` (not the current one) for good.

        The caller must have made sure first, durably, that nothing needs the
        version any more (see ``cosfs keys retire``). The file is renamed to
        ``.master-v<N>.key.retiring`` and the folder fsynced, so a crash while
        it is overwritten never leaves a damaged ``master-v<N>.key`` that
        would stop the store from opening; then it is overwritten with random
        bytes of the same length, fsynced, unlinked, and the folder fsynced.
        Also finishes a retire that was interrupted. Returns True if a file
        was removed. Blocking; KeyStoreError on any failure.
        """
        number = parse_version(version)
        with self._lock:
            if number == self._current.number:
                raise KeyStoreError("key store %s: master key v%d is the current one and "
                                    "cannot be retired" % (self._path, number))
            if number > self._current.number:
                raise KeyStoreError("key store %s does not hold master key v%d"
                                    % (self._path, number))
            final = os.path.join(self._path, "master-v%d.key" % number)
            retiring = os.path.join(self._path, ".master-v%d.key.retiring" % number)
            removed = False
            try:
                if os.path.lexists(final):
                    os.rename(final, retiring)
                    durable.fsync_dir(self._path)
                    removed = True
                if os.path.lexists(retiring):
                    _overwrite(retiring)
                    os.unlink(retiring)
                    durable.fsync_dir(self._path)
                    removed = True
            except OSError as exc:
                raise KeyStoreError("key store %s: cannot remove master key v%d: %s"
                                    % (self._path, number, exc.strerror)) from None
            if number in self._keys:
                keys = dict(self._keys)
                del keys[number]
                self._keys = keys
            self._missing = tuple(sorted(set(self._missing) | {number}))
            self._leftovers = tuple(n for n in self._leftovers if n != number)
        if removed:
            log.info("key store %s: retired master key v%d", self._path, number)
        return removed

    def rotate(self) -> str:
        """Add a new master key version and make it current; return its name.

        Older versions keep unwrapping. Blocking (writes and fsyncs a file);
        serialised by a lock. KeyStoreError when the file cannot be written
        or another process created the same version first.
        """
        with self._lock:
            number = max(self._keys) + 1
            key = _MasterKey(number, _write_key_file(self._path, number))
            keys = dict(self._keys)
            keys[number] = key
            self._keys = keys
            self._current = key
        log.info("rotated key store %s to master key v%d", self._path, number)
        return "v%d" % number

    def check_values(self) -> dict:
        """Per version, a non-secret value that identifies the master key.

        ``{"v1": "<32 hex chars>", ...}``: the first 128 bits of
        HMAC-SHA256(master key, b"cosfs key check"). The catalog records them
        so that a mount with the wrong key store is refused.
        """
        return {"v%d" % n: key.check for n, key in sorted(self._keys.items())}

    # -- wrapping ------------------------------------------------------------

    def wrap(self, data_key: bytes, aad: bytes) -> bytes:
        """Wrap ``data_key`` (16 to 64 bytes) with the current master key.

        ``aad`` binds the wrapped key to its owner (e.g. bucket and object
        identity); the same ``aad`` must be given to :meth:`unwrap`. Returns
        the header (naming the master key version), a random nonce and the
        AES-256-GCM ciphertext with its tag. Thread-safe.
        """
        if not isinstance(data_key, (bytes, bytearray)) or not 16 <= len(data_key) <= 64:
            raise ValueError("data key must be 16 to 64 bytes")
        key = self._current
        header = _WRAP_HEADER.pack(WRAP_MAGIC, WRAP_FORMAT, key.number)
        nonce = os.urandom(_NONCE_SIZE)
        return header + nonce + key.aead.encrypt(nonce, bytes(data_key), header + bytes(aad))

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        """Recover a data key from :meth:`wrap` output given the same ``aad``.

        IntegrityError when the wrapped key is malformed, tampered with or
        ``aad`` differs; KeyStoreError when its master key version is not in
        this store. Thread-safe.
        """
        wrapped = bytes(wrapped)
        number = _wrapped_number(wrapped)
        key = self._keys.get(number) or self._pick_up(number)
        header = wrapped[:_WRAP_HEADER.size]
        nonce = wrapped[_WRAP_HEADER.size:_WRAP_HEADER.size + _NONCE_SIZE]
        try:
            return key.aead.decrypt(nonce, wrapped[_WRAP_HEADER.size + _NONCE_SIZE:],
                                    header + bytes(aad))
        except InvalidTag:
            raise IntegrityError("wrapped data key (master key v%d) failed authentication: "
                                 "tampered with, or bound to another object" % number) from None

    @staticmethod
    def wrapped_version(wrapped: bytes) -> str:
        """The master key version a wrapped key names, e.g. ``"v2"``.

        Needs no key; IntegrityError when ``wrapped`` is malformed.
        """
        return "v%d" % _wrapped_number(bytes(wrapped))

    def _pick_up(self, number):
        # Another process (the command line) may have rotated since we
        # opened; load that one version if its file exists now.
        with self._lock:
            if number in self._keys:
                return self._keys[number]
            name = os.path.join(self._path, "master-v%d.key" % number)
            if number < max(self._keys) or not os.path.lexists(name):
                raise KeyStoreError("key store %s does not hold master key v%d"
                                    % (self._path, number))
            keys = dict(self._keys)
            keys[number] = _MasterKey(number, _read_key_file(name, number))
            self._keys = keys
            log.info("key store %s: picked up master key v%d", self._path, number)
            return keys[number]

    def __repr__(self):
        return "<KeyStore %s versions=%s current=%s>" % (
            self._path, ",".join(self.versions()), self.current_version)


# ---------------------------------------------------------------------------
# Wrapped key header


def parse_version(version) -> int:
    """``"v3"`` (or ``"3"``, ``3``) -> 3; KeyStoreError for anything else."""
    text = str(version)
    match = re.fullmatch(r"v?([1-9][0-9]{0,8})", text)
    if not match:
        raise KeyStoreError("%r is not a master key version (expected v1, v2, ...)" % text[:40])
    return int(match.group(1))


def _wrapped_number(wrapped):
    if len(wrapped) < _WRAP_HEADER.size + _NONCE_SIZE + _TAG_SIZE:
        raise IntegrityError("wrapped data key is truncated (%d bytes)" % len(wrapped))
    magic, fmt, number = _WRAP_HEADER.unpack_from(wrapped)
    if magic != WRAP_MAGIC:
        raise IntegrityError("not a cosfs wrapped data key (bad magic)")
    if fmt != WRAP_FORMAT:
        raise IntegrityError("wrapped data key has format %d; this cosfs reads format %d"
                             % (fmt, WRAP_FORMAT))
    if number == 0:
        raise IntegrityError("wrapped data key names master key v0, which cannot exist")
    return number


# ---------------------------------------------------------------------------
# Key files


def _check_private(path, st, what, wanted):
    if st.st_mode & 0o077:
        raise KeyStoreError("key store %s %s has mode %04o: group and others must have no "
                            "access (chmod %s)" % (what, path, stat.S_IMODE(st.st_mode), wanted))


def _make_directory(path):
    parent = os.path.dirname(path)
    try:
        durable.makedirs(parent, 0o777)
        os.mkdir(path, 0o700)
    except FileExistsError:
        return  # created meanwhile by someone else; the caller checks its mode
    except OSError as exc:
        raise KeyStoreError("key store %s: cannot create: %s" % (path, exc.strerror)) from None
    try:
        # The umask may have taken bits away; we just created it, so set it exactly.
        os.chmod(path, 0o700)
        durable.fsync_dir(path)
        durable.fsync_dir(parent)
    except OSError as exc:
        raise KeyStoreError("key store %s: cannot create: %s" % (path, exc.strerror)) from None


def _load_all(path):
    try:
        names = os.listdir(path)
    except OSError as exc:
        raise KeyStoreError("key store %s: cannot list: %s" % (path, exc.strerror)) from None
    keys = {}
    leftovers = []
    for name in sorted(names):
        match = _FILE_NAME.fullmatch(name)
        retiring = _RETIRING_NAME.fullmatch(name)
        if match:
            number = int(match.group(1))
            keys[number] = _MasterKey(number, _read_key_file(os.path.join(path, name), number))
        elif _TEMP_NAME.fullmatch(name):
            log.warning("key store %s: ignoring %s left by an interrupted write", path, name)
        elif retiring:
            leftovers.append(int(retiring.group(1)))
            log.warning("key store %s: ignoring %s left by an interrupted retire (cosfs keys "
                        "retire v%s removes it)", path, name, retiring.group(1))
        elif name.endswith(".key") or name.startswith("master"):
            raise KeyStoreError("key store %s: unrecognised key file name %r (expected "
                                "master-v<N>.key)" % (path, name))
    return keys, leftovers


def _file_text(number, secret, created):
    body = "%s\nid v%d\ncreated %s\nkey %s\n" % (FILE_MAGIC, number, created, secret.hex())
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    return (body + "sha256 %s\n" % digest).encode("ascii")


def _read_key_file(name, number):
    """Read, check and parse one key file; return the master key bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyStoreError("key file %s is a symbolic link" % name) from None
        raise KeyStoreError("key file %s: cannot open: %s" % (name, exc.strerror)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError("key file %s is not a regular file" % name)
        _check_private(name, st, "file", "600")
        data = os.read(fd, _MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise KeyStoreError("key file %s: cannot read: %s" % (name, exc.strerror)) from None
    finally:
        os.close(fd)
    secret = _parse_key_file(data, number)
    if secret is None:
        raise KeyStoreError("key file %s is corrupt or truncated" % name)
    return secret


def _parse_key_file(data, number):
    """Master key bytes of a well-formed file for version ``number``, else None."""
    if len(data) > _MAX_FILE_SIZE:
        return None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = text.split("\n")
    if len(lines) != 6 or lines[5] != "" or lines[0] != FILE_MAGIC:
        return None
    fields = {}
    for line, name in zip(lines[1:5], ("id", "created", "key", "sha256")):
        label, _, value = line.partition(" ")
        if label != name or not value:
            return None
        fields[name] = value
    body = "\n".join(lines[:4]) + "\n"
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    if not hmac.compare_digest(digest, fields["sha256"]):
        return None
    if fields["id"] != "v%d" % number:
        return None
    if not re.fullmatch(r"[0-9a-f]{%d}" % (2 * MASTER_KEY_SIZE), fields["key"]):
        return None
    return bytes.fromhex(fields["key"])


def _write_key_file(path, number):
    """Create ``master-v<number>.key`` atomically; return the new key bytes.

    The file is complete and fsynced under a temporary name before it is
    linked into place, and linking fails rather than replace an existing
    file, so a crash or a concurrent rotation never leaves a half-written
    or overwritten key.
    """
    secret = os.urandom(MASTER_KEY_SIZE)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    final = os.path.join(path, "master-v%d.key" % number)
    temp = os.path.join(path, ".master-v%d.key.tmp.%s" % (number, os.urandom(4).hex()))
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        raise KeyStoreError("key store %s: cannot write a key file: %s"
                            % (path, exc.strerror)) from None
    try:
        try:
            durable.write_private(fd, _file_text(number, secret, created))
        finally:
            os.close(fd)
        _link_no_replace(temp, final)
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass  # renamed into place (no hard links here)
        # one fsync makes both the new name and the temporary name's removal durable (a
        # temporary file brought back by a power cut would be warned about at every open)
        durable.fsync_dir(path)
    except OSError as exc:
        raise KeyStoreError("key store %s: cannot write master key v%d: %s"
                            % (path, number, exc.strerror)) from None
    finally:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
    return secret


def _overwrite(name):
    """Overwrite a file in place with random bytes of its length and fsync it.

    Best effort against recovery of the old content: copy-on-write file
    systems, SSD wear levelling, snapshots and backups may keep old copies.
    """
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(os.urandom(size))
        offset = 0
        while offset < size:
            offset += os.pwrite(fd, data[offset:], offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_no_replace(temp, final):
    try:
        os.link(temp, final)
    except FileExistsError:
        raise KeyStoreError("key file %s already exists (rotated by another process?)"
                            % final) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # No hard links on this filesystem: rename, after a best-effort check.
        if os.path.lexists(final):
            raise KeyStoreError("key file %s already exists (rotated by another process?)"
                                % final) from None
        os.rename(temp, final)
