"""Bad input at every door: object and bucket names, xattr values, bucket XML,
configuration files and key stores, through a real mount and the command line.

Every refusal must be the documented errno (or CLI error code and exit
status), must leave what was there unchanged, and must never take the
daemon down: after each filesystem-level bad input the mount still answers.
"""

import errno
import hashlib
import os
import shutil
import stat
import subprocess

import pytest

from conftest import (APPID, ENC, PLAIN, Mount, cosfs_cmd, fuse_available, get, is_mounted,
                      put, write_config)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse and fusermount3"),
]

ENC_XATTR = "user.cos.bucket-encryption"
SSE_XATTR = "user.cos.server-side-encryption"
BUCKET_DOC = (b"<ServerSideEncryptionConfiguration><Rule><ApplyServerSideEncryptionByDefault>"
              b"<SSEAlgorithm>%s</SSEAlgorithm></ApplyServerSideEncryptionByDefault></Rule>"
              b"</ServerSideEncryptionConfiguration>")


def err_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


def cli_inproc(capsys, *args):
    """Run the command line in this process (no interpreter start-up); (status, stderr)."""
    from cosfs import cli
    capsys.readouterr()
    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


def alive(m):
    """The daemon still runs and answers."""
    assert m.proc.poll() is None, m.log_text()[-2000:]
    assert sorted(os.listdir(m.mnt)) == sorted([PLAIN, ENC])
    assert os.stat(m.plain).st_mode & stat.S_IFDIR


# -- object names ------------------------------------------------------------------
ODD_BUT_VALID = ["new\nline", "tab\there", "bell\x07", "del\x7f", "esc-free\x1f", "\x01start",
                 "cr\r", "unicode-\u00e9\u4e2d\U0001f600", " lead and trail ", "back\\slash",
                 "*%?#[]{}", "~$!&'()+,;=@"]
FORBIDDEN = [b"can\x18", b"em\x19x", b"\x1asub", b"esc\x1b"]
# U+F780..U+F7FF stand for escaped bytes in keys: a name that holds one is refused
RESERVED = ["\uf780".encode(), "x\uf7ff".encode(), b"\xff" + "\uf7e9".encode()]
# not UTF-8: kept under an escaped key, given back byte for byte
BAD_UTF8 = [b"\xff", b"half\xc3", b"\xc3(", b"\xed\xa0\x80surrogate", b"over\xc0\xaf",
            b"latin1-\xe9t\xe9"]


def test_odd_names_round_trip(mount):
    for bucket in (mount.plain, mount.enc):
        for name in ODD_BUT_VALID:
            path = os.path.join(bucket, name)
            put(path, name.encode() * 3)
            os.mkdir(os.path.join(bucket, "d" + name))
        listed = set(os.listdir(bucket))
        for name in ODD_BUT_VALID:
            assert name in listed and "d" + name in listed, repr(name)
    mount.restart()
    for bucket in (mount.plain, mount.enc):
        for name in ODD_BUT_VALID:
            assert get(os.path.join(bucket, name)) == name.encode() * 3
            assert os.path.isdir(os.path.join(bucket, "d" + name))


def test_forbidden_names(mount):
    tried = 0
    src = os.path.join(mount.plain, b"src".decode())
    put(src, b"x")
    bsrc = os.fsencode(src)
    bplain = os.fsencode(mount.plain)
    for bad in FORBIDDEN + RESERVED:
        path = os.path.join(bplain, bad)
        nested = os.path.join(bplain, b"ok-dir", bad)
        os.makedirs(os.path.join(bplain, b"ok-dir"), exist_ok=True)
        for what, fn, args in (
                ("create", put, (path, b"data")),
                ("create nested", put, (nested, b"data")),
                ("mkdir", os.mkdir, (path,)),
                ("mknod", os.mknod, (path,)),
                ("symlink", os.symlink, (b"target", path)),
                ("link", os.link, (bsrc, path)),
                ("rename", os.rename, (bsrc, path))):
            assert err_of(fn, *args) == errno.EINVAL, (what, bad)
            tried += 1
        assert bad not in os.listdir(bplain)
        alive(mount)
    # the symlink *target* is content, not a key: any bytes go
    os.symlink(b"\xff\x18", os.path.join(bplain, b"link"))
    assert os.readlink(os.path.join(bplain, b"link")) == b"\xff\x18"
    assert get(src) == b"x"
    print("forbidden names tried:", tried)
    assert "reserved for bytes that are not UTF-8" in mount.log_text()


