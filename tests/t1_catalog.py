"""The SQLite catalog: schema, transactions, and the helpers each layer uses."""

import errno
import os
import sqlite3
import stat
import time

import pytest

from cosfs import catalog
from cosfs.catalog import ROOT_INODE, SCHEMA_VERSION, Catalog, Chunk
from cosfs.errors import CosfsError, FsError

from helpers import tmp_path  # noqa: F401 (tmpfs)

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path / "catalog.db", create=True)
    yield c
    c.close()


def new_file(cat, **kw):
    with cat.transaction():
        return cat.new_inode(mode=REG, uid=1, gid=2, **kw)


# -- opening ---------------------------------------------------------------------
def test_schema_created_with_root(tmp_path):
    path = tmp_path / "catalog.db"
    c = Catalog(path, create=True)
    try:
        assert c.get_meta("schema_version") == SCHEMA_VERSION
        root = c.get_inode(ROOT_INODE)
        assert root.is_dir and root.nlink == 2 and root.uid == os.getuid()
        assert c.inode_count() == 1
        tables = {r[0] for r in c.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "inodes", "dentries", "chunks", "xattrs", "buckets", "bucket_configs",
                "garbage"} <= tables
        assert c.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        c.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _chunks_sql(c):
    return c.db.execute("SELECT sql FROM sqlite_master WHERE name='chunks'").fetchone()[0]


