"""The FUSE protocol's structures (cosfs.fuse.protocol): sizes as linux/fuse.h states
them, and the encoding of attributes, entries and directory records."""

import stat
import types

import pytest

from cosfs.fuse import protocol as P

# sizeof() of each structure in linux/fuse.h (protocol 7.33)
SIZES = {
    "IN_HEADER": 40, "OUT_HEADER": 16, "ATTR": 88, "ENTRY_OUT": 40, "ATTR_OUT": 16,
    "INIT_IN": 16, "INIT_OUT": 64, "FORGET_IN": 8, "BATCH_FORGET_IN": 8, "FORGET_ONE": 16,
    "GETATTR_IN": 16, "SETATTR_IN": 88, "MKNOD_IN": 16, "MKDIR_IN": 8, "RENAME_IN": 8,
    "RENAME2_IN": 16, "LINK_IN": 8, "OPEN_IN": 8, "CREATE_IN": 16, "OPEN_OUT": 16,
    "RELEASE_IN": 24, "FLUSH_IN": 24, "READ_IN": 40, "WRITE_IN": 40, "WRITE_OUT": 8,
    "KSTATFS": 80, "FSYNC_IN": 16, "FALLOCATE_IN": 32, "SETXATTR_IN": 8, "GETXATTR_IN": 8,
    "GETXATTR_OUT": 8, "ACCESS_IN": 8, "INTERRUPT_IN": 8, "DIRENT": 24,
    "NOTIFY_INVAL_INODE_OUT": 24, "NOTIFY_INVAL_ENTRY_OUT": 16, "NOTIFY_DELETE_OUT": 24,
    "NOTIFY_STORE_OUT": 24,
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_structure_sizes(name):
    assert getattr(P, name).size == SIZES[name]


def attributes(**kw):
    a = dict(st_ino=7, generation=0, entry_timeout=10.0, attr_timeout=1.5,
             st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_uid=0, st_gid=0, st_rdev=0,
             st_size=5, st_blksize=4096, st_blocks=1, st_atime_ns=1_500_000_001,
             st_mtime_ns=2_000_000_002, st_ctime_ns=3_999_999_999)
    a.update(kw)
    return types.SimpleNamespace(**a)


def test_attr_splits_nanosecond_times():
    fields = P.ATTR.unpack(P.attr(attributes()))
    ino, size, blocks, atime, mtime, ctime, ans, mns, cns, mode = fields[:10]
    assert (ino, size, blocks) == (7, 5, 1)
    assert (atime, ans) == (1, 500_000_001)
    assert (mtime, mns) == (2, 2)
    assert (ctime, cns) == (3, 999_999_999)
    assert mode == stat.S_IFREG | 0o644


def test_times_before_1970_are_negative_seconds():
    fields = P.ATTR.unpack(P.attr(attributes(st_mtime_ns=-1_500_000_000)))
    assert (fields[4], fields[7]) == (-2, 500_000_000)  # the kernel's time64_t and nsec


def test_entry_splits_timeouts():
    raw = P.entry(attributes())
    assert len(raw) == 128
    nodeid, gen, entry_valid, attr_valid, entry_ns, attr_ns = P.ENTRY_OUT.unpack_from(raw)
    assert (nodeid, entry_valid, entry_ns) == (7, 10, 0)
    assert (attr_valid, attr_ns) == (1, 500_000_000)


def test_negative_entry_has_node_zero():
    raw = P.entry(attributes(st_ino=0))
    assert P.ENTRY_OUT.unpack_from(raw)[0] == 0


def test_direntplus_is_padded_to_eight_bytes():
    for name in (b"a", b"abcdefgh", b"x" * 13):
        rec = P.direntplus(attributes(st_mode=stat.S_IFDIR | 0o755), name, 42)
        assert len(rec) % 8 == 0
        ino, off, namelen, kind = P.DIRENT.unpack_from(rec, 128)
        assert (ino, off, namelen, kind) == (7, 42, len(name), stat.S_IFDIR >> 12)
        assert rec[152:152 + len(name)] == name
        assert not any(rec[152 + len(name):])


def test_negative_sizes_are_refused():
    with pytest.raises(Exception):
        P.attr(attributes(st_size=-1))


def test_kstatfs():
    s = types.SimpleNamespace(f_blocks=10, f_bfree=5, f_bavail=4, f_files=100, f_ffree=90,
                              f_bsize=4096, f_namemax=255, f_frsize=4096)
    assert P.KSTATFS.unpack(P.kstatfs(s)) == (10, 5, 4, 100, 90, 4096, 255, 4096, 0)


def test_opcode_names():
    assert P.OPCODE_NAMES[P.READDIRPLUS] == "readdirplus"
    assert P.OPCODE_NAMES[P.INIT] == "init"