def test_names_that_are_not_utf8_round_trip(mount):
    def expected(bad):
        return sorted(n + bad for n in (b"", b"fifo-", b"ln-", b"hard-", b"ren-"))

    for bucket in (mount.plain, mount.enc):
        b = os.fsencode(bucket)
        src = os.path.join(b, b"src")
        put(src, b"linked")
        for bad in BAD_UTF8:
            d = os.path.join(b, b"d-" + bad)
            os.mkdir(d)
            put(os.path.join(d, bad), bad * 3)
            os.mknod(os.path.join(d, b"fifo-" + bad), stat.S_IFIFO | 0o600)
            os.symlink(b"t-" + bad, os.path.join(d, b"ln-" + bad))
            os.link(src, os.path.join(d, b"hard-" + bad))
            put(os.path.join(d, b"tmp"), b"renamed")
            os.rename(os.path.join(d, b"tmp"), os.path.join(d, b"ren-" + bad))
            assert sorted(os.listdir(d)) == expected(bad)
    mount.restart()
    for bucket in (mount.plain, mount.enc):
        b = os.fsencode(bucket)
        assert sorted(os.listdir(b)) == sorted([b"src"] + [b"d-" + bad for bad in BAD_UTF8])
        for bad in BAD_UTF8:
            d = os.path.join(b, b"d-" + bad)
            assert sorted(os.listdir(d)) == expected(bad)
            assert get(os.path.join(d, bad)) == bad * 3
            assert stat.S_ISFIFO(os.lstat(os.path.join(d, b"fifo-" + bad)).st_mode)
            assert os.readlink(os.path.join(d, b"ln-" + bad)) == b"t-" + bad
            assert get(os.path.join(d, b"hard-" + bad)) == b"linked"
            assert get(os.path.join(d, b"ren-" + bad)) == b"renamed"
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)
        assert os.listdir(b) == [b"src"]
    alive(mount)


def test_key_length(mount):
    """Keys are limited to 850 bytes of UTF-8 (ENAMETOOLONG), names to 255 bytes."""
    for bucket in (mount.plain, mount.enc):
        b = os.fsencode(bucket)
        d = os.path.join(b, b"a" * 200, b"b" * 200, b"c" * 200, b"d" * 200)  # key 803 + '/'
        os.makedirs(d)
        ok = os.path.join(d, b"e" * 46)  # 804 + 46 = 850 bytes exactly
        put(ok, b"fits")
        assert get(ok) == b"fits"
        assert err_of(put, os.path.join(d, b"e" * 47), b"") == errno.ENAMETOOLONG
        assert err_of(os.mkdir, os.path.join(d, b"e" * 47)) == errno.ENAMETOOLONG
        assert err_of(os.rename, ok, os.path.join(d, b"e" * 47)) == errno.ENAMETOOLONG
        # multi-byte characters count in bytes: 16 x 3 = 48 bytes
        assert err_of(put, os.path.join(d, "\u4e2d".encode() * 16), b"") == errno.ENAMETOOLONG
        assert err_of(put, os.path.join(b, b"n" * 256), b"") == errno.ENAMETOOLONG
        assert get(ok) == b"fits"
        alive(mount)


BAD_BUCKETS = {
    "uppercase": "Photos-" + APPID,
    "underscore": "my_photos-" + APPID,
    "leading dash": "-photos-" + APPID,
    "trailing dash": "photos--" + APPID,
    "missing appid": "photos",
    "empty name": "-" + APPID,
    "non-digit appid": "photos-12x50000000",
    "wrong appid": "photos-1250000001",
    "endpoint too long": "p" * 40 + "-" + APPID,
    "dot": "pho.tos-" + APPID,
    "space": "pho tos-" + APPID,
}