def _make_chunks_without_rowid(path):
    """Turn the chunks table of the catalog at ``path`` into the form catalogs had before
    it became a rowid table."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "BEGIN; CREATE TABLE old (inode INTEGER NOT NULL, idx INTEGER NOT NULL,"
        " blob BLOB NOT NULL, length INTEGER NOT NULL, data BLOB, PRIMARY KEY (inode, idx))"
        " WITHOUT ROWID; INSERT INTO old SELECT * FROM chunks; DROP TABLE chunks;"
        " ALTER TABLE old RENAME TO chunks; CREATE INDEX chunks_blob ON chunks (blob); COMMIT;")
    db.close()


@pytest.mark.parametrize("room", [True, False, "disk"])
def test_chunks_become_a_rowid_table(tmp_path, caplog, monkeypatch, room):
    """A catalog from before keeps every chunk row when its chunks table is rebuilt as a
    rowid table at open; if the rebuild fails, the catalog works in the older form."""
    path = tmp_path / "catalog.db"
    c = Catalog(path, create=True)
    assert "WITHOUT ROWID" not in _chunks_sql(c).upper()
    with c.transaction():
        ino = c.new_inode(mode=REG, uid=1, gid=2).id
        c.set_chunk(ino, 0, b"b" * 16, 5, "r", data=b"sealed")
        c.set_chunk(ino, 1, b"c" * 16, 7, "r")
    rows = c.chunks(ino)
    c.close()
    _make_chunks_without_rowid(str(path))
    if room is False:  # the copy cannot be made
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE chunks_rowid (x)")
        db.commit()
        db.close()
    if room == "disk":  # too little free space for the copy: not even tried
        real = os.statvfs
        monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(
            tuple(real(p)[:4]) + (10,) + tuple(real(p)[5:])))
        room = False
    c = Catalog(path)
    try:
        assert ("WITHOUT ROWID" in _chunks_sql(c).upper()) is not room
        assert c.chunks(ino) == rows and c.stored_length(ino) == 12
        assert c.db.execute("SELECT tbl_name FROM sqlite_master WHERE name='chunks_blob'"
                            ).fetchone() == ("chunks",)
        assert c.db.execute("PRAGMA index_info(chunks_blob)").fetchall()[0][2] == "blob"
        with c.transaction():
            c.set_chunk(ino, 0, b"d" * 16, 9, "r")
        assert c.chunk(ino, 0).length == 9
        assert ("older, slower form" in caplog.text) is not room
        if room:  # the lookup for shared blobs needs only the index
            assert [r[2] for r in c.db.execute("PRAGMA index_info(chunks_blob)")] == \
                ["blob", "inode"]
    finally:
        c.close()


def test_missing_catalog_without_create(tmp_path):
    with pytest.raises(CosfsError) as ei:
        Catalog(tmp_path / "nope.db")
    assert ei.value.errno == errno.ENOENT
    assert ei.value.code == "NoSuchStore"
    assert not (tmp_path / "nope.db").exists()


def test_reopen_keeps_data(tmp_path):
    path = tmp_path / "catalog.db"
    c = Catalog(path, create=True)
    ino = new_file(c).id
    with c.transaction():
        c.add_dentry(ROOT_INODE, b"f", ino)
    c.close()
    c = Catalog(path)
    try:
        assert c.lookup(ROOT_INODE, b"f") == ino
    finally:
        c.close()


def test_wrong_schema_version_refused(tmp_path):
    path = tmp_path / "catalog.db"
    c = Catalog(path, create=True)
    with c.transaction():
        c.set_meta("schema_version", SCHEMA_VERSION + 1)
    c.close()
    with pytest.raises(CosfsError) as ei:
        Catalog(path)
    assert ei.value.code == "CorruptCatalog"
    assert "schema version" in str(ei.value) and str(path) in str(ei.value)


@pytest.mark.parametrize("content", [b"this is not a database at all" * 100,
                                     b"SQLite format 3\0" + b"\xff" * 4000])
def test_unusable_file_refused(tmp_path, content):
    path = tmp_path / "catalog.db"
    path.write_bytes(content)
    with pytest.raises(CosfsError) as ei:
        Catalog(path)
    assert ei.value.code == "CorruptCatalog"
    assert "unusable" in str(ei.value) and str(path) in str(ei.value)
    assert path.read_bytes() == content  # never "repaired" by overwriting


# -- transactions -------------------------------------------------------------------
def test_rollback_on_exception(cat):
    with pytest.raises(RuntimeError):
        with cat.transaction():
            cat.set_meta("k", "v")
            new_file(cat)
            raise RuntimeError("boom")
    assert cat.get_meta("k") is None
    assert cat.inode_count() == 1
    assert not cat.db.in_transaction
    with cat.transaction():  # usable afterwards
        cat.set_meta("k", "w")
    assert cat.get_meta("k") == "w"


def test_nested_transactions_join_the_outer(cat):
    with cat.transaction():
        cat.set_meta("a", 1)
        with cat.transaction():
            cat.set_meta("b", 2)
        assert cat.db.in_transaction  # inner exit did not commit
    assert (cat.get_meta("a"), cat.get_meta("b")) == (1, 2)
    assert not cat.db.in_transaction


def test_inner_exception_rolls_back_everything(cat):
    with pytest.raises(KeyError):
        with cat.transaction():
            cat.set_meta("a", 1)
            with cat.transaction():
                cat.set_meta("b", 2)
                raise KeyError("x")
    assert cat.get_meta("a") is None and cat.get_meta("b") is None
    assert cat._depth == 0


def test_rollback_of_base_exception(cat):
    with pytest.raises(KeyboardInterrupt):
        with cat.transaction():
            cat.set_meta("a", 1)
            raise KeyboardInterrupt
    assert cat.get_meta("a") is None


def test_durable_commit(cat):
    with cat.transaction(durable=True):
        cat.set_meta("x", 1)
    assert cat.get_meta("x") == 1
    assert cat.get_meta("last_sync") is not None
    assert cat.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # back to NORMAL
    with pytest.raises(ValueError):
        with cat.transaction(durable=True):
            raise ValueError
    assert cat.db.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_commit_visible_to_another_connection(cat):
    with cat.transaction():
        cat.set_meta("seen", "yes")
    other = sqlite3.connect(cat.path)
    try:
        assert other.execute("SELECT value FROM meta WHERE key='seen'").fetchone() == ("yes",)
    finally:
        other.close()


def test_checkpoint(cat):
    with cat.transaction():
        cat.set_meta("x", b"y" * 10000)
    cat.checkpoint()
    assert cat.get_meta("x") == b"y" * 10000


# -- inodes ----------------------------------------------------------------------------
def test_inode_helpers(cat):
    ino = new_file(cat, object_id=b"o" * 16, bucket=7, enc_request="AES256")
    assert ino.is_reg and not ino.is_dir
    assert (ino.uid, ino.gid, ino.nlink, ino.bucket, ino.size) == (1, 2, 1, 7, 0)
    assert ino.object_id == b"o" * 16 and ino.enc_request == "AES256" and ino.enc is None
    with cat.transaction():
        cat.update_inode(ino.id, size=42, enc="AES256", wrapped_key=b"w")
        cat.update_inode(ino.id)  # no fields: no-op
    got = cat.get_inode(ino.id)
    assert (got.size, got.enc, got.wrapped_key) == (42, "AES256", b"w")
    with pytest.raises(FsError) as ei:
        cat.get_inode(99999)
    assert ei.value.errno == errno.ENOENT


def test_delete_inode_moves_chunks_to_garbage(cat):
    ino = new_file(cat).id
    with cat.transaction():
        cat.set_chunk(ino, 0, b"b0", 10, "r1")
        cat.set_chunk(ino, 1, b"b1", 10, "r1")
        cat.set_xattr(ino, b"user.a", b"1")
    cat.delete_inode(ino, "r1")
    with pytest.raises(FsError):
        cat.get_inode(ino)
    assert cat.chunks(ino) == []
    assert cat.list_xattrs(ino) == []
    assert sorted(cat.garbage()) == [(b"b0", "r1"), (b"b1", "r1")]


def test_unlinked_inodes(cat):
    a = new_file(cat).id
    b = new_file(cat).id
    with cat.transaction():
        cat.update_inode(b, nlink=0)
    assert cat.unlinked_inodes() == [b]
    assert a not in cat.unlinked_inodes()


# -- dentries ----------------------------------------------------------------------------
def test_dentry_helpers(cat):
    with cat.transaction():
        d = cat.new_inode(mode=DIR, uid=0, gid=0, nlink=2)
        cat.add_dentry(ROOT_INODE, b"dir", d.id)
    files = {}
    with cat.transaction():
        for name in (b"b", b"a", b"c\xff", b"sub"):
            files[name] = cat.new_inode(mode=DIR if name == b"sub" else REG, uid=0, gid=0).id
            cat.add_dentry(d.id, name, files[name])
    assert cat.lookup(d.id, b"a") == files[b"a"]
    assert cat.lookup(d.id, b"zz") is None
    assert cat.has_children(d.id) and not cat.has_children(files[b"a"])
    assert cat.parent_of(d.id) == (ROOT_INODE, b"dir")
    assert cat.parent_of(ROOT_INODE) is None
    assert [n for n, _ in cat.list_dir(d.id)] == [b"a", b"b", b"c\xff", b"sub"]
    assert [n for n, _ in cat.list_dir(d.id, after=b"a", limit=2)] == [b"b", b"c\xff"]
    assert [n for n, _ in cat.list_dir(d.id, after=b"sub")] == []
    name, inode = cat.list_dir(d.id, limit=1)[0]
    assert inode.id == files[b"a"] and inode.is_reg
    with pytest.raises(sqlite3.IntegrityError):
        cat.add_dentry(d.id, b"a", files[b"b"])
    with cat.transaction():
        cat.set_dentry(d.id, b"a", files[b"b"])  # replace
        cat.remove_dentry(d.id, b"c\xff")
    assert cat.lookup(d.id, b"a") == files[b"b"]
    assert cat.lookup(d.id, b"c\xff") is None


def test_a_name_found_missing_is_remembered_until_a_dentry_changes(cat):
    """The kernel's LOOKUP of a new name and the CREATE after it ask SQLite once; every
    change of a dentry, and a rollback, forgets the missing name."""
    with cat.transaction():
        d = cat.new_inode(mode=DIR, uid=0, gid=0, nlink=2)
        cat.add_dentry(ROOT_INODE, b"dir", d.id)
        f = cat.new_inode(mode=REG, uid=0, gid=0).id
    queries = []
    cat.db.set_trace_callback(lambda sql: queries.append(sql) if "dentries" in sql else None)
    assert cat.lookup(d.id, b"new") is None
    assert cat.lookup(d.id, b"new") is None
    assert len(queries) == 1
    with cat.transaction():
        cat.add_dentry(d.id, b"new", f)
    assert cat.lookup(d.id, b"new") == f
    with cat.transaction():
        cat.remove_dentry(d.id, b"new")
    assert cat.lookup(d.id, b"new") is None
    with cat.transaction():
        cat.set_dentry(d.id, b"new", f)
    assert cat.lookup(d.id, b"new") == f
    with pytest.raises(RuntimeError):
        with cat.transaction():
            cat.remove_dentry(d.id, b"new")
            assert cat.lookup(d.id, b"new") is None
            raise RuntimeError("roll back")
    assert cat.lookup(d.id, b"new") == f  # the rollback brought it back
    cat.db.set_trace_callback(None)


# -- chunks and garbage -------------------------------------------------------------------
def test_chunk_helpers(cat):
    ino = new_file(cat).id
    with cat.transaction():
        for i in range(4):
            cat.set_chunk(ino, i, b"blob%d" % i, 100 + i, "r")
    assert cat.chunks(ino) == [Chunk(i, b"blob%d" % i, 100 + i) for i in range(4)]
    assert cat.chunk(ino, 2) == Chunk(2, b"blob2", 102)
    assert cat.chunk(ino, 9) is None
    assert cat.garbage() == []
    with cat.transaction():
        cat.set_chunk(ino, 1, b"blob1", 50, "r")  # same blob: nothing released
        cat.set_chunk(ino, 2, b"new2", 7, "r")
    assert cat.chunk(ino, 1).length == 50
    assert cat.garbage() == [(b"blob2", "r")]
    with cat.transaction():
        cat.drop_chunks_from(ino, 2, "r")
    assert [c.idx for c in cat.chunks(ino)] == [0, 1]
    assert {b for b, _ in cat.garbage()} == {b"blob2", b"new2", b"blob3"}
    assert cat.referenced_blobs() == {b"blob0", b"blob1"}
    assert [(i, c.idx) for i, c in cat.chunk_rows()] == [(ino, 0), (ino, 1)]


def test_garbage_table(cat):
    with cat.transaction():
        for i in range(10):
            cat.add_garbage(b"g%d" % i, "r")
        cat.add_garbage(b"g0", "r")  # duplicates ignored
    assert len(cat.garbage()) == 10
    assert len(cat.garbage(limit=3)) == 3
    cat.forget_garbage([b"g%d" % i for i in range(5)])
    assert sorted(b for b, _ in cat.garbage()) == [b"g%d" % i for i in range(5, 10)]



def test_named_blobs_by_range(cat):
    """What the start after a crash checks a store's blobs against, a prefix at a time."""
    a, b = new_file(cat).id, new_file(cat).id
    with cat.transaction():
        cat.set_chunk(a, 0, b"\x10" + b"a" * 15, 10, "r")
        cat.set_chunk(a, 1, b"\x20" + b"b" * 15, 10, "r")
        cat.set_chunk(b, 0, b"\x10" + b"a" * 15, 10, "r")  # shared by a noncurrent version
        cat.set_chunk(b, 1, b"\xff" + b"c" * 15, 10, "r")
        cat.add_garbage(b"\x20" + b"g" * 15, "r")
    assert cat.named_blobs(b"\x10", b"\x11") == {b"\x10" + b"a" * 15}
    assert cat.named_blobs(b"\x20", b"\x21") == {b"\x20" + b"b" * 15, b"\x20" + b"g" * 15}
    assert cat.named_blobs(b"\x11", b"\x20") == set()
    assert cat.named_blobs(b"\xff") == {b"\xff" + b"c" * 15}

