"""The FUSE kernel protocol: opcodes, flags and the byte layout of its structures.

Pure: no I/O, no trio. :mod:`cosfs.fuse.session` reads requests from ``/dev/fuse``
and writes replies with these layouts. They follow ``linux/fuse.h`` of protocol 7.33
(the version :data:`MINOR` this package speaks; a kernel speaking more talks down to
it): little-endian, native alignment spelled out as padding.

Contracts:

* Every ``struct.Struct`` here has exactly the size of its C structure at
  :data:`MINOR` (checked by the unit tests against the sizes ``linux/fuse.h`` states).
* :func:`attr` and :func:`entry` encode any object with the attribute names of
  ``pyfuse3.EntryAttributes`` (``st_ino``, ``st_mode``, ..., ``entry_timeout``):
  nanosecond times split into seconds and nanoseconds, timeouts in seconds
  (floats) split likewise, negative numbers refused by ``struct`` (``struct.error``).
* :func:`direntplus` returns one record padded to 8 bytes, as the kernel walks them.
"""

import logging
import struct

log = logging.getLogger(__name__)

#: Protocol version spoken (the kernel uses the lower of its own and this).
MAJOR = 7
MINOR = 33

# Opcodes (enum fuse_opcode).
LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
GETLK = 31
SETLK = 32
SETLKW = 33
ACCESS = 34
CREATE = 35
INTERRUPT = 36
BMAP = 37
DESTROY = 38
IOCTL = 39
POLL = 40
NOTIFY_REPLY = 41
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
LSEEK = 46
COPY_FILE_RANGE = 47

#: opcode -> name, for logs and metrics
OPCODE_NAMES = {v: k.lower() for k, v in list(globals().items())
                if k.isupper() and isinstance(v, int) and k not in ("MAJOR", "MINOR")}

# fuse_init_in/out flags.
ASYNC_READ = 1 << 0
POSIX_LOCKS = 1 << 1
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
WRITEBACK_CACHE = 1 << 16
PARALLEL_DIROPS = 1 << 18
HANDLE_KILLPRIV = 1 << 19
MAX_PAGES = 1 << 22
HANDLE_KILLPRIV_V2 = 1 << 28

# fuse_setattr_in.valid
FATTR_MODE = 1 << 0
FATTR_UID = 1 << 1
FATTR_GID = 1 << 2
FATTR_SIZE = 1 << 3
FATTR_ATIME = 1 << 4
FATTR_MTIME = 1 << 5
FATTR_FH = 1 << 6
FATTR_ATIME_NOW = 1 << 7
FATTR_MTIME_NOW = 1 << 8
FATTR_CTIME = 1 << 10
FATTR_KILL_SUIDGID = 1 << 11

# fuse_open_out.open_flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NONSEEKABLE = 1 << 2

#: fuse_fsync_in.fsync_flags
FSYNC_FDATASYNC = 1 << 0
#: fuse_write_in.write_flags: the writer lacks CAP_FSETID (with HANDLE_KILLPRIV_V2)
WRITE_KILL_SUIDGID = 1 << 2
#: fuse_open_in.open_flags and fuse_create_in.open_flags (with HANDLE_KILLPRIV_V2)
OPEN_KILL_SUIDGID = 1 << 0

# Notification codes (the error field of a message with unique 0).
NOTIFY_INVAL_INODE = 2
NOTIFY_INVAL_ENTRY = 3
NOTIFY_STORE = 4
NOTIFY_DELETE = 6

IN_HEADER = struct.Struct("<IIQQIIIHH")     # len, opcode, unique, nodeid, uid, gid, pid, ..
OUT_HEADER = struct.Struct("<IiQ")          # len, error (negative errno), unique
#: fuse_attr; the times' seconds are signed (the kernel casts them to and from time64_t:
#: a time before 1970 travels as a negative number)
ATTR = struct.Struct("<QQQqqqIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")        # fuse_entry_out up to its fuse_attr
ATTR_OUT = struct.Struct("<QII")            # fuse_attr_out up to its fuse_attr
INIT_IN = struct.Struct("<IIII")            # major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")  # fuse_init_out
FORGET_IN = struct.Struct("<Q")             # nlookup
BATCH_FORGET_IN = struct.Struct("<II")      # count, dummy
FORGET_ONE = struct.Struct("<QQ")           # nodeid, nlookup
GETATTR_IN = struct.Struct("<IIQ")          # getattr_flags, dummy, fh
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")  # (signed seconds, as in ATTR)
MKNOD_IN = struct.Struct("<IIII")           # mode, rdev, umask, padding
MKDIR_IN = struct.Struct("<II")             # mode, umask
RENAME_IN = struct.Struct("<Q")             # newdir
RENAME2_IN = struct.Struct("<QII")          # newdir, flags, padding
LINK_IN = struct.Struct("<Q")               # oldnodeid
OPEN_IN = struct.Struct("<II")              # flags, open_flags
CREATE_IN = struct.Struct("<IIII")          # flags, mode, umask, open_flags
OPEN_OUT = struct.Struct("<QII")            # fh, open_flags, padding
RELEASE_IN = struct.Struct("<QIIQ")         # fh, flags, release_flags, lock_owner
FLUSH_IN = struct.Struct("<QIIQ")           # fh, unused, padding, lock_owner
READ_IN = struct.Struct("<QQIIQII")         # fh, offset, size, read_flags, lock_owner, ..
WRITE_IN = struct.Struct("<QQIIQII")        # fh, offset, size, write_flags, lock_owner, ..
WRITE_OUT = struct.Struct("<II")            # size, padding
KSTATFS = struct.Struct("<QQQQQIIII24x")    # fuse_kstatfs (statfs_out)
FSYNC_IN = struct.Struct("<QII")            # fh, fsync_flags, padding
FALLOCATE_IN = struct.Struct("<QQQII")      # fh, offset, length, mode, padding
SETXATTR_IN = struct.Struct("<II")          # size, flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")          # size, padding
GETXATTR_OUT = struct.Struct("<II")         # size, padding
ACCESS_IN = struct.Struct("<II")            # mask, padding
INTERRUPT_IN = struct.Struct("<Q")          # unique
DIRENT = struct.Struct("<QQII")             # ino, off, namelen, type
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")   # ino, off, len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")   # parent, namelen, flags
NOTIFY_DELETE_OUT = struct.Struct("<QQII")       # parent, child, namelen, padding
NOTIFY_STORE_OUT = struct.Struct("<QQII")        # nodeid, offset, size, padding