def test_bad_bucket_names(mount, capsys):
    for rule, name in BAD_BUCKETS.items():
        assert err_of(os.mkdir, os.path.join(mount.mnt, name)) == errno.EINVAL, rule
        assert name not in os.listdir(mount.mnt)
    assert err_of(os.mkdir, os.path.join(os.fsencode(mount.mnt), b"bad\xff-" + APPID.encode())) \
        == errno.EINVAL
    alive(mount)
    log = mount.log_text()
    for rule, name in BAD_BUCKETS.items():
        assert "mkdir %r at the mount root" % name.encode() in log, rule
    # the CLI refuses the same names for an unmounted store
    mount.stop()
    for rule, name in BAD_BUCKETS.items():
        rc, err = cli_inproc(capsys, "bucket-encryption", "--method", "get", "--config",
                             mount.config, "--", name)
        assert rc == 1 and len(err.strip().splitlines()) == 1, (rule, err)
        assert err.startswith("cosfs: "), err
    mount.start()


# -- xattr values ---------------------------------------------------------------------
def test_xattr_values(mount):
    obj = os.path.join(mount.plain, "obj")
    data = os.urandom(300000)
    put(obj, data)
    for bad in (b"AES128", b"aes256", b"", b"AES256 x", b"\xff\xfe", b"KMS\x00x", b"SM4;AES256",
                b"A" * 70000):
        e = err_of(os.setxattr, obj, SSE_XATTR, bad)
        assert e in ((errno.EINVAL,) if len(bad) <= 65536 else (errno.E2BIG, errno.EINVAL)), bad
        assert err_of(os.getxattr, obj, SSE_XATTR) == errno.ENODATA  # still plaintext
    assert get(obj) == data

    # user xattrs: any bytes, up to 64 KiB
    raw = bytes(range(256)) + b"\xff\xfe\x00"
    os.setxattr(obj, "user.raw", raw)
    assert os.getxattr(obj, "user.raw") == raw
    os.setxattr(obj, "user.big", b"v" * 65536)
    assert len(os.getxattr(obj, "user.big")) == 65536
    assert err_of(os.setxattr, obj, "user.bigger", b"v" * 65537) == errno.E2BIG
    assert err_of(os.setxattr, obj, "user." + "n" * 251, b"v") == errno.ERANGE
    assert err_of(os.getxattr, obj, "user.bigger") == errno.ENODATA

    # status attributes are read-only; other cos names and namespaces are refused
    for name in ("user.cos.etag", "user.cos.version-id", "user.cos.replication-status"):
        assert err_of(os.setxattr, obj, name, b"forged") == errno.EPERM, name
        assert err_of(os.removexattr, obj, name) == errno.EPERM, name
    assert err_of(os.setxattr, mount.plain, "user.cos.bucket-region", b"ap-shanghai") \
        == errno.EPERM
    assert os.getxattr(mount.plain, "user.cos.bucket-region") == b"ap-guangzhou"
    assert err_of(os.setxattr, obj, "user.cos.whatever", b"x") == errno.EINVAL
    assert err_of(os.setxattr, obj, ENC_XATTR, b"AES256") == errno.EINVAL
    for ns in ("trusted.x", "security.x", "system.x"):
        assert err_of(os.setxattr, obj, ns, b"x") in (errno.ENOTSUP, errno.EOPNOTSUPP,
                                                      errno.EPERM), ns
    # non-UTF-8 names are bytes too
    os.setxattr(obj, b"user.\xff\xfe", b"odd")
    assert os.getxattr(obj, b"user.\xff\xfe") == b"odd"
    assert os.fsdecode(b"user.\xff\xfe") in os.listxattr(obj)

    # many long names: refused (ENOSPC) before the list outgrows what listxattr can answer
    many = os.path.join(mount.plain, "many")
    put(many, b"")
    n = 0
    while True:
        e = err_of(os.setxattr, many, "user.%05d" % n + "x" * 240, b"")
        if e is not None:
            assert e == errno.ENOSPC, e
            break
        n += 1
        assert n < 2000
    assert 200 < n and len(os.listxattr(many)) == n
    assert subprocess.run(["cp", "-a", many, many + ".copy"]).returncode == 0
    assert len(os.listxattr(many + ".copy")) == n
    alive(mount)
    mount.restart()
    assert os.getxattr(obj, "user.raw") == raw
    assert err_of(os.getxattr, obj, SSE_XATTR) == errno.ENODATA
    assert get(obj) == data


