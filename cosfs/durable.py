"""Durability primitives that every POSIX file system honours.

cosfs must not depend on which file system holds its store or key store. The
only promises it relies on are the ones POSIX makes and every Linux file
system (ext4, xfs, btrfs, tmpfs, NFS, FUSE file systems) keeps:

  - ``fsync``/``fdatasync`` of a file makes that file's data (and size)
    durable, and nothing else: not its name in a directory;
  - ``fsync`` of a directory makes that directory's entries durable: the
    names created, renamed or removed in it.

``syncfs(2)``/``sync(2)`` are deliberately not used: the kernel never passes
them to a FUSE file system, and other file systems give them weaker meaning.
A failed ``fsync`` leaves the data in an unknown state (the kernel may have
dropped the dirty pages), so callers must never retry it as if nothing had
happened.

All functions block; they raise ``OSError``.
"""

import ctypes
import errno
import logging
import os

log = logging.getLogger(__name__)

_libc = None
#: sync_file_range(2) flag: start write-back of dirty pages, do not wait
SYNC_FILE_RANGE_WRITE = 2


def fsync_dir(path):
    """fsync the directory ``path``: entries made in it so far become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fdatasync_path(path):
    """fdatasync the file at ``path`` (its data and size, not its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def makedirs(path, mode=0o700):
    """``os.makedirs`` whose new entries are durable when it returns.

    Like ``os.makedirs``, the last directory gets ``mode`` and missing parents
    0o777 (the umask applies to both). Each parent that gained an entry is
    fsynced afterwards, so a power cut cannot take
    back a directory that files were then written into. Existing directories
    are left as they are and cost one ``stat`` each. Returns True if anything
    was created.
    """
    path = os.path.abspath(os.fspath(path))
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not missing and not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode if d == path else 0o777)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
    for d in reversed(missing):
        fsync_dir(os.path.dirname(d))
    return bool(missing)


def start_writeback(fd):
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting.

    A hint only (``sync_file_range(SYNC_FILE_RANGE_WRITE)``): it makes a later
    ``fdatasync`` cheaper, but promises nothing; file systems that do not keep
    dirty pages in the page cache (FUSE without write-back caching) ignore it.
    Never raises.
    """
    global _libc
    if _libc is False:
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                                              ctypes.c_uint]
        _libc.sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)
    except (OSError, AttributeError):
        if _libc is not False:
            log.debug("sync_file_range is not available; blobs are written back at fsync")
        _libc = False


def write_private(fd, data):
    """Write all of ``data`` to the new file ``fd``, owner-only (0600 whatever the umask
    left), and ``fsync`` it; the caller then gives it its final name and syncs the folder."""
    os.fchmod(fd, 0o600)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