# -- xattrs --------------------------------------------------------------------------------
def test_xattr_helpers(cat):
    ino = new_file(cat).id
    assert cat.get_xattr(ino, b"user.a") is None
    assert cat.xattr_bytes(ino) == 0
    with cat.transaction():
        cat.set_xattr(ino, b"user.b", b"22")
        cat.set_xattr(ino, b"user.a", b"1")
        cat.set_xattr(ino, b"user.a", b"111")
    assert cat.get_xattr(ino, b"user.a") == b"111"
    assert cat.list_xattrs(ino) == [b"user.a", b"user.b"]
    assert cat.xattr_bytes(ino) == len(b"user.a111") + len(b"user.b22")
    assert cat.remove_xattr(ino, b"user.a") is True
    assert cat.remove_xattr(ino, b"user.a") is False
    assert cat.list_xattrs(ino) == [b"user.b"]


# -- buckets ------------------------------------------------------------------------------
def test_bucket_helpers(cat):
    with cat.transaction():
        b1 = cat.new_inode(mode=DIR, uid=0, gid=0, nlink=2).id
        b2 = cat.new_inode(mode=DIR, uid=0, gid=0, nlink=2).id
        cat.add_bucket(b2, "zeta-1250000000", "ap-shanghai")
        cat.add_bucket(b1, "alpha-1250000000", "ap-guangzhou")
    assert cat.buckets() == [(b1, "alpha-1250000000", "ap-guangzhou"),
                             (b2, "zeta-1250000000", "ap-shanghai")]
    assert cat.bucket_by_name("zeta-1250000000") == (b2, "zeta-1250000000", "ap-shanghai")
    assert cat.bucket_by_inode(b1)[1] == "alpha-1250000000"
    assert cat.bucket_by_name("nope") is None
    with pytest.raises(sqlite3.IntegrityError):
        cat.add_bucket(b1 + 100, "alpha-1250000000", "ap-guangzhou")
    assert cat.get_bucket_config(b1, "encryption") is None
    with cat.transaction():
        cat.set_bucket_config(b1, "encryption", b"<doc/>")
        cat.set_bucket_config(b1, "encryption", b"<doc2/>")
        cat.set_bucket_config(b1, "other", b"x")
    assert cat.get_bucket_config(b1, "encryption") == b"<doc2/>"
    with cat.transaction():
        cat.delete_bucket_config(b1, "encryption")
    assert cat.get_bucket_config(b1, "encryption") is None
    with cat.transaction():
        cat.remove_bucket(b1)
    assert cat.bucket_by_inode(b1) is None
    assert cat.get_bucket_config(b1, "other") is None