# -- bucket XML -------------------------------------------------------------------------
BILLION_LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                  + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1
                                                          else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b"]><ServerSideEncryptionConfiguration><Rule>"
                  b"<ApplyServerSideEncryptionByDefault><SSEAlgorithm>&lol9;</SSEAlgorithm>"
                  b"</ApplyServerSideEncryptionByDefault></Rule></ServerSideEncryptionConfiguration>")
EXTERNAL_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                   + BUCKET_DOC % b"&e;")
BAD_DOCS = {
    "malformed": b"<ServerSideEncryptionConfiguration><Rule>",
    "not xml": b"this is not a document",
    "wrong root": b"<CORSConfiguration><Rule/></CORSConfiguration>",
    "unknown algorithm": BUCKET_DOC % b"AES128",
    "lower-case algorithm": BUCKET_DOC % b"aes256",
    "empty algorithm": BUCKET_DOC % b"",
    "unknown element": BUCKET_DOC.replace(b"<Rule>", b"<Rule><Extra>1</Extra>"),
    "two rules": BUCKET_DOC.replace(b"</Rule>", b"</Rule><Rule/>"),
    "kms key without kms": BUCKET_DOC.replace(b"</SSEAlgorithm>",
                                              b"</SSEAlgorithm><KMSMasterKeyID>k</KMSMasterKeyID>"),
    "billion laughs": BILLION_LAUGHS,
    "external entity": EXTERNAL_ENTITY,
    "processing instruction": b"<?php evil() ?>" + BUCKET_DOC % b"AES256",
    "deep nesting": b"<ServerSideEncryptionConfiguration>" + b"<Rule>" * 200 + b"</Rule>" * 200
                    + b"</ServerSideEncryptionConfiguration>",
    "huge": (BUCKET_DOC % b"AES256").replace(b"<Rule>", b"<!--" + b"x" * 70000 + b"--><Rule>"),
    "non-utf8": BUCKET_DOC % b"AES\xff256",
    "unknown encoding": b'<?xml version="1.0" encoding="bogus"?>' + BUCKET_DOC % b"AES256\xe9",
    "non-text codec": b'<?xml version="1.0" encoding="zlib"?>' + BUCKET_DOC % b"AES256\xe9",
}


def check_cli_refuses(capsys, args, path):
    rc, err = cli_inproc(capsys, "bucket-encryption", "--method", "put", *args, "--xml", path)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, (rc, err)
    assert lines[0].startswith("cosfs: MalformedXML"), lines


def test_bad_bucket_xml(mount, tmp_path, capsys):
    before = {b: os.getxattr(os.path.join(mount.mnt, b), ENC_XATTR) for b in (ENC,)}
    assert err_of(os.getxattr, mount.plain, ENC_XATTR) == errno.ENODATA
    for what, doc in BAD_DOCS.items():
        for bucket in (mount.plain, mount.enc):
            e = err_of(os.setxattr, bucket, ENC_XATTR, doc)
            expect = (errno.E2BIG,) if len(doc) > 65536 else (errno.EINVAL,)
            assert e in expect, (what, e)
        assert err_of(os.getxattr, mount.plain, ENC_XATTR) == errno.ENODATA, what
        assert os.getxattr(mount.enc, ENC_XATTR) == before[ENC], what
        alive(mount)
    assert "rejected encryption configuration" in mount.log_text()
    # the CLI, through the mount and on the unmounted store
    files = {}
    for i, (what, doc) in enumerate(BAD_DOCS.items()):
        files[what] = str(tmp_path / ("doc%d.xml" % i))
        with open(files[what], "wb") as f:
            f.write(doc)
    for what, path in files.items():
        check_cli_refuses(capsys, [mount.plain], path)
    assert err_of(os.getxattr, mount.plain, ENC_XATTR) == errno.ENODATA
    mount.stop()
    for what, path in files.items():
        check_cli_refuses(capsys, [PLAIN, "--config", mount.config], path)
        check_cli_refuses(capsys, [ENC, "--config", mount.config], path)
    # and once as a real process, for the exit status and the one line on stderr
    res = mount.cli("bucket-encryption", "--method", "put", ENC, "--config", mount.config,
                    "--xml", files["billion laughs"], check=False)
    assert res.returncode == 1 and res.stderr.startswith("cosfs: MalformedXML") and \
        len(res.stderr.strip().splitlines()) == 1, res
    res = mount.cli("bucket-encryption", "--method", "get", ENC, "--config", mount.config)
    assert res.stdout.strip().encode() == before[ENC].strip()
    res = mount.cli("bucket-encryption", "--method", "get", PLAIN, "--config", mount.config,
                    check=False)
    assert res.returncode == 1 and "NoSuchEncryptionConfiguration" in res.stderr
    mount.start()
    assert os.getxattr(mount.enc, ENC_XATTR) == before[ENC]
    print("bad XML documents tried:", len(BAD_DOCS), "x 5 doors")


