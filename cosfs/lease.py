"""The lease that keeps a second machine from using an S3 store that one machine uses.

The catalog is local to the machine that opened the store; two machines
writing blobs and collecting garbage under one prefix would destroy each
other's data. So whoever opens a store with S3 regions (a mount, ``cosfs
serve``, a command on an unmounted store) writes a lease object
``<prefix>.cosfs/lease`` into each S3 store: a small JSON document naming the
holder (host name and store folder), its pid, and when it was taken and last
renewed. A running daemon renews it every ``RENEW`` seconds and deletes it at a
clean stop.

Contract of :func:`acquire`: a lease of another holder refuses the open with
:class:`LeaseHeld` (EBUSY), one line naming the holder and the lease's age.
With ``break_stale`` a lease not renewed for ``STALE`` seconds is taken over
(logged); a fresher one is never broken, because its holder is probably still
running. The same holder (a restart after a crash) takes its own lease back
without a flag. Ages use the clocks of both machines: keep them in sync (NTP).
Taking a lease is read, write, read back: two machines starting within the
same moment are told apart by the read back, not excluded by the service
(S3 has no compare-and-swap that every service implements).
"""

import errno
import json
import logging
import os
import socket
import time

import trio

from .errors import CosfsError

log = logging.getLogger(__name__)

NAME = "lease"
#: seconds between renewals of a running daemon's lease
RENEW = 30.0
#: a lease not renewed for this long may be broken with ``--break-lease``
STALE = 120.0


class LeaseHeld(CosfsError):
    """Another machine holds the store's lease."""

    errno = errno.EBUSY
    code = "StoreLeased"


def holder_of(store_dir):
    """This machine's holder id for the store folder ``store_dir``."""
    return "%s:%s" % (socket.gethostname(), os.path.realpath(os.fspath(store_dir)))


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
    """Renew our lease; logs an error (and leaves it) if another holder took it."""
    now = time.time()
    for target in targets:
        doc = read(target)
        if doc is not None and doc["holder"] != holder:
            log.error("the lease of S3 store %s/%s/%s was taken by %s: another machine uses "
                      "this store; stop this one", target.endpoint, target.bucket,
                      target.prefix, describe(doc, now))
            continue
        target.put_meta(NAME, _document(holder, doc.get("acquired", now) if doc else now, now))


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


class LeaseKeeper:
    """A daemon service that renews the lease every ``RENEW`` seconds
    (``run(task_status)``, ``stop()`` like the other services)."""

    def __init__(self, targets, holder, limiter=None, interval=RENEW):
        self.targets = targets
        self.holder = holder
        self.limiter = limiter
        self.interval = interval
        self._cancel = None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as self._cancel:
            task_status.started()
            while True:
                await trio.sleep(self.interval)
                try:
                    await trio.to_thread.run_sync(renew, self.targets, self.holder,
                                                  limiter=self.limiter)
                except CosfsError as exc:
                    log.warning("could not renew the store lease: %s; will retry", exc)

    def stop(self):
        if self._cancel is not None:
            self._cancel.cancel()