def _open_fds_on(path):
    path = os.path.realpath(path)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.path.realpath(os.readlink("/proc/self/fd/" + fd)) == path:
                n += 1
        except OSError:
            pass
    return n


def test_refused_catalog_is_not_left_open(tmp_path):
    path = tmp_path / "catalog.db"
    c = Catalog(path, create=True)
    with c.transaction():
        c.set_meta("schema_version", 0)
    c.close()
    with pytest.raises(CosfsError):
        Catalog(path)
    assert _open_fds_on(path) == 0
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(CosfsError):
        Catalog(bad)
    assert _open_fds_on(bad) == 0


# -- the clock ------------------------------------------------------------------------
def kernel_now(path):
    """The time the kernel gives a file it is told to stamp now (``touch``)."""
    os.utime(path, None)
    return os.stat(path).st_mtime_ns


@pytest.mark.parametrize("folder", ["tmp", "disk"])
def test_clock_agrees_with_the_kernels_file_times(tmp_path, tmp_path_factory, folder):
    """Each stamp lies between the kernel's file stamps just before and just after it, on
    tmpfs and on the disk alike, over many rounds: no later event gets an earlier time."""
    probe = (tmp_path if folder == "tmp" else tmp_path_factory.mktemp("clock")) / "probe"
    probe.touch()
    last = 0
    for _ in range(5000):
        k0 = kernel_now(probe)
        t = catalog.now_ns()
        k1 = kernel_now(probe)
        assert k0 <= t <= k1
        assert t >= last
        last = t


