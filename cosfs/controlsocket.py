"""Where the daemon's control socket lives, and who may use it.

A running daemon (``cosfs mount`` or ``cosfs serve``) also answers the COS XML API
(:mod:`cosfs.api.app`) on a Unix socket, whether or not ``api:`` is enabled:
``<runtime dir>/cosfs-<16 hex of the SHA-256 of the store path>.sock``, where the
runtime dir is ``/run/cosfs`` for root, else ``$XDG_RUNTIME_DIR/cosfs``, else
``/tmp/cosfs-<uid>``. The directory is created 0700 and must belong to the daemon's
user, so only that user (and root) can connect: the socket's permissions are its
authentication, and requests on it act with full access. The client is
:mod:`cosfs.control`.
"""

import contextlib
import hashlib
import logging
import os
import stat

from .errors import CosfsError

log = logging.getLogger(__name__)

CONTROL_ID = "local-control-socket"


def runtime_dir() -> str:
    """The folder of control sockets for this user (see the module docstring)."""
    if os.getuid() == 0:
        return "/run/cosfs"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "cosfs")
    return "/tmp/cosfs-%d" % os.getuid()


def socket_path(store_dir) -> str:
    """Where the daemon of the store in ``store_dir`` listens."""
    digest = hashlib.sha256(os.path.realpath(os.fspath(store_dir)).encode()).hexdigest()
    return os.path.join(runtime_dir(), "cosfs-%s.sock" % digest[:16])


def check_folder(folder):
    """Raise CosfsError unless ``folder`` is a real directory of this user (or root) that
    nobody else may use: the daemon checks it before listening, a client before it
    trusts what answers there."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o077:
        raise CosfsError("%s must be a directory of uid %d that only it can use (mode 0700)"
                         % (folder, os.getuid()), code="InvalidConfig")


def prepare_socket(store_dir) -> str:
    """Make the runtime directory (0700, ours) and remove a socket a killed daemon left
    (the caller holds the store's lock, so none is alive). Returns the path."""
    path = socket_path(store_dir)
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    check_folder(folder)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return path


def control_authenticator():
    """``authenticate(request)`` of the control socket: every request has full access
    (only the daemon's user can connect)."""
    from .api.auth import Authenticated
    from .credentials import Credential
    local = Credential(CONTROL_ID, "")

    def authenticate(request):
        return Authenticated(local, "cos-header")

    return authenticate


