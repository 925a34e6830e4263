"""The ``cosfs`` command line.

Every failure ends with ONE line on stderr, ``cosfs: <COS code>: <what went
wrong>``, and a non-zero exit status (1 for an error the command met, 2 for a
usage error). This is the only place where errors become exit statuses.

Bucket commands take ``<bucket>`` either as the path of a bucket directory on
a running mount (the command then goes through the bucket's xattrs, so the
daemon applies it) or as a bucket name together with ``--config FILE`` for an
unmounted store.

Also the helpers mount(8) and umount(8) run for ``/etc/fstab`` lines of type
``fuse.cosfs`` (:func:`mount_helper`, :func:`umount_helper`; installed as
``mount.fuse.cosfs``, ``mount.cosfs`` and ``umount.fuse.cosfs``). Their exit
statuses follow mount(8): 1 for a wrong invocation or option, 32 for a mount
or unmount that failed.
"""

import argparse
import errno
import json
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


def _load_config(path, mountpoint=None, overrides=None):
    from . import config
    return config.load(path, mountpoint=mountpoint, overrides=overrides)


# -- mount / umount ---------------------------------------------------------------
def _makedirs(path, what, mode=0o777):
    try:
        durable.makedirs(path, mode)
    except OSError as exc:
        raise CosfsError("cannot create %s directory %s: %s" % (what, path, exc.strerror),
                         errno=exc.errno, code="InvalidConfig") from None


def cmd_mount(args):
    cfg = _load_config(args.config, args.mountpoint)
    return _mount(cfg, args.config, foreground=args.foreground, log_file=args.log_file,
                  verbose=args.verbose)


def _mount(cfg, config_name, *, foreground, log_file=None, verbose=0, kernel_options=(),
           fsname="cosfs", quiet=False, prog="cosfs"):
    """Mount ``cfg``: in the foreground (blocks until unmounted), or as a daemon.

    A daemon's parent returns once the mount is ready (0) or the daemon failed
    (1, with the reason on stderr). Under systemd (``NOTIFY_SOCKET``) the
    process that stays tells it READY=1 (``-f``), or the parent hands over to
    the daemon with READY=1 and MAINPID.
    """
    if cfg.mountpoint is None:
        raise UsageError("no mount point: give one on the command line or in %s" % config_name)
    _makedirs(cfg.mountpoint, "mount point")
    from .mount import run_mount, setup_logging
    from .service import sd_notify
    log_file = log_file or cfg.log_file
    if log_file is None and not foreground:
        log_file = os.path.join(cfg.store, "cosfs.log")
    if foreground:
        setup_logging(log_file, cfg.log_level, verbose)
        run_mount(cfg, kernel_options=kernel_options, fsname=fsname,
                  ready=lambda: sd_notify("READY=1\nSTATUS=mounted %s at %s"
                                          % (cfg.store, cfg.mountpoint)))
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
        os.close(r)
        msg = b"".join(chunks).decode(errors="replace")
        if msg.startswith("ok"):
            sd_notify("READY=1\nMAINPID=%d\nSTATUS=mounted %s at %s"
                      % (pid, cfg.store, cfg.mountpoint))
            if not quiet:
                print("%s: mounted %s at %s (pid %d, log %s)" % (prog, cfg.store, cfg.mountpoint,
                                                                 pid, log_file))
                if cfg.api.enabled:
                    print("%s: serving the COS XML API on %s://%s" % (
                        prog, "https" if cfg.api.tls_cert else "http", cfg.api.listen))
            return 0
        msg = msg.strip() or "cosfs: the daemon exited before the mount was ready; see %s" \
            % log_file
        if prog != "cosfs" and msg.startswith("cosfs: "):
            msg = "%s: %s" % (prog, msg[len("cosfs: "):])
        print(msg, file=sys.stderr)
        return 1
    # the daemon
    os.close(r)
    os.setsid()
    setup_logging(log_file, cfg.log_level, verbose)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready():
        os.write(w, b"ok")
        os.close(w)

    status = 0
    try:
        run_mount(cfg, ready=ready, kernel_options=kernel_options, fsname=fsname)
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


def cmd_serve(args):
    """Serve the XML API of an unmounted store in the foreground (no FUSE needed)."""
    cfg = _load_config(args.config)
    from .mount import run_serve, setup_logging
    from .service import sd_notify
    setup_logging(args.log_file or cfg.log_file, cfg.log_level, args.verbose)
    run_serve(cfg, ready=lambda: sd_notify("READY=1\nSTATUS=serving the API of %s on %s"
                                           % (cfg.store, cfg.api.listen)))
    return 0


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
    return _umount(args.mountpoint, timeout=args.timeout)


