"""Durability primitives that every POSIX file system honours.

cosfs must not depend on which file system holds its store or key store. The
only promises it relies on are the ones POSIX makes and every Linux file
system (ext4, xfs, btrfs, tmpfs, NFS, FUSE file systems) keeps:

  - ``fsync``/``fdatasync`` of a file makes that file's data (and size)
    durable, and nothing else: not its name in a directory;
  - ``fsync`` of a directory makes that directory's entries durable: the
    names created, renamed or removed in it.

``sync(2)`` is never used, and ``syncfs(2)`` only through :class:`WholeSync`,
on the few local file systems where its meaning is known (it writes back and
waits for every file's data and then commits the journal or log, which holds
every directory change) and on kernels that report write-back errors to its
caller (5.8 and later). Elsewhere it may promise less: the kernel does not pass
it to most FUSE file systems, and network file systems give it weaker meaning.
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


#: statfs(2) ``f_type`` of the file systems whose syncfs(2) makes every file's data and every
#: directory entry durable, as fdatasync of each file and fsync of each folder would
SYNCFS_FULL = {0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs",
               0xF2F52010: "f2fs"}
#: first kernel whose syncfs(2) reports write-back errors (its caller's, since it opened
#: the descriptor); before it, a failed write-back could pass unnoticed
SYNCFS_ERRORS_SINCE = (5, 8)


def _fs_type(libc, path):
    """statfs(2) ``f_type`` of the file system holding ``path`` (os.statvfs has none)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _kernel_at_least(version):
    try:
        release = os.uname().release.split("-")[0].split(".")
        return tuple(int(x) for x in release[:2]) >= version
    except ValueError:
        return False


class WholeSync:
    """One syncfs(2) instead of many fdatasyncs, where that promises as much.

    ``WholeSync.open(path)`` gives None unless the file system holding ``path`` is
    one of :data:`SYNCFS_FULL` and the kernel reports write-back errors to syncfs.
    The descriptor it keeps is opened before the first file it must cover is
    written and stays open: syncfs reports the write-back errors that happened
    since that descriptor last asked, so a fresh one could miss an error that
    another process's syncfs had already collected.
    """

    def __init__(self, libc, fd, kind):
        self._libc = libc
        self._fd = fd
        self.kind = kind

    @classmethod
    def open(cls, path):
        if not _kernel_at_least(SYNCFS_ERRORS_SINCE):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            kind = SYNCFS_FULL.get(_fs_type(libc, path))
            if kind is None or not hasattr(libc, "syncfs"):
                return None
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        return cls(libc, fd, kind)

    def sync(self):
        """Every file and directory entry of the file system is durable on return
        (blocks; OSError if write-back failed since the last call)."""
        if self._libc.syncfs(self._fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
