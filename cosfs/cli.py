"""The ``cosfs`` command line.

Every failure ends with ONE line on stderr, ``cosfs: <COS code>: <what went
wrong>``, and a non-zero exit status (1 for an error the command met, 2 for a
usage error). This is the only place where errors become exit statuses.

Bucket commands take ``<bucket>`` either as the path of a bucket directory on
a running mount (the command then goes through the bucket's xattrs, so the
daemon applies it) or as a bucket name together with ``--config FILE`` for an
unmounted store.
"""

import argparse
import errno
import logging
import os
import subprocess
import sys
import time

from . import durable
from .errors import (CosfsError, InvalidArgument, MalformedXML,
                     NoSuchEncryptionConfiguration)

log = logging.getLogger(__name__)

BUCKET_ENC_XATTR = "user.cos.bucket-encryption"


class UsageError(CosfsError):
    code = "Usage"


def _load_config(path, mountpoint=None):
    from . import config
    return config.load(path, mountpoint=mountpoint)


# -- mount / umount ---------------------------------------------------------------
def _makedirs(path, what, mode=0o777):
    try:
        durable.makedirs(path, mode)
    except OSError as exc:
        raise CosfsError("cannot create %s directory %s: %s" % (what, path, exc.strerror),
                         errno=exc.errno, code="InvalidConfig") from None


def cmd_mount(args):
    cfg = _load_config(args.config, args.mountpoint)
    if cfg.mountpoint is None:
        raise UsageError("no mount point: give one on the command line or in %s" % args.config)
    _makedirs(cfg.mountpoint, "mount point")
    from .mount import run_mount, setup_logging
    log_file = args.log_file or cfg.log_file
    if log_file is None and not args.foreground:
        log_file = os.path.join(cfg.store, "cosfs.log")
    if args.foreground:
        setup_logging(log_file, cfg.log_level, args.verbose)
        run_mount(cfg)
        return 0
    _makedirs(cfg.store, "store", mode=0o700)
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        chunks = []
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok"):
            print("cosfs: mounted %s at %s (pid %d, log %s)" % (cfg.store, cfg.mountpoint, pid,
                                                                 log_file))
            return 0
        print(msg.strip() or "cosfs: the daemon exited before the mount was ready; see %s"
              % log_file, file=sys.stderr)
        return 1
    # the daemon
    os.close(r)
    os.setsid()
    setup_logging(log_file, cfg.log_level, args.verbose)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready():
        os.write(w, b"ok")
        os.close(w)

    status = 0
    try:
        run_mount(cfg, ready=ready)
    except CosfsError as exc:
        log.error("mount failed: %s", exc)
        try:
            os.write(w, ("cosfs: %s: %s" % (exc.code, exc)).encode())
        except OSError:
            pass
        status = 1
    except BaseException:
        log.exception("daemon failed")
        status = 1
    os._exit(status)