def _umount(mountpoint, *, timeout=0, lazy=False, prog="cosfs"):
    """Unmount, then wait until the daemon committed everything and exited.

    ``lazy``: detach now (``fusermount3 -uz``) and do not wait: the daemon
    goes on until the last open file is closed.
    """
    path = os.path.realpath(mountpoint)
    if not _mounted_cosfs(path):
        raise CosfsError("%s is not a mounted cosfs" % path, code="NotMounted",
                         errno=errno.EINVAL)
    pid = None
    try:
        pid = int(os.getxattr(path, "user.cos.daemon-pid"))
    except (OSError, ValueError):
        pass
    res = subprocess.run(["fusermount3", "-uz" if lazy else "-u", path], capture_output=True,
                         text=True)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()
        raise CosfsError("cannot unmount %s: %s" % (path, detail[-1] if detail else "failed"),
                         code="Busy", errno=errno.EBUSY)
    if pid and not lazy:
        start = time.monotonic()
        said = False
        while _running(pid):
            if time.monotonic() - start > 1 and not said:
                print("%s: waiting for the daemon (pid %d) to commit pending writes and exit"
                      % (prog, pid), file=sys.stderr)
                said = True
            if timeout and time.monotonic() - start > timeout:
                raise CosfsError("daemon pid %d still running after %ss" % (pid, timeout),
                                 code="Timeout")
            time.sleep(0.05)
    return 0


# -- status of a running daemon -------------------------------------------------------
STATUS_XATTR = "user.cos.status"


def cmd_status(args):
    path = os.path.realpath(args.mountpoint)
    if not _mounted_cosfs(path):
        raise CosfsError("%s is not a mounted cosfs" % path, code="NotMounted",
                         errno=errno.EINVAL)
    try:
        raw = os.getxattr(path, STATUS_XATTR)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise CosfsError("%s: the status is for root and the mount's owner only" % path,
                             code="AccessDenied", errno=exc.errno) from None
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            raise CosfsError("the daemon at %s does not report its status (an older cosfs?)"
                             % path, code="NotSupported", errno=exc.errno) from None
        raise CosfsError("%s: %s" % (path, exc.strerror), errno=exc.errno) from None
    st = json.loads(raw.decode())
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        from .service import format_status
        print(format_status(st))
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
    if args.action == "retire" and not args.version:
        raise UsageError("keys retire needs the VERSION to retire, e.g. v1")
    if args.action != "retire" and args.version:
        raise UsageError("keys %s takes no VERSION" % args.action)
    if args.action == "retire":
        from .errors import KeyStoreError
        try:
            _version_number(args.version)
        except KeyStoreError as exc:
            raise UsageError(str(exc)) from None
    store = _offline(args, "keys %s" % args.action)
    try:
        if args.action == "list":
            _list_keys(store)
        elif args.action == "retire":
            from .mount import retire_key
            removed = retire_key(store, args.version)
            v = "v%d" % _version_number(args.version)
            if removed:
                print("retired master key %s: its key file was overwritten and removed" % v)
            else:
                print("master key %s was already retired" % v)
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


def _version_number(text):
    from .keys import parse_version
    return parse_version(text)


def _list_keys(store):
    """One line per version: current, in use by N objects, not in use, or retired."""
    from .mount import key_usage, retired_versions
    keys = store.keys
    usage = key_usage(store.catalog)
    retired = retired_versions(store.catalog)
    leftovers = set(keys.retiring_leftovers())
    loaded = set(keys.versions())
    for v in sorted(loaded | set(retired) | leftovers, key=lambda v: int(v[1:])):
        n = usage.get(v, 0)
        label = v + (" (current)" if v == keys.current_version else "")
        if v in retired:
            line = "%s retired %s" % (label, retired[v])
            if v in loaded or v in leftovers:
                line += "; its key file is still there: run cosfs keys retire %s again" % v
        elif n:
            line = "%s in use by %d object(s)" % (label, n)
        elif v == keys.current_version:
            line = "%s not in use yet" % label
        else:
            line = "%s not in use (cosfs keys retire %s removes it)" % (label, v)
        print(line)
    if usage.get(None):
        print("%d object(s) have a malformed wrapped key (cosfs fsck reports them)"
              % usage[None])


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


# -- API credentials ------------------------------------------------------------------
def _credentials_path(args):
    """The credentials file: ``--file``, else the config's ``api.credentials``
    (``<store>/credentials`` unless set)."""
    if args.file:
        return os.path.abspath(args.file)
    if not args.config:
        raise UsageError("give --config FILE (or --file PATH of the credentials file)")
    cfg = _load_config(args.config)
    api = getattr(cfg, "api", None)
    path = getattr(api, "credentials", None)
    return os.fspath(path) if path is not None else os.path.join(cfg.store, "credentials")


