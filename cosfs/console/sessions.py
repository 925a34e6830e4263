"""Console logins: credential checks, sessions, CSRF tokens and the login throttle.

Pure bookkeeping in memory (no trio, no I/O); the clock is a callable
returning seconds (``time.monotonic`` by default) so tests move time.

* :func:`check_login` compares a SecretKey with :func:`hmac.compare_digest`,
  against a dummy key when the SecretId is unknown, so timing does not tell
  which SecretIds exist.
* :class:`Sessions` hands out random 256-bit session tokens (the cookie value)
  that expire ``timeout`` seconds after the last use (sliding) and at most
  12 hours after the login; each session has its own CSRF token, which every
  form posts back and :meth:`Session.csrf_ok` checks in constant time.
  Logout forgets the session. At most :data:`MAX_SESSIONS` live at once (the
  oldest goes first).
* :class:`LoginThrottle` slows failed logins down per client address: after
  the n-th failure in a row that client must wait 2^(n-1) seconds (capped at
  :data:`MAX_PENALTY`) before its next attempt counts; attempts meanwhile are
  refused without checking anything. A success clears it.

No secret key is kept in a session or written to a log line.
"""

import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_SESSIONS = 1000
MAX_SESSION_AGE = 12 * 3600.0
MAX_PENALTY = 60.0
_DUMMY_KEY = secrets.token_hex(20)


def check_login(credentials, secret_id, secret_key):
    """The :class:`cosfs.credentials.Credential` for a matching pair, else None.

    ``credentials``: anything with ``lookup(secret_id)`` returning a Credential or None."""
    cred = credentials.lookup(secret_id) if secret_id else None
    expected = cred.secret_key if cred is not None else _DUMMY_KEY
    ok = hmac.compare_digest(expected.encode("utf-8"), (secret_key or "").encode("utf-8"))
    return cred if ok and cred is not None else None


@dataclass
class Session:
    token: str
    secret_id: str
    created: float
    last_used: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def csrf_ok(self, value) -> bool:
        return isinstance(value, str) and hmac.compare_digest(self.csrf.encode(),
                                                              value.encode("utf-8", "replace"))


class Sessions:
    """Live console sessions by token."""

    def __init__(self, timeout, clock=time.monotonic):
        self.timeout = float(timeout)
        self.clock = clock
        self._live = OrderedDict()

    def create(self, secret_id) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), secret_id, now, now)
        self._live[session.token] = session
        while len(self._live) > MAX_SESSIONS:
            self._live.popitem(last=False)
        return session

    def get(self, token):
        """The live session of ``token`` (its expiry renewed), or None when unknown or
        expired (an expired one is forgotten)."""
        if not token:
            return None
        session = self._live.get(token)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_used > self.timeout or now - session.created > MAX_SESSION_AGE:
            del self._live[token]
            return None
        session.last_used = now
        self._live.move_to_end(token)
        return session

    def end(self, token):
        self._live.pop(token, None)

    def __len__(self):
        return len(self._live)


class LoginThrottle:
    """Failed logins per client; see the module docstring."""

    def __init__(self, clock=time.monotonic, max_clients=10000):
        self.clock = clock
        self.max_clients = max_clients
        self._failures = OrderedDict()  # client -> (failures in a row, not before)

    def wait(self, client) -> float:
        """Seconds ``client`` must still wait before a login attempt counts (0: go)."""
        entry = self._failures.get(client)
        if entry is None:
            return 0.0
        return max(0.0, entry[1] - self.clock())

    def failed(self, client) -> float:
        """Record a failure; returns the penalty (seconds) before the next attempt."""
        count = self._failures.pop(client, (0, 0.0))[0] + 1
        penalty = min(MAX_PENALTY, 2.0 ** (count - 1))
        self._failures[client] = (count, self.clock() + penalty)
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        return penalty

    def succeeded(self, client):
        self._failures.pop(client, None)