def _mounted_cosfs(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == path and \
                    parts[2].startswith("fuse") and "cosfs" in (parts[0] + parts[2]):
                return True
    return False


def _running(pid):
    """True while process ``pid`` runs; an exited daemon its parent has not reaped yet
    (a zombie, e.g. under a supervisor) has finished its work and counts as gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmd_umount(args):
    path = os.path.realpath(args.mountpoint)
    if not _mounted_cosfs(path):
        raise CosfsError("%s is not a mounted cosfs" % path, code="NotMounted",
                         errno=errno.EINVAL)
    pid = None
    try:
        pid = int(os.getxattr(path, "user.cos.daemon-pid"))
    except (OSError, ValueError):
        pass
    res = subprocess.run(["fusermount3", "-u", path], capture_output=True, text=True)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise CosfsError("cannot unmount %s: %s" % (path, detail[-1] if detail else "failed"),
                         code="Busy", errno=errno.EBUSY)
    if pid:
        start = time.monotonic()
        said = False
        while _running(pid):
            if time.monotonic() - start > 1 and not said:
                print("cosfs: waiting for the daemon (pid %d) to commit pending writes and exit"
                      % pid, file=sys.stderr)
                said = True
            if args.timeout and time.monotonic() - start > args.timeout:
                raise CosfsError("daemon pid %d still running after %ss" % (pid, args.timeout),
                                 code="Timeout")
            time.sleep(0.1)
    return 0


# -- offline store commands ---------------------------------------------------------
def _offline(args, purpose):
    if not args.config:
        raise UsageError("give --config FILE for an unmounted store, or the path of a mounted "
                         "bucket directory")
    from .mount import open_store
    cfg = _load_config(args.config)
    return open_store(cfg, create=False, purpose=purpose)


def cmd_fsck(args):
    from . import fsck
    from .mount import setup_logging
    setup_logging(None, "warning", 0)
    store = _offline(args, "fsck")
    try:
        rep = fsck.run(store, repair=not args.dry_run, verify=args.verify)
    finally:
        store.close()
    for line in rep.lines(not args.dry_run):
        print(line)
    return 0 if rep.clean else 1


def cmd_keys(args):
    store = _offline(args, "keys %s" % args.action)
    try:
        if args.action == "list":
            for v in store.keys.versions():
                print(v + (" (current)" if v == store.keys.current_version else ""))
        elif args.action == "rotate":
            v = store.keys.rotate()
            from .mount import _check_keys
            _check_keys(store.catalog, store.keys)
            print("new master key version %s; new objects use it, old versions still decrypt" % v)
        elif args.action == "rewrap":
            n = rewrap(store)
            print("re-wrapped %d object key(s) with master key %s" % (n, store.keys.current_version))
    finally:
        store.close()
    return 0


def rewrap(store):
    """Re-wrap every object's data key with the current master key (data unchanged)."""
    from .chunkio import data_key_aad
    cat, keys = store.catalog, store.keys
    n = 0
    rows = list(cat.db.execute("SELECT id, object_id, enc, wrapped_key FROM inodes"
                               " WHERE wrapped_key IS NOT NULL"))
    with cat.transaction(durable=True):
        for ino, object_id, enc, wrapped in rows:
            if keys.wrapped_version(wrapped) == keys.current_version:
                continue
            aad = data_key_aad(object_id, enc)
            cat.update_inode(ino, wrapped_key=keys.wrap(keys.unwrap(wrapped, aad), aad))
            n += 1
    return n


# -- bucket configuration -------------------------------------------------------------
def _is_path(arg):
    return "/" in arg or os.path.isdir(arg)


def _encryption_doc(args):
    if args.xml:
        if args.xml == "-":
            return sys.stdin.buffer.read()
        try:
            with open(args.xml, "rb") as f:
                return f.read()
        except OSError as exc:
            raise InvalidArgument("cannot read %s: %s" % (args.xml, exc.strerror)) from None
    if args.sse_algorithm:
        from .bucketconf import EncryptionConfig, render_encryption
        return render_encryption(EncryptionConfig(args.sse_algorithm, args.kms_key_id or None))
    raise UsageError("put needs --sse-algorithm ALG or --xml FILE")


def cmd_bucket_encryption(args):
    if _is_path(args.bucket):
        return _bucket_encryption_mounted(args)
    store = _offline(args, "bucket-encryption")
    try:
        from .mount import build
        _, fs = build(store)
        ino = fs.bucket_inode(args.bucket)
        if args.method == "get":
            sys.stdout.write(fs.get_bucket_encryption(ino).decode() + "\n")
        elif args.method == "put":
            fs.put_bucket_encryption(ino, _encryption_doc(args))
        else:
            fs.delete_bucket_encryption(ino)
    finally:
        store.close()
    return 0


def _bucket_encryption_mounted(args):
    path = args.bucket
    if not os.path.isdir(path):
        raise CosfsError("%s is not a bucket directory" % path, code="NoSuchBucket")
    try:
        if args.method == "get":
            sys.stdout.write(os.getxattr(path, BUCKET_ENC_XATTR).decode() + "\n")
        elif args.method == "put":
            os.setxattr(path, BUCKET_ENC_XATTR, _encryption_doc(args))
        else:
            try:
                os.removexattr(path, BUCKET_ENC_XATTR)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            raise NoSuchEncryptionConfiguration(
                "The specified bucket does not have an encryption configuration") from None
        if exc.errno == errno.E2BIG:
            # the kernel refuses xattr values over 64 KiB before the daemon sees them
            raise MalformedXML("the document is larger than 64 KiB") from None
        if exc.errno == errno.EINVAL:
            raise MalformedXML("the document or algorithm was rejected (see the daemon log)") \
                from None
        if exc.errno == errno.ENOTSUP:
            raise CosfsError("%s is not a bucket on a cosfs mount" % path,
                             code="NoSuchBucket") from None
        raise CosfsError("%s: %s" % (path, exc.strerror), errno=exc.errno) from None
    return 0


# -- entry point ------------------------------------------------------------------------
def parser():
    p = argparse.ArgumentParser(prog="cosfs", description="COS semantics as a FUSE filesystem")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a store described by a config file")
    m.add_argument("config")
    m.add_argument("mountpoint", nargs="?", help="overrides the config's mountpoint")
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    m.add_argument("--log-file", help="log here (default: stderr with -f, else <store>/cosfs.log)")
    m.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-vv)")
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount after every pending write is committed")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    u.set_defaults(func=cmd_umount)

    f = sub.add_parser("fsck", help="check an unmounted store and remove orphan blobs")
    f.add_argument("--config", required=True)
    f.add_argument("--dry-run", action="store_true", help="report only")
    f.add_argument("--verify", action="store_true", help="also authenticate every chunk")
    f.set_defaults(func=cmd_fsck)

    k = sub.add_parser("keys", help="master keys of an unmounted store")
    k.add_argument("action", choices=["list", "rotate", "rewrap"])
    k.add_argument("--config", required=True)
    k.set_defaults(func=cmd_keys)

    b = sub.add_parser("bucket-encryption", help="PUT/GET/DELETE a bucket's default encryption")
    b.add_argument("--method", required=True, choices=["put", "get", "delete"])
    b.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    b.add_argument("--sse-algorithm", choices=["AES256", "SM4", "KMS"])
    b.add_argument("--kms-key-id")
    b.add_argument("--xml", help="ServerSideEncryptionConfiguration document file ('-' = stdin)")
    b.add_argument("--config", help="config file of an unmounted store")
    b.set_defaults(func=cmd_bucket_encryption)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as exc:
        print("cosfs: %s" % exc, file=sys.stderr)
        return 2
    except CosfsError as exc:
        print("cosfs: %s: %s" % (exc.code, exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