def test_clock_is_never_ahead_of_the_system_clock():
    for _ in range(5000):
        t = catalog.now_ns()
        assert t <= time.time_ns()
        # and behind it by less than a clock tick (HZ is 100 or more)
        assert time.time_ns() - t < 20_000_000


def test_clock_falls_back_to_the_coarse_clock(monkeypatch):
    monkeypatch.setattr(catalog, "_clock_fd", -1)
    for _ in range(100):
        c0 = time.clock_gettime_ns(catalog._COARSE)
        t = catalog.now_ns()
        assert c0 <= t <= time.clock_gettime_ns(catalog._COARSE)


# -- the write-through caches ----------------------------------------------------------
def _fresh(cat, ino):
    row = cat.db.execute(catalog._SELECT_INODE + " WHERE id=?", (ino,)).fetchone()
    return None if row is None else catalog.Inode(*row)


def _fresh_parent(cat, ino):
    return cat.db.execute("SELECT parent, name FROM dentries WHERE inode=? LIMIT 1",
                          (ino,)).fetchone()


def test_caches_agree_with_the_database_through_commits_and_rollbacks(cat):
    import random
    rnd = random.Random(7)
    inos = []
    for step in range(600):
        op = rnd.choice(["new", "update", "delete", "move", "fail", "list"])
        if op == "new" or not inos:
            with cat.transaction():
                ino = cat.new_inode(mode=rnd.choice([REG, DIR]), uid=rnd.randrange(9), gid=0,
                                    object_id=os.urandom(16)).id
                cat.add_dentry(ROOT_INODE, b"n%d" % step, ino)
            inos.append(ino)
        try:
            with cat.transaction():
                ino = rnd.choice(inos)
                if op == "update":
                    cat.update_inode(ino, size=rnd.randrange(1000), mode=REG | 0o600,
                                     etag="e%d" % step)
                elif op == "delete":
                    row = _fresh_parent(cat, ino)
                    cat.remove_dentry(*row)
                    cat.delete_inode(ino, "r")
                    inos.remove(ino)
                elif op == "move":
                    row = _fresh_parent(cat, ino)
                    cat.set_dentry(ROOT_INODE, b"m%d" % step, ino)
                    cat.remove_dentry(*row)
                elif op == "list":  # a listing's rows join the inode cache
                    cat.list_dir(ROOT_INODE, stored=rnd.random() < 0.5)
                elif op == "fail":
                    cat.update_inode(ino, size=999999)
                    cat.get_inode(ino)
                    cat.parent_of(ino)
                    cat.list_dir(ROOT_INODE, stored=rnd.random() < 0.5)
                    raise RuntimeError("roll back")
        except RuntimeError:
            pass
        for i in inos:
            assert cat.get_inode(i) == _fresh(cat, i), (step, op, i)
            assert cat.parent_of(i) == _fresh_parent(cat, i), (step, op, i)