def cmd_credentials(args):
    from . import credentials
    path = _credentials_path(args)
    if args.action == "add":
        if args.secret_id:
            raise UsageError("credentials add takes no SECRETID")
        buckets = None
        if args.bucket:
            from .names import validate_bucket_name
            for name in args.bucket:
                validate_bucket_name(name)
            buckets = args.bucket
        cred = credentials.add(path, credentials.READ_ONLY if args.read_only else
                               credentials.FULL, buckets)
        print("SecretId:  %s" % cred.secret_id)
        print("SecretKey: %s" % cred.secret_key)
        print("access:    %s; buckets: %s" % (cred.access, ", ".join(cred.buckets or ["all"])))
        print("the SecretKey is shown only now: keep it (cosfs credentials list never shows it)")
    elif args.action == "list":
        if args.secret_id or args.read_only or args.bucket:
            raise UsageError("credentials list takes no SECRETID, --read-only or --bucket")
        for cred in credentials.list_credentials(path):
            print("%s  %-9s  %s  %s" % (cred.secret_id, cred.access, cred.created or "-",
                                        ",".join(cred.buckets) if cred.buckets is not None
                                        else "all buckets"))
    else:
        if not args.secret_id:
            raise UsageError("credentials remove needs the SECRETID to remove")
        if not credentials.remove(path, args.secret_id):
            raise CosfsError("no key %s in %s" % (args.secret_id[:128], path),
                             code="InvalidAccessKeyId", errno=errno.ENOENT)
        print("removed %s" % args.secret_id)
    return 0


def _credentials_parser(sub):
    c = sub.add_parser("credentials", help="SecretId/SecretKey pairs of the XML API")
    c.add_argument("action", choices=["add", "list", "remove"])
    c.add_argument("secret_id", nargs="?", metavar="SECRETID", help="remove: the key to remove")
    c.add_argument("--config", help="config file (its api.credentials, else <store>/credentials)")
    c.add_argument("--file", help="the credentials file itself (instead of --config)")
    c.add_argument("--read-only", action="store_true", help="add: a key that only reads")
    c.add_argument("--bucket", action="append", metavar="NAME",
                   help="add: limit the key to this bucket (repeatable)")
    c.set_defaults(func=cmd_credentials)


# -- mount(8) and umount(8) helpers ---------------------------------------------------
class _HelperParser(argparse.ArgumentParser):
    """Usage errors in one line and exit status 1, as mount(8) expects of a helper."""

    def error(self, message):
        print("%s: %s" % (self.prog, message), file=sys.stderr)
        sys.exit(1)


def _prog(default):
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith(("mount.", "umount.")) else default


def mount_helper(argv=None, prog=None):
    """``mount.fuse.cosfs CONFIG MOUNTPOINT [-sfnv] [-N NS] [-t TYPE] [-o OPTIONS]``.

    What mount(8) runs for an fstab line (or ``mount -t fuse.cosfs``): mounts
    in the background like ``cosfs mount`` and returns once the mount is ready.
    ``-o`` options map onto configuration keys or mount flags, mount(8)'s own
    options are accepted, anything else is refused (``-s``: ignored with a
    warning). ``-f`` checks everything without mounting; ``-n`` is accepted
    (there is no mtab to write); ``-v`` says what was mounted.
    """
    from .service import OptionError, parse_mount_options
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or _prog("mount.fuse.cosfs")
    p = _HelperParser(prog=prog, description="mount a cosfs store (the mount(8) helper for "
                      "fstab lines of type fuse.cosfs)")
    p.add_argument("source", help="the configuration file")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[],
                   help="comma-separated mount options (see docs/config.md)")
    p.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    p.add_argument("-f", dest="fake", action="store_true", help="check, do not mount")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="accepted (no mtab)")
    p.add_argument("-v", dest="verbose", action="store_true", help="say what was mounted")
    p.add_argument("-N", dest="namespace", help="not supported")
    p.add_argument("-t", dest="type", help="accepted (fuse.cosfs)")
    args = p.parse_args(argv)
    if args.namespace:
        print("%s: mounting in another namespace (-N) is not supported" % prog, file=sys.stderr)
        return 1
    try:
        opts = parse_mount_options(args.options, sloppy=args.sloppy)
    except OptionError as exc:
        print("%s: %s" % (prog, exc), file=sys.stderr)
        return 1
    for option in opts.unknown:
        print("%s: ignoring unknown option %r (-s)" % (prog, option), file=sys.stderr)
    try:
        cfg = _load_config(args.source, args.mountpoint, overrides=opts.config)
        if args.fake:
            return 0
        # the mount table shows the config file as the source, as in fstab, so that
        # "mount -a" and findmnt recognise the line as mounted
        source = os.path.abspath(args.source)
        fsname = source if not any(c in source for c in ",\\\n\t") else "cosfs"
        rc = _mount(cfg, args.source, foreground=False, kernel_options=opts.kernel,
                    fsname=fsname, quiet=not args.verbose, prog=prog)
    except UsageError as exc:
        print("%s: %s" % (prog, exc), file=sys.stderr)
        return 1
    except CosfsError as exc:
        print("%s: %s: %s" % (prog, exc.code, exc), file=sys.stderr)
        return 32
    return 0 if rc == 0 else 32