_NS = 1_000_000_000
# whole replies and records in one struct each (the same bytes as their parts in a row)
_ENTRY = struct.Struct("<" + ENTRY_OUT.format[1:] + ATTR.format[1:])
_ATTR_OUT = struct.Struct("<" + ATTR_OUT.format[1:] + ATTR.format[1:])
_DIRENTPLUS = struct.Struct(_ENTRY.format + DIRENT.format[1:])
_PADDING = [bytes(n) for n in range(8)]


class Entry:
    """The attributes of an entry, with pyfuse3.EntryAttributes' names, for this
    package's session: a plain object, several times cheaper to fill and read back than
    pyfuse3's (whose fields are properties over a C structure). Unset fields are 0."""

    st_ino = generation = st_mode = st_nlink = st_uid = st_gid = st_rdev = st_size = 0
    st_blksize = st_blocks = st_atime_ns = st_mtime_ns = st_ctime_ns = 0
    entry_timeout = attr_timeout = 0


_splits = {}


def _split(seconds):
    """A timeout in seconds as (whole seconds, nanoseconds); the few values a mount uses
    are remembered."""
    parts = _splits.get(seconds)
    if parts is None:
        whole = int(seconds)
        parts = (whole, int((seconds - whole) * _NS))
        if len(_splits) < 64:
            _splits[seconds] = parts
    return parts


def _attr_fields(a):
    """The fields of ``fuse_attr`` for ``a``, in order."""
    atime, atime_ns = divmod(a.st_atime_ns, _NS)
    mtime, mtime_ns = divmod(a.st_mtime_ns, _NS)
    ctime, ctime_ns = divmod(a.st_ctime_ns, _NS)
    return (a.st_ino, a.st_size, a.st_blocks, atime, mtime, ctime, atime_ns, mtime_ns,
            ctime_ns, a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_blksize, 0)


def attr(a):
    """``fuse_attr`` of ``a`` (an object with pyfuse3.EntryAttributes' names)."""
    return ATTR.pack(*_attr_fields(a))


def entry(a):
    """``fuse_entry_out`` of ``a``; ``st_ino`` 0 is a negative entry (cached for
    ``entry_timeout``)."""
    es, ens = _split(a.entry_timeout)
    ats, ans = _split(a.attr_timeout)
    return _ENTRY.pack(a.st_ino, a.generation, es, ats, ens, ans, *_attr_fields(a))


def attr_out(a):
    """``fuse_attr_out`` of ``a``."""
    ats, ans = _split(a.attr_timeout)
    return _ATTR_OUT.pack(ats, ans, 0, *_attr_fields(a))


def direntplus(a, name, next_offset):
    """One ``fuse_direntplus`` record: the entry of ``a`` named ``name`` (bytes), which
    the next READDIRPLUS starting at ``next_offset`` comes after."""
    es, ens = _split(a.entry_timeout)
    ats, ans = _split(a.attr_timeout)
    fields = _attr_fields(a)
    head = _DIRENTPLUS.pack(fields[0], a.generation, es, ats, ens, ans, *fields,
                            fields[0], next_offset, len(name), (fields[9] >> 12) & 0o17)
    return head + name + _PADDING[-(_DIRENTPLUS.size + len(name)) % 8]


def kstatfs(s):
    """``fuse_statfs_out`` of ``s`` (pyfuse3.StatvfsData's names)."""
    return KSTATFS.pack(s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, s.f_bsize,
                        s.f_namemax, s.f_frsize, 0)