def test_a_listing_fills_the_inode_cache(cat, monkeypatch):
    """The entries a listing with attributes returned are opened and stat'ed next: their
    rows come from memory then, not from the table (a disk read when it is cold)."""
    inos = []
    for i in range(5):
        with cat.transaction():
            ino = cat.new_inode(mode=REG, uid=1, gid=2, object_id=os.urandom(16)).id
            cat.add_dentry(ROOT_INODE, b"f%d" % i, ino)
        inos.append(ino)
    cat._inodes.clear()
    listed = dict(cat.list_dir(ROOT_INODE, stored=True))
    monkeypatch.setattr(cat, "db", None)  # any query now fails
    assert [cat.get_inode(i) for i in inos] == [listed[b"f%d" % i] for i in range(5)]


def test_a_failed_commit_empties_the_caches(cat, monkeypatch):
    ino = new_file(cat).id
    cat.get_inode(ino)
    assert ino in cat._inodes
    cat._inodes[ino] = cat._inodes[ino]  # cached
    real = cat.db

    class Failing:
        def execute(self, sql, *a):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *a)

    monkeypatch.setattr(cat, "db", Failing())
    with pytest.raises(CosfsError):
        with cat.transaction():
            cat.update_inode(ino, size=5)
    monkeypatch.setattr(cat, "db", real)
    assert not cat._inodes
    assert cat.get_inode(ino).size == 0


def _fresh_chunk(cat, ino, idx):
    row = cat.db.execute("SELECT idx, blob, length, data FROM chunks WHERE inode=? AND idx=?",
                         (ino, idx)).fetchone()
    return None if row is None else Chunk(*row)


def _fresh_bucket(cat, ino):
    return cat.db.execute("SELECT inode, name, region FROM buckets WHERE inode=?",
                          (ino,)).fetchone()


def _fresh_stored(cat, ino):
    return sum(r[0] for r in cat.db.execute("SELECT length FROM chunks WHERE inode=?", (ino,)))