def umount_helper(argv=None, prog=None):
    """``umount.fuse.cosfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]``: what umount(8) runs.

    Unmounts and waits, like ``cosfs umount``, until the daemon committed every
    pending write and exited. ``-l`` detaches lazily and does not wait; ``-f``
    forces the unmount (``umount -i -f``: the kernel aborts the connection) and
    does not wait either.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or _prog("umount.fuse.cosfs")
    p = _HelperParser(prog=prog, description="unmount a cosfs mount and wait until everything "
                      "is committed (the umount(8) helper for fuse.cosfs)")
    p.add_argument("mountpoint")
    p.add_argument("-f", dest="force", action="store_true", help="force (no waiting)")
    p.add_argument("-l", dest="lazy", action="store_true", help="detach lazily (no waiting)")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="accepted")
    p.add_argument("-r", dest="readonly", action="store_true", help="accepted")
    p.add_argument("-v", dest="verbose", action="store_true", help="say what was done")
    p.add_argument("-N", dest="namespace", help="not supported")
    p.add_argument("-t", dest="type", help="accepted (fuse.cosfs)")
    args = p.parse_args(argv)
    if args.namespace:
        print("%s: unmounting in another namespace (-N) is not supported" % prog,
              file=sys.stderr)
        return 1
    if args.force:
        res = subprocess.run(["umount", "-i", "-f", args.mountpoint])
        return res.returncode
    try:
        _umount(args.mountpoint, lazy=args.lazy, prog=prog)
    except CosfsError as exc:
        print("%s: %s: %s" % (prog, exc.code, exc), file=sys.stderr)
        return 32
    if args.verbose:
        print("%s: %s unmounted" % (prog, args.mountpoint))
    return 0


def mount_helper_main():
    sys.exit(mount_helper())


def umount_helper_main():
    sys.exit(umount_helper())


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
    k.add_argument("action", choices=["list", "rotate", "rewrap", "retire"])
    k.add_argument("version", nargs="?", help="retire: the version to remove (v1, v2...)")
    k.add_argument("--config", required=True)
    k.set_defaults(func=cmd_keys)

    st = sub.add_parser("status", help="what a running daemon is doing")
    st.add_argument("mountpoint")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    st.set_defaults(func=cmd_status)

    sv = sub.add_parser("serve", help="serve the COS XML API of a store without mounting it")
    sv.add_argument("config")
    sv.add_argument("--log-file", help="log here (default: log_file of the config, else stderr)")
    sv.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-vv)")
    sv.set_defaults(func=cmd_serve)

    b = sub.add_parser("bucket-encryption", help="PUT/GET/DELETE a bucket's default encryption")
    b.add_argument("--method", required=True, choices=["put", "get", "delete"])
    b.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    b.add_argument("--sse-algorithm", choices=["AES256", "SM4", "KMS"])
    b.add_argument("--kms-key-id")
    b.add_argument("--xml", help="ServerSideEncryptionConfiguration document file ('-' = stdin)")
    b.add_argument("--config", help="config file of an unmounted store")
    b.set_defaults(func=cmd_bucket_encryption)
    _credentials_parser(sub)
    return p


COMMANDS = ("mount", "umount", "status", "fsck", "keys", "bucket-encryption", "serve",
            "credentials")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) >= 2 and argv[0] not in COMMANDS and not argv[0].startswith("-") and \
            (os.path.isfile(argv[0]) or "-o" in argv[2:]):
        # mount.fuse3 runs "cosfs SOURCE MOUNTPOINT -o OPTIONS" for an fstab line of type
        # fuse.cosfs when there is no mount.fuse.cosfs helper
        return mount_helper(argv, prog="cosfs")
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
