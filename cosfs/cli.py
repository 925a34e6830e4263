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
                  verbose=args.verbose, break_lease=args.break_lease)


def _mount(cfg, config_name, *, foreground, log_file=None, verbose=0, kernel_options=(),
           fsname="cosfs", quiet=False, prog="cosfs", break_lease=False):
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
        run_mount(cfg, kernel_options=kernel_options, fsname=fsname, break_lease=break_lease,
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
                if cfg.console.enabled:
                    print("%s: serving the web console on http://%s" % (prog, cfg.console.listen))
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
        run_mount(cfg, ready=ready, kernel_options=kernel_options, fsname=fsname,
                  break_lease=break_lease)
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
    run_serve(cfg, break_lease=args.break_lease, ready=lambda: sd_notify("READY=1\nSTATUS=serving the API of %s on %s"
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


def cmd_stats(args):
    """The metrics of a running daemon, from its console's ``/metrics`` (loopback)."""
    import httpx
    cfg = _load_config(args.config)
    if not cfg.console.enabled:
        raise CosfsError("the console is not enabled in %s: the metrics are served on its "
                         "listener (console: enabled: true)" % args.config,
                         code="NotSupported", errno=errno.EINVAL)
    host = cfg.console.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    url = "http://%s:%d/metrics" % ("[%s]" % host if ":" in host else host, cfg.console.port)
    try:
        resp = httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        raise CosfsError("no daemon answers at %s: %s" % (url, exc), code="NotMounted",
                         errno=errno.ECONNREFUSED) from None
    if resp.status_code != 200:
        raise CosfsError("%s answered %d" % (url, resp.status_code), errno=errno.EACCES)
    if args.raw:
        sys.stdout.write(resp.text)
    else:
        from .metrics import summarize
        print(summarize(resp.text))
    return 0


# -- offline store commands ---------------------------------------------------------
def _offline(args, purpose):
    if not args.config:
        raise UsageError("give --config FILE for an unmounted store, or the path of a mounted "
                         "bucket directory")
    from .mount import open_store
    cfg = _load_config(args.config)
    return open_store(cfg, create=False, purpose=purpose,
                      break_lease=getattr(args, "break_lease", False))


def cmd_restore(args):
    """Rebuild an unmounted store's catalog from its newest (or a named) snapshot."""
    from .mount import list_catalog_snapshots, restore_catalog, setup_logging
    setup_logging(None, "warning", 0)
    cfg = _load_config(args.config)
    if args.list:
        from .snapshots import taken_at
        found = list_catalog_snapshots(cfg)
        for name, size, target in found:
            when = taken_at(name)
            print("%s  %s  %10d  %s" % (name, time.strftime("%Y-%m-%d %H:%M:%S",
                                                            time.localtime(when)) if when else "?",
                                        size, target.root))
        if not found:
            print("no catalog snapshots")
        return 0
    name, aside = restore_catalog(cfg, name=args.snapshot, force=args.force)
    print("restored the catalog of %s from snapshot %s" % (cfg.store, name))
    if aside:
        print("the previous catalog is kept as %s" % aside)
    print("next: cosfs fsck --config %s (removes blobs written after the snapshot); mount "
          "with --break-lease if the lost machine's lease is still in the store" % args.config)
    return 0


def cmd_fsck(args):
    from . import fsck
    from .mount import setup_logging
    setup_logging(None, "warning", 0)
    store = _offline(args, "fsck")
    try:
        rep = fsck.run(store, repair=not args.dry_run, verify=args.verify,
                       progress=lambda what, total: _progress(what, total, "chunk"))
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
            n = rewrap(store, progress=lambda what, total: _progress(what, total, "key"))
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


def rewrap(store, progress=None):
    """Re-wrap every object's data key with the current master key (data unchanged).

    ``progress``: None, or ``progress(what, total)`` returning a context manager with
    ``update(n)`` (see :func:`_progress`), told of every object key looked at."""
    from .chunkio import data_key_aad
    from .progress import quiet
    cat, keys = store.catalog, store.keys
    n = 0
    rows = list(cat.db.execute("SELECT id, object_id, enc, wrapped_key FROM inodes"
                               " WHERE wrapped_key IS NOT NULL"))
    with (progress or quiet)("re-wrapping object keys", len(rows)) as shown, \
            cat.transaction(durable=True):
        for ino, object_id, enc, wrapped in rows:
            shown.update(1)
            if keys.wrapped_version(wrapped) == keys.current_version:
                continue
            aad = data_key_aad(object_id, enc)
            cat.update_inode(ino, wrapped_key=keys.wrap(keys.unwrap(wrapped, aad), aad))
            n += 1
    return n


def _progress(what, total, unit):
    """A :class:`cosfs.progress.Progress` for a long command: a bar when standard error is
    a terminal, else INFO lines of the ``cosfs.progress`` logger on standard error (or
    the log already set up), enabled here whatever the command's log level."""
    from .progress import Progress
    if not logging.getLogger().handlers:
        from .mount import setup_logging
        setup_logging(None, "warning", 0)
    logging.getLogger("cosfs.progress").setLevel(logging.INFO)
    return Progress(what, total, unit=unit)


# -- bucket configuration -------------------------------------------------------------
def _is_path(arg):
    return "/" in arg or os.path.isdir(arg)


def _encryption_doc(args):
    if args.xml:
        return _read_xml(args.xml)
    if args.sse_algorithm:
        from .bucketconf import EncryptionConfig, render_encryption
        return render_encryption(EncryptionConfig(args.sse_algorithm, args.kms_key_id or None))
    raise UsageError("put needs --sse-algorithm ALG or --xml FILE")


def _bucket_document(args, purpose, xattr, *, get, put, delete, document, missing,
                     status_xattr=None):
    """GET/PUT/DELETE (or ``status``) of a bucket configuration document: through the
    xattr of a mounted bucket directory, or on an unmounted store (``get(fs, ino)``,
    ``put(fs, ino, doc)``, ``delete(fs, ino)``). ``document(args)`` builds the PUT body;
    ``missing()`` is the error for an absent document. DELETE of an absent document
    succeeds, as in COS."""
    def show(doc):
        text = doc.decode()
        sys.stdout.write(text if text.endswith("\n") else text + "\n")

    if not _is_path(args.bucket):
        store = _offline(args, purpose)
        try:
            from .mount import build
            _, fs = build(store)
            ino = fs.bucket_inode(args.bucket)
            if args.method == "get":
                show(get(fs, ino))
            elif args.method == "put":
                put(fs, ino, document(args))
            elif args.method == "delete":
                delete(fs, ino)
            else:
                queued = store.catalog.replication_queue_length(ino)
                print(json.dumps({"queued_for_bucket": queued, "daemon": None}))
        finally:
            store.close()
        return 0
    path = args.bucket
    if not os.path.isdir(path):
        raise CosfsError("%s is not a bucket directory" % path, code="NoSuchBucket")
    try:
        if args.method == "get":
            show(os.getxattr(path, xattr))
        elif args.method == "put":
            os.setxattr(path, xattr, document(args))
        elif args.method == "delete":
            try:
                os.removexattr(path, xattr)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        else:
            show(os.getxattr(path, status_xattr))
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            raise missing() from None
        if exc.errno == errno.E2BIG:
            # the kernel refuses xattr values over 64 KiB before the daemon sees them
            raise MalformedXML("the document is larger than 64 KiB") from None
        if exc.errno == errno.EINVAL:
            raise MalformedXML("the document was rejected (the daemon log says why)") \
                from None
        if exc.errno in (errno.EBUSY, errno.EPERM):
            raise CosfsError("%s: refused: %s (the daemon log says why)"
                             % (path, exc.strerror), errno=exc.errno,
                             code="InvalidBucketState") from None
        if exc.errno == errno.ENOTSUP:
            raise CosfsError("%s is not a bucket on a cosfs mount" % path,
                             code="NoSuchBucket") from None
        raise CosfsError("%s: %s" % (path, exc.strerror), errno=exc.errno) from None
    return 0


def cmd_bucket_encryption(args):
    return _bucket_document(
        args, "bucket-encryption", BUCKET_ENC_XATTR,
        get=lambda fs, ino: fs.get_bucket_encryption(ino),
        put=lambda fs, ino, doc: fs.put_bucket_encryption(ino, doc),
        delete=lambda fs, ino: fs.delete_bucket_encryption(ino),
        document=_encryption_doc,
        missing=lambda: NoSuchEncryptionConfiguration(
            "The specified bucket does not have an encryption configuration"))


BUCKET_ORIGIN_XATTR = "user.cos.bucket-origin"


def _origin_doc(args):
    if args.xml:
        return _read_xml(args.xml)
    if args.host:
        from .originconf import render_origin, simple_config
        return render_origin(simple_config(args.host, prefix=args.prefix, suffix=args.suffix,
                                           protocol=args.protocol, standby=args.standby_host,
                                           follow_redirection=not args.no_follow_redirection))
    raise UsageError("put needs --host HOST (repeatable) or --xml FILE")


def cmd_bucket_origin(args):
    """PUT/GET/DELETE bucket origin: through the xattr of a mounted bucket directory, or on
    an unmounted store (bucket name and --config)."""
    from .errors import OriginConfigurationNotFoundError
    return _bucket_document(
        args, "bucket-origin", BUCKET_ORIGIN_XATTR,
        get=lambda fs, ino: fs.get_bucket_origin(ino),
        put=lambda fs, ino, doc: fs.put_bucket_origin(ino, doc),
        delete=lambda fs, ino: fs.delete_bucket_origin(ino),
        document=_origin_doc,
        missing=lambda: OriginConfigurationNotFoundError(
            "The specified bucket does not have an origin configuration"))


# -- bucket inventory -----------------------------------------------------------------
INVENTORY_XATTR = "user.cos.bucket-inventory"


def _inventory_doc(args, source_region, one_off):
    """The InventoryConfiguration to PUT or POST: --xml, else built from the flags."""
    from . import inventoryconf as ic
    if args.xml:
        doc = _read_xml(args.xml)
        ic.parse_inventory(doc, expected_id=args.task_id, one_off=one_off)  # say why here
        return doc
    if not args.destination:
        raise UsageError("%s needs --destination BUCKET (or qcs::cos:<region>::<bucket>) or "
                         "--xml FILE" % args.method)
    dest = args.destination
    region, bucket = ic.parse_destination(dest if dest.startswith("qcs::") else
                                          "qcs::cos:%s::%s" % (source_region, dest))
    fields = tuple(f.strip() for f in (args.fields or "").split(",") if f.strip())
    cfg = ic.InventoryConfig(id=ic.check_id(args.task_id), enabled=not args.disabled,
                             versions=args.versions, prefix=args.prefix or "", fields=fields,
                             frequency=None if one_off else args.frequency, dest_region=region,
                             dest_bucket=bucket, dest_prefix=args.dest_prefix or "",
                             account_id=args.account_id, sse_cos=args.sse_cos)
    doc = ic.render_inventory(cfg)
    ic.parse_inventory(doc, expected_id=args.task_id, one_off=one_off)  # fields, account id
    return doc


def _read_xml(name):
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InvalidArgument("cannot read %s: %s" % (name, exc.strerror)) from None


def cmd_inventory(args):
    """``cosfs inventory --method put|get|list|delete|post BUCKET --task-id ID``: through
    the xattrs of a mounted bucket directory, or on an unmounted store with --config."""
    if args.method != "list" and not args.task_id:
        raise UsageError("inventory --method %s needs --task-id ID" % args.method)
    if _is_path(args.bucket):
        return _inventory_mounted(args)
    store = _offline(args, "inventory")
    try:
        from .inventoryconf import render_list
        from .mount import build, run_inventory_now
        _, fs = build(store)
        ino = fs.bucket_inode(args.bucket)
        region = store.catalog.bucket_by_inode(ino)[2]
        if args.method == "get":
            sys.stdout.write(fs.get_bucket_inventory(ino, args.task_id).decode())
        elif args.method == "list":
            sys.stdout.write(render_list(fs.list_bucket_inventory(ino)).decode())
        elif args.method == "put":
            fs.put_bucket_inventory(ino, args.task_id, _inventory_doc(args, region, False))
        elif args.method == "delete":
            fs.delete_bucket_inventory(ino, args.task_id)
        else:
            doc = _inventory_doc(args, region, True)
            job = run_inventory_now(store, args.bucket, args.task_id, doc)
            _print_delivery(json.loads(fs.inventory_status(ino, args.task_id)), job)
    finally:
        store.close()
    return 0


def _print_delivery(status, job):
    print("delivered inventory %s (job %s): %d object(s) in %d data file(s); manifest %s/%s"
          % (status["id"], job, status.get("objects", 0), status.get("files", 0),
             status["destination"], status["manifest"]))


def _inventory_mounted(args):
    from . import inventoryconf as ic
    from .errors import DuplicateInventoryId, InventoryConfigurationNotFoundError, InventoryFull
    path = args.bucket
    if not os.path.isdir(path):
        raise CosfsError("%s is not a bucket directory" % path, code="NoSuchBucket")
    name = "%s.%s" % (INVENTORY_XATTR, args.task_id)
    try:
        region = os.getxattr(path, "user.cos.bucket-region").decode()
    except OSError:
        raise CosfsError("%s is not a bucket on a cosfs mount" % path,
                         code="NoSuchBucket") from None
    try:
        if args.method == "get":
            sys.stdout.write(os.getxattr(path, name).decode())
        elif args.method == "list":
            ids = os.getxattr(path, INVENTORY_XATTR).decode().split()
            configs = [ic.parse_inventory(os.getxattr(path, "%s.%s" % (INVENTORY_XATTR, i)))
                       for i in ids]
            sys.stdout.write(ic.render_list(configs).decode())
        elif args.method == "put":
            os.setxattr(path, name, _inventory_doc(args, region, False))
        elif args.method == "delete":
            try:
                os.removexattr(path, name)
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
        else:
            os.setxattr(path, "%s-post.%s" % (INVENTORY_XATTR, args.task_id),
                        _inventory_doc(args, region, True))
            status = json.loads(os.getxattr(path, "%s-status.%s"
                                            % (INVENTORY_XATTR, args.task_id)))
            _print_delivery(status, status["job_id"])
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            raise InventoryConfigurationNotFoundError("bucket %s has no inventory %s"
                                                 % (path, args.task_id)) from None
        if exc.errno == errno.ENOSPC:
            raise InventoryFull("the bucket already has %d inventory configurations"
                                % ic.MAX_CONFIGS) from None
        if exc.errno == errno.EEXIST:
            raise DuplicateInventoryId("inventory %s is configured, or was run today, or "
                                       "runs now (see the daemon log)" % args.task_id) from None
        if exc.errno == errno.E2BIG:
            raise MalformedXML("the document is larger than 64 KiB") from None
        if exc.errno == errno.EINVAL:
            raise InvalidArgument("the inventory configuration was rejected (see the daemon "
                                  "log): e.g. a destination bucket that does not exist or is "
                                  "in another region") from None
        if exc.errno == errno.ENOTSUP:
            raise CosfsError("%s is not a bucket on a cosfs mount" % path,
                             code="NoSuchBucket") from None
        raise CosfsError("%s: %s" % (path, exc.strerror), errno=exc.errno) from None
    return 0


def _inventory_parser(sub):
    i = sub.add_parser("inventory", help="PUT/GET/LIST/DELETE bucket inventories, or POST a "
                       "one-off report")
    i.add_argument("--method", required=True, choices=["put", "get", "list", "delete", "post"])
    i.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    i.add_argument("--task-id", help="the inventory id ([A-Za-z0-9._-], up to 64)")
    i.add_argument("--xml", help="InventoryConfiguration document file ('-' = stdin)")
    i.add_argument("--destination", help="report bucket: NAME-APPID (same region) or "
                   "qcs::cos:<region>::<NAME-APPID>")
    i.add_argument("--dest-prefix", help="key prefix of the reports in the destination")
    i.add_argument("--frequency", default="Daily", choices=["Daily", "Weekly"])
    i.add_argument("--disabled", action="store_true", help="put: keep it, deliver nothing")
    i.add_argument("--versions", default="Current", choices=["Current", "All"],
                   help="IncludedObjectVersions")
    i.add_argument("--prefix", help="report only keys starting with this (Filter/Prefix)")
    i.add_argument("--fields", help="optional fields, comma-separated: Size,LastModifiedDate,"
                   "ETag,StorageClass,IsMultipartUploaded,ReplicationStatus")
    i.add_argument("--sse-cos", action="store_true", help="encrypt the report (SSE-COS)")
    i.add_argument("--account-id", help="AccountId of the destination (digits)")
    i.add_argument("--config", help="config file of an unmounted store")
    i.set_defaults(func=cmd_inventory)


# -- versioning and replication ----------------------------------------------------------
VERSIONING_XATTR = "user.cos.bucket-versioning"
REPLICATION_XATTR = "user.cos.bucket-replication"
REPLICATION_STATUS_XATTR = "user.cos.bucket-replication-status"


def _versioning_doc(args):
    if args.xml:
        return _read_xml(args.xml)
    if args.status:
        from .versioning import render_versioning
        return render_versioning(args.status)
    raise UsageError("put needs --status Enabled|Suspended or --xml FILE")


def _replication_doc(args):
    if args.xml:
        return _read_xml(args.xml)
    if not args.dest_bucket:
        raise UsageError("put needs --dest-bucket qcs::cos:<region>::<bucket> or --xml FILE")
    from .replicationconf import (ReplicationConfig, Rule, parse_destination,
                                  render_replication)
    region, bucket = parse_destination(args.dest_bucket)
    rule = Rule(args.rule_id, "Enabled", args.prefix or "", region, bucket,
                args.storage_class, not args.no_delete_markers)
    return render_replication(ReplicationConfig(args.role or "", (rule,)))


def cmd_bucket_versioning(args):
    # a bucket never versioned has the empty document (GET Bucket versioning), never missing
    return _bucket_document(
        args, "bucket-versioning", VERSIONING_XATTR,
        get=lambda fs, ino: fs.versions.get_versioning(ino),
        put=lambda fs, ino, doc: fs.versions.put_versioning(ino, doc),
        delete=None, document=_versioning_doc, missing=None)


def cmd_bucket_replication(args):
    from .errors import ReplicationConfigurationNotFound
    return _bucket_document(
        args, "bucket-replication", REPLICATION_XATTR,
        get=lambda fs, ino: fs.versions.get_replication(ino),
        put=lambda fs, ino, doc: fs.versions.put_replication(ino, doc),
        delete=lambda fs, ino: fs.versions.delete_replication(ino),
        document=_replication_doc, status_xattr=REPLICATION_STATUS_XATTR,
        missing=lambda: ReplicationConfigurationNotFound(
            "The specified bucket does not have a replication configuration"))


def _versioning_parsers(sub):
    v = sub.add_parser("bucket-versioning", help="PUT/GET a bucket's versioning status")
    v.add_argument("--method", required=True, choices=["put", "get"])
    v.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    v.add_argument("--status", choices=["Enabled", "Suspended"])
    v.add_argument("--xml", help="VersioningConfiguration document file ('-' = stdin)")
    v.add_argument("--config", help="config file of an unmounted store")
    v.set_defaults(func=cmd_bucket_versioning)

    r = sub.add_parser("bucket-replication", help="PUT/GET/DELETE a bucket's replication "
                       "rules, or show its queue (status)")
    r.add_argument("--method", required=True, choices=["put", "get", "delete", "status"])
    r.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    r.add_argument("--xml", help="ReplicationConfiguration document file ('-' = stdin)")
    r.add_argument("--dest-bucket", help="qcs::cos:<region>::<bucket> (one rule from flags)")
    r.add_argument("--prefix", default="", help="replicate keys starting with this")
    r.add_argument("--rule-id", default="rule-1")
    r.add_argument("--role", help="Role (qcs::cam::uin/<uin>:uin/<uin>), kept as given")
    r.add_argument("--storage-class")
    r.add_argument("--no-delete-markers", action="store_true",
                   help="do not replicate delete markers")
    r.add_argument("--config", help="config file of an unmounted store")
    r.set_defaults(func=cmd_bucket_replication)

    o = sub.add_parser("versions", help="list, read, restore or delete object versions")
    o.add_argument("action", choices=["list", "get", "restore", "delete"])
    o.add_argument("target", help="path on a mount (bucket, directory or object; it may be "
                   "deleted), or bucket[/key] with --config")
    o.add_argument("--version-id", help="the version (get, restore, delete)")
    o.add_argument("-o", "--output", help="get: write here instead of standard output")
    o.add_argument("--config", help="config file of the store (mounted or not)")
    o.set_defaults(func=_cmd_versions)


def _cmd_versions(args):
    from .control import cmd_versions
    return cmd_versions(args)


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
    m.add_argument("--break-lease", action="store_true",
                   help="take over an S3 store whose lease another machine left stale")
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount after every pending write is committed")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=0, help="give up waiting after N seconds")
    u.set_defaults(func=cmd_umount)

    f = sub.add_parser("fsck", help="check an unmounted store and remove orphan blobs")
    f.add_argument("--config", required=True)
    f.add_argument("--dry-run", action="store_true", help="report only")
    f.add_argument("--verify", action="store_true", help="also authenticate every chunk")
    f.add_argument("--break-lease", action="store_true",
                   help="take over an S3 store whose lease another machine left stale")
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

    sa = sub.add_parser("stats", help="the metrics of a running daemon (its console's /metrics)")
    sa.add_argument("config")
    sa.add_argument("--raw", action="store_true", help="print the Prometheus text as served")
    sa.set_defaults(func=cmd_stats)

    sv = sub.add_parser("serve", help="serve the COS XML API of a store without mounting it")
    sv.add_argument("config")
    sv.add_argument("--log-file", help="log here (default: log_file of the config, else stderr)")
    sv.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-vv)")
    sv.add_argument("--break-lease", action="store_true",
                    help="take over an S3 store whose lease another machine left stale")
    sv.set_defaults(func=cmd_serve)

    rs = sub.add_parser("restore", help="rebuild the catalog of a store from a snapshot in "
                                        "its S3 stores (after losing the machine)")
    rs.add_argument("--config", required=True)
    rs.add_argument("--snapshot", help="the snapshot to restore (default: the newest)")
    rs.add_argument("--list", action="store_true", help="list the snapshots and stop")
    rs.add_argument("--force", action="store_true",
                    help="replace a catalog that is already there (kept aside)")
    rs.set_defaults(func=cmd_restore)

    b = sub.add_parser("bucket-encryption", help="PUT/GET/DELETE a bucket's default encryption")
    b.add_argument("--method", required=True, choices=["put", "get", "delete"])
    b.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    b.add_argument("--sse-algorithm", choices=["AES256", "SM4", "KMS"])
    b.add_argument("--kms-key-id")
    b.add_argument("--xml", help="ServerSideEncryptionConfiguration document file ('-' = stdin)")
    b.add_argument("--config", help="config file of an unmounted store")
    b.set_defaults(func=cmd_bucket_encryption)

    o = sub.add_parser("bucket-origin", help="PUT/GET/DELETE a bucket's origin pull rules")
    o.add_argument("--method", required=True, choices=["put", "get", "delete"])
    o.add_argument("bucket", help="mounted bucket directory, or bucket name with --config")
    o.add_argument("--xml", help="OriginConfiguration document file ('-' = stdin)")
    o.add_argument("--host", action="append", help="origin host[:port] (repeatable)")
    o.add_argument("--standby-host", action="append", default=[],
                   help="host tried when the first one fails (repeatable)")
    o.add_argument("--prefix", default="", help="only keys starting with this")
    o.add_argument("--suffix", default="", help="only keys ending with this")
    o.add_argument("--protocol", default="HTTP", choices=["HTTP", "HTTPS"])
    o.add_argument("--no-follow-redirection", action="store_true",
                   help="an origin redirect is a failure instead of being followed")
    o.add_argument("--config", help="config file of an unmounted store")
    o.set_defaults(func=cmd_bucket_origin)
    _credentials_parser(sub)
    _inventory_parser(sub)
    _versioning_parsers(sub)
    return p


COMMANDS = ("mount", "umount", "status", "fsck", "keys", "bucket-encryption", "bucket-origin",
            "serve", "credentials", "inventory", "bucket-versioning", "bucket-replication",
            "versions")


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