def test_chunk_and_bucket_caches_agree_with_the_database(cat, monkeypatch):
    """Chunk rows, bucket rows and bucket configurations are cached write-through like
    inode rows: every change through the catalog (and every rollback) keeps what the
    cache answers equal to the database, also when a deleted inode's number is used
    again."""
    import random
    monkeypatch.setattr(catalog, "CHUNK_CACHE_SIZE", 40)  # eviction happens too
    monkeypatch.setattr(catalog, "STORED_CACHE_SIZE", 5)
    rnd = random.Random(11)
    inos = []
    for step in range(800):
        op = rnd.choice(["new", "set", "pack", "drop", "link", "clone", "delete", "bucket",
                         "unbucket", "conf", "unconf", "fail", "list"])
        if op == "new" or not inos:
            inos.append(new_file(cat).id)
            with cat.transaction():
                cat.add_dentry(ROOT_INODE, b"n%d" % step, inos[-1])
            continue
        ino = rnd.choice(inos)
        try:
            with cat.transaction():
                if op == "set":
                    cat.set_chunk(ino, rnd.randrange(6), os.urandom(4), rnd.randrange(1, 99), "r")
                elif op == "pack":
                    cat.set_chunk(ino, rnd.randrange(6), os.urandom(4), 3, "r", data=b"abc")
                elif op == "drop":
                    cat.drop_chunks_from(ino, rnd.randrange(6), "r")
                elif op == "link":
                    dst = cat.new_inode(mode=REG, uid=1, gid=2).id
                    cat.chunk(dst, 0)  # a miss is cached before the rows arrive
                    cat.link_chunks(ino, dst)
                    inos.append(dst)
                elif op == "clone":
                    inos.append(cat.clone_inode(ino))
                elif op == "delete":
                    # the highest number goes, so the next new inode gets it again
                    ino = max(inos)
                    cat.delete_inode(ino, "r")
                    inos.remove(ino)
                elif op == "bucket":
                    if _fresh_bucket(cat, ino) is None:
                        cat.bucket_by_inode(ino)
                        cat.add_bucket(ino, "b%d-1250000000" % step, "ap-test")
                elif op == "unbucket":
                    cat.remove_bucket(ino)
                elif op == "list":
                    cat.list_dir(ROOT_INODE, stored=True)  # learns stored lengths of entries
                elif op == "conf":
                    cat.get_bucket_config(ino, "encryption")
                    cat.set_bucket_config(ino, "encryption", "doc %d" % step)
                elif op == "unconf":
                    cat.delete_bucket_config(ino, "encryption")
                elif op == "fail":
                    cat.set_bucket_config(ino, "encryption", "lost")
                    cat.get_bucket_config(ino, "encryption")
                    cat.set_chunk(ino, 0, b"lost", 1, "r")
                    cat.chunk(ino, 0)
                    cat.stored_length(ino)  # cached inside the transaction that rolls back
                    cat.inode_count()
                    cat.new_inode(mode=REG, uid=1, gid=2)  # counted, then rolled back
                    cat.add_bucket(ino + 10 ** 6, "gone-1250000000", "ap-test")
                    cat.bucket_by_inode(ino + 10 ** 6)
                    raise RuntimeError("roll back")
                for i in rnd.sample(inos, min(3, len(inos))):  # inside the transaction too
                    for idx in range(6):
                        assert cat.chunk(i, idx) == _fresh_chunk(cat, i, idx), (step, op)
                    assert cat.stored_length(i) == _fresh_stored(cat, i), (step, op)
        except RuntimeError:
            pass
        for i in inos + [ino + 10 ** 6]:
            for idx in range(6):
                assert cat.chunk(i, idx) == _fresh_chunk(cat, i, idx), (step, op, i, idx)
            assert cat.stored_length(i) == _fresh_stored(cat, i), (step, op, i)
            assert cat.bucket_by_inode(i) == _fresh_bucket(cat, i), (step, op, i)
            fresh = cat.db.execute("SELECT doc FROM bucket_configs WHERE bucket=? AND kind=?",
                                   (i, "encryption")).fetchone()
            assert cat.get_bucket_config(i, "encryption") == (fresh and fresh[0]), (step, op)
        assert cat.inode_count() == cat.db.execute("SELECT count(*) FROM inodes").fetchone()[0]
        assert cat._chunk_rows == sum(len(v) for v in cat._chunks.values())
        assert cat._chunk_rows <= 40 + 6
        assert not [c for rows in cat._chunks.values() for c in rows.values()
                    if c is not None and c.packed]  # sealed bytes are not kept in memory
        assert all(cat._chunks.values())  # no empty entries pile up
