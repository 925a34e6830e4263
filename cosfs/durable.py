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
every directory change) and on kernels that report its failures to its caller
(5.17 and later). Elsewhere it may promise less: the kernel does not pass it to
most FUSE file systems, and network file systems give it weaker meaning.
A failed ``fsync`` leaves the data in an unknown state (the kernel may have
dropped the dirty pages), so callers must never retry it as if nothing had
happened.

All functions block; they raise ``OSError``.
"""

import ctypes
import errno
import logging
import os
import weakref

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


#: file system types (as /proc/self/mountinfo names them) whose syncfs(2) makes every file's
#: data and size and every directory entry durable and reports the failures an fsync would:
#: ext3 and ext4 (one driver; its ext2 is not journalled and does not flush the disk's cache
#: at syncfs), xfs and btrfs. Not f2fs: its syncfs answers 0 after a checkpoint error and,
#: mounted with ``checkpoint=disable``, makes no directory change durable.
SYNCFS_FULL = frozenset({"ext3", "ext4", "xfs", "btrfs"})
#: first kernel whose syncfs(2) reports both write-back errors (since the descriptor was
#: opened) and the file system's own failure to commit its journal or log (Linux 5.17:
#: before it, the latter was dropped)
SYNCFS_ERRORS_SINCE = (5, 17)


def _mount_type(path):
    """The file system type of the mount holding ``path``: the mountinfo line whose device
    is ``path``'s; None if none or several differ (a btrfs subvolume may share a device)."""
    st = os.stat(path)
    dev = "%d:%d" % (os.major(st.st_dev), os.minor(st.st_dev))
    kinds = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == dev and " - " in line:
                kinds.add(line.split(" - ", 1)[1].split()[0])
    return kinds.pop() if len(kinds) == 1 else None


def _kernel_at_least(version):
    try:
        release = os.uname().release.split("-")[0].split(".")
        return tuple(int(x) for x in release[:2]) >= version
    except ValueError:
        return False


class WholeSync:
    """One syncfs(2) instead of many fdatasyncs, where that promises as much.

    ``WholeSync.open(path, folders)`` gives None unless ``path`` and every folder
    of ``folders`` are on one file system of a type in :data:`SYNCFS_FULL` and
    the kernel reports errors to syncfs. The descriptor it keeps must be opened
    before the first file it is to cover is written, and stays open as long as
    the object lives: syncfs reports the write-back errors that happened since
    that descriptor last asked, so a fresh one could miss an error that another
    process's syncfs had already collected. Thread-safe.
    """

    def __init__(self, libc, fd, kind):
        self._libc = libc
        self._fd = fd
        self.kind = kind
        weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path, folders=()):
        if not _kernel_at_least(SYNCFS_ERRORS_SINCE):
            return None
        try:
            kind = _mount_type(path)
            if kind not in SYNCFS_FULL:
                return None
            dev = os.stat(path).st_dev
            if any(os.stat(folder).st_dev != dev for folder in folders):
                return None  # a folder mounted or linked elsewhere: its own file system
            libc = ctypes.CDLL(None, use_errno=True)
            if not hasattr(libc, "syncfs"):
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