# -- configuration files -------------------------------------------------------------------
def mount_refused(cfg_path, *extra):
    """``cosfs mount`` (background form) must fail with one line; returns that line."""
    res = subprocess.run(cosfs_cmd("mount", cfg_path, *extra), capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    mnt = os.path.join(os.path.dirname(cfg_path), "mnt")
    mounted = is_mounted(mnt)
    if mounted:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=30)
    assert not mounted, "bad input was mounted"
    assert res.returncode != 0, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cosfs: "), res.stderr
    return lines[0]


CONFIG_CASES = {
    # what: (edit of the good text, a word the message must name)
    "malformed yaml": (lambda t: t + "buckets: [unclosed\n", "YAML"),
    "tab indentation": (lambda t: t.replace("  - name: plain", "\t- name: plain"), "YAML"),
    "not a mapping": (lambda t: "- just\n- a list\n", "mapping"),
    "empty file": (lambda t: "", "empty"),
    "unknown key": (lambda t: t + "chunk_sise: 1MiB\n", "chunk_sise"),
    "unknown bucket key": (lambda t: t.replace("encryption: AES256", "encrypton: AES256"),
                           "encrypton"),
    "wrong type": (lambda t: t.replace("chunk_size: 1MiB", "chunk_size: [1]"), "chunk_size"),
    "boolean size": (lambda t: t.replace("chunk_size: 1MiB", "chunk_size: yes"), "chunk_size"),
    "ambiguous unit": (lambda t: t.replace("chunk_size: 1MiB", "chunk_size: 1MB"), "chunk_size"),
    "wrong appid type": (lambda t: t.replace('appid: "%s"' % APPID, "appid: [1]"), "appid"),
    "bad log level": (lambda t: t.replace("log_level: info", "log_level: loud"), "log_level"),
    "missing store": (lambda t: t.replace("store: ./data\n", ""), "store"),
    "missing keys": (lambda t: t.replace("keys: ./keys\n", ""), "keys"),
    "missing appid": (lambda t: t.replace('appid: "%s"\n' % APPID, ""), "appid"),
    "bad bucket name": (lambda t: t.replace("name: plain-", "name: Plain-"), "Plain"),
    "bucket of other appid": (lambda t: t.replace("name: plain-" + APPID, "name: plain-1"),
                              "plain-1"),
    "unknown region": (lambda t: t.replace("region: ap-guangzhou", "region: mars-base"),
                       "region"),
    "bad encryption": (lambda t: t.replace("encryption: AES256", "encryption: ROT13"),
                       "encryption"),
    "store is a file": (lambda t: t.replace("store: ./data", "store: ./cosfs.yaml"), "store"),
    "keys is a file": (lambda t: t.replace("keys: ./keys", "keys: ./cosfs.yaml"), "keys"),
    "store under a file": (lambda t: t.replace("store: ./data", "store: ./cosfs.yaml/data"),
                           "data"),
    "control character": (lambda t: t.replace("store: ./data", "store: ./da\x01ta"), "YAML"),
    "wrongly tagged value": (lambda t: t.replace("chunk_size: 1MiB", "chunk_size: !!float big"),
                             "YAML"),
    "tagged mapping key": (lambda t: t.replace("    encryption:", "!!bool    encryption:"),
                           "YAML"),
    "unknown user's home": (lambda t: t.replace("keys: ./keys", "keys: ~no-such-user/keys"),
                            "no-such-user"),
}


