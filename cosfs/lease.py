"""The lease that keeps a second machine from using an S3 store that one machine uses.

The catalog is local to the machine that opened the store; two machines
writing blobs and collecting garbage under one prefix would destroy each
other's data. So whoever opens a store with S3 regions (a mount, ``cosfs
serve``, a command on an unmounted store) writes a lease object
``<prefix>.cosfs/lease`` into each S3 store: a small JSON document naming the
holder (host name, store folder and a random id kept in the store folder, so
that a cloned machine or a restored catalog is another holder), its pid, and
when it was taken and last renewed. A :class:`Keeper` thread renews it every
``RENEW`` seconds while the store is open, and it is deleted at a clean close.

Contract of :func:`acquire`: a lease of another holder refuses the open with
:class:`LeaseHeld` (EBUSY), one line naming the holder and the lease's age.
With ``break_stale`` a lease not renewed for ``STALE`` seconds is taken over
(logged); a fresher one is never broken, because its holder is probably still
running. The same holder (a restart after a crash) takes its own lease back
without a flag. Ages use the clocks of both machines: keep them in sync (NTP).
Taking and renewing a lease is read, write, read back: two machines starting
within the same moment are told apart by the read back, not excluded by the
service (S3 has no compare-and-swap that every service implements).

**Fencing.** A holder that finds its lease taken by another, or that could not
renew it for ``FENCE_AFTER`` seconds (less than ``STALE``: before anyone may
break it), stops changing the store: the keeper calls ``fence(reason)`` on each
S3 store, which then refuses uploads and deletions with EIO (reads go on), until
a renewal of its own lease succeeds again (``fence(None)``).
"""

import errno
import json
import logging
import os
import socket
import threading
import time

from .errors import CosfsError

log = logging.getLogger(__name__)

NAME = "lease"
#: seconds between renewals of a running daemon's lease
RENEW = 30.0
#: a lease not renewed for this long may be broken with ``--break-lease``
STALE = 120.0
#: a holder that could not renew for this long stops changing the store
FENCE_AFTER = 90.0
#: the file in the store folder that holds this store's random holder id
ID_FILE = ".lease-id"


class LeaseHeld(CosfsError):
    """Another machine holds the store's lease."""

    errno = errno.EBUSY
    code = "StoreLeased"


def holder_of(store_dir):
    """This machine's holder id for the store folder ``store_dir``: host name, folder and
    a random id kept in ``<store>/.lease-id`` (made on first use, 0600)."""
    store_dir = os.path.realpath(os.fspath(store_dir))
    path = os.path.join(store_dir, ID_FILE)
    try:
        with open(path) as f:
            token = f.read().strip()
    except FileNotFoundError:
        token = ""
    if len(token) != 16:
        token = os.urandom(8).hex()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, token.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    return "%s:%s#%s" % (socket.gethostname(), store_dir, token)


def forget_holder(store_dir):
    """Make the next open of ``store_dir`` a new holder (after a restore: the catalog is
    not the one the old id's lease was taken for)."""
    try:
        os.unlink(os.path.join(os.fspath(store_dir), ID_FILE))
    except FileNotFoundError:
        pass


def _document(holder, acquired, now):
    return json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
                       "acquired": acquired, "renewed": now}, sort_keys=True).encode()


def read(target):
    """The lease document in ``target`` as a dict (None if there is none; a dict with
    only ``holder: "unreadable"`` if it does not parse)."""
    raw = target.get_meta(NAME)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("holder"), str):
            raise ValueError
        doc["renewed"] = float(doc.get("renewed", 0))
        return doc
    except (ValueError, TypeError):
        return {"holder": "unreadable", "renewed": 0.0}


def describe(doc, now=None):
    """One phrase: who holds ``doc`` and how long ago it was renewed."""
    now = time.time() if now is None else now
    age = max(0.0, now - doc["renewed"])
    return "%s (pid %s), renewed %.0f s ago" % (doc["holder"], doc.get("pid", "?"), age)


def acquire(targets, holder, *, break_stale=False):
    """Take the lease in every S3 store of ``targets`` for ``holder`` (see the module doc).
    LeaseHeld if another holder has it; StoreError if a store cannot be reached."""
    now = time.time()
    for target in targets:
        doc = read(target)
        if doc is not None and doc["holder"] != holder:
            age = now - doc["renewed"]
            where = "%s/%s/%s" % (target.endpoint, target.bucket, target.prefix)
            if not break_stale:
                raise LeaseHeld("S3 store %s is in use by %s; if that machine is gone, use "
                                "--break-lease once the lease is %.0f s old"
                                % (where, describe(doc, now), STALE))
            if age < STALE:
                raise LeaseHeld("S3 store %s is in use by %s: a lease renewed less than "
                                "%.0f s ago is not broken (is that machine still running?)"
                                % (where, describe(doc, now), STALE))
            log.warning("breaking the stale lease of S3 store %s held by %s", where,
                        describe(doc, now))
        acquired = doc.get("acquired", now) if doc is not None and doc["holder"] == holder else now
        target.put_meta(NAME, _document(holder, acquired, now))
        back = read(target)
        if back is None or back["holder"] != holder:
            raise LeaseHeld("S3 store %s/%s/%s was taken by %s at the same moment"
                            % (target.endpoint, target.bucket, target.prefix,
                               describe(back, now) if back else "another machine"))


def renew(targets, holder):
    """Renew our lease in every store: read, write, read back. Returns None, or the
    description of another holder that took it (then it is left to them)."""
    now = time.time()
    for target in targets:
        doc = read(target)
        if doc is not None and doc["holder"] != holder:
            return describe(doc, now)
        target.put_meta(NAME, _document(holder, doc.get("acquired", now) if doc else now, now))
        back = read(target)
        if back is not None and back["holder"] != holder:
            return describe(back, now)
    return None


def release(targets, holder):
    """Delete our lease (a clean stop). Never raises: a lease left behind only makes
    the next opener on another machine wait for it to go stale."""
    for target in targets:
        try:
            doc = read(target)
            if doc is not None and doc["holder"] == holder:
                target.delete_meta(NAME)
        except CosfsError as exc:
            log.warning("could not release the lease of S3 store %s: %s", target.root, exc)


class Keeper:
    """A thread that renews the lease every ``interval`` seconds until :meth:`stop`, and
    fences ``stores`` (their ``fence(reason)``) when the lease is lost (module doc)."""

    def __init__(self, targets, holder, stores=(), interval=RENEW, fence_after=FENCE_AFTER):
        self.targets = targets
        self.holder = holder
        self.stores = list(stores)
        self.interval = interval
        self.fence_after = fence_after
        self.fenced = None
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cosfs-lease", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _fence(self, reason):
        if reason != self.fenced:
            if reason is None:
                log.warning("the store's lease is renewed again: writes to the S3 stores resume")
            else:
                log.error("%s: this machine stops changing the S3 stores (reads go on); "
                          "unmount it", reason)
            self.fenced = reason
            for store in self.stores:
                store.fence(reason)

    def renew_once(self):
        try:
            other = renew(self.targets, self.holder)
        except CosfsError as exc:
            log.warning("could not renew the store lease: %s; will retry", exc)
            if time.monotonic() - self._last_ok > self.fence_after:
                self._fence("the store lease could not be renewed for %.0f s (another "
                            "machine may take it over)" % self.fence_after)
            return
        if other is not None:
            self._fence("the store lease was taken over by %s" % other)
            return
        self._last_ok = time.monotonic()
        self._fence(None)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.renew_once()