def test_config_files(tmp_path):
    tried = 0
    for i, (what, (edit, word)) in enumerate(CONFIG_CASES.items()):
        folder = str(tmp_path / ("c%d" % i))
        good = write_config(folder)
        with open(good) as f:
            text = f.read()
        with open(good, "w") as f:
            f.write(edit(text))
        line = mount_refused(good)
        assert word.lower() in line.lower(), (what, line)
        assert not os.path.exists(os.path.join(folder, "data", "catalog.db")), what
        assert not os.path.exists(os.path.join(folder, "keys")) or what == "keys is a file", what
        tried += 1
    # a config file that does not exist, or is not UTF-8
    line = mount_refused(str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in line
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"store: ./d\xe9ta\n")
    assert "UTF-8" in mount_refused(str(bad))
    print("bad configuration files tried:", tried + 2)
    # a relative path whose first component starts with "~" is not a home directory
    from cosfs import config
    good = write_config(str(tmp_path / "tilde"))
    with open(good) as f:
        text = f.read()
    with open(good, "w") as f:
        f.write(text.replace("store: ./data", "store: ./~data"))
    assert str(config.load(good).store) == str(tmp_path / "tilde" / "~data")


# -- key stores --------------------------------------------------------------------------
def store_digest(m):
    """Hash of everything in the store directory (names, modes, contents); the lock file and
    the daemon's own log are not store content."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(m.store)):
        dirs.sort()
        for name in sorted(files):
            if name in (".lock", "cosfs.log"):
                continue
            p = os.path.join(root, name)
            st = os.lstat(p)
            h.update(("%s %o %d\n" % (os.path.relpath(p, m.store), st.st_mode, st.st_size))
                     .encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_key_store_problems(tmp_path):
    m = Mount(write_config(str(tmp_path / "fs")))
    m.start()
    data = os.urandom(100000)
    put(os.path.join(m.enc, "secret"), data)
    m.stop()
    other = Mount(write_config(str(tmp_path / "other")))
    other.start()
    other.stop()
    key_file = os.path.join(m.keys, sorted(os.listdir(m.keys))[0])
    saved = str(tmp_path / "saved-keys")
    shutil.copytree(m.keys, saved)
    digest = store_digest(m)
    log_file = str(tmp_path / "refused.log")

    def restore():
        if os.path.isdir(m.keys):
            shutil.rmtree(m.keys)
        elif os.path.lexists(m.keys):
            os.unlink(m.keys)
        shutil.copytree(saved, m.keys)
        os.chmod(m.keys, 0o700)

    def truncate():
        with open(key_file, "r+b") as f:
            f.truncate(os.path.getsize(key_file) // 2)

    def garble():
        with open(key_file, "r+b") as f:
            f.seek(40)
            f.write(b"!!!!")

    def swap():
        shutil.rmtree(m.keys)
        shutil.copytree(other.keys, m.keys)

    def add_junk():
        shutil.copy(key_file, key_file + ".orig")

    cases = {
        "missing": (lambda: shutil.rmtree(m.keys), "does not exist"),
        "empty": (lambda: [os.unlink(os.path.join(m.keys, n)) for n in os.listdir(m.keys)],
                  "no master key"),
        "truncated": (truncate, "corrupt or truncated"),
        "garbled": (garble, ""),
        "key file 0644": (lambda: os.chmod(key_file, 0o644), "mode"),
        "key dir 0755": (lambda: os.chmod(m.keys, 0o755), "mode"),
        "key dir is a file": (lambda: shutil.rmtree(m.keys) or open(m.keys, "w").close(),
                              "not a directory"),
        "key file is a symlink": (lambda: os.rename(key_file, key_file + ".real") or
                                  os.symlink(key_file + ".real", key_file), ""),
        "other key store": (swap, "does not belong"),
        "stray key file": (add_junk, "unrecognised"),
    }
    for what, (breakit, word) in cases.items():
        breakit()
        line = mount_refused(m.config, "--log-file", log_file)
        assert "KeyStore" in line or "key" in line.lower(), (what, line)
        assert word.lower() in line.lower(), (what, line)
        assert store_digest(m) == digest, "the store changed after a refused mount (%s)" % what
        restore()
    m.start()
    try:
        assert get(os.path.join(m.enc, "secret")) == data
    finally:
        m.stop()
    assert not m.unexpected_log_lines()
    print("broken key stores tried:", len(cases))
