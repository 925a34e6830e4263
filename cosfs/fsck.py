"""``cosfs fsck``: check an unmounted store's blobs against its catalog and repair what is safe.

What it looks at, and what it does:
  - orphan blobs (in the store, referenced by nothing: left by a crash
    between storing a blob and committing the catalog): deleted;
  - garbage (blobs already released by a commit, not yet deleted): deleted;
  - inodes with no name left (unlinked while open, then a crash): removed;
  - referenced blobs that are missing or have the wrong length: reported,
    never "repaired" (that would turn a detectable loss into wrong bytes);
  - with ``verify``: every chunk is read and authenticated.
Runs synchronously on an opened Store (the store lock is held by the caller).
Its longest part, the pass over every referenced chunk, reports progress to an
optional ``progress(what, total)`` factory (e.g. :class:`cosfs.progress.Progress`).
"""

import logging
from dataclasses import dataclass, field

from . import cipher, snapshots
from .errors import CosfsError
from .objects import ObjectStore
from .progress import quiet

log = logging.getLogger(__name__)


@dataclass
class Report:
    orphans: int = 0
    garbage: int = 0
    unlinked: int = 0
    missing: list = field(default_factory=list)
    wrong_size: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    chunks: int = 0
    objects: int = 0

    @property
    def clean(self):
        return not (self.missing or self.wrong_size or self.unreadable)

    def lines(self, repair):
        verb = "removed" if repair else "found"
        out = ["checked %d objects, %d chunks" % (self.objects, self.chunks),
               "%s %d orphan blob(s)" % (verb, self.orphans),
               "%s %d released blob(s) awaiting deletion" % (verb, self.garbage),
               "%s %d unlinked inode(s)" % (verb, self.unlinked)]
        for what, items in (("missing blob", self.missing), ("blob of wrong size", self.wrong_size),
                            ("chunk failing authentication", self.unreadable)):
            for ino, idx, blob in items:
                out.append("DAMAGED: inode %d chunk %d: %s %s" % (ino, idx, what, blob.hex()))
        return out


def run(store, *, repair=True, verify=False, progress=None):
    """Check (and with ``repair`` fix) an opened Store. Returns a Report.

    ``progress``: None, or ``progress(what, total)`` returning a context manager
    with ``update(n)``, told of each referenced chunk checked (``total``: their
    number; ``what``: "verifying chunks" with ``verify``, else "checking chunks").
    """
    cat = store.catalog
    # Only key unwrapping is needed: a data path with no cache and no buffers will do.
    objects = ObjectStore(cat, store.stores, store.keys, chunk_size=store.config.chunk_size,
                          cache_size=0, write_buffer=0)
    rep = Report()
    # check what each store holds, not a local copy of it (an S3 store's read cache)
    stores = {region: s.uncached() if hasattr(s, "uncached") else s
              for region, s in store.stores.items()}
    regions = {row[0]: row[2] for row in cat.buckets()}
    unlinked = cat.unlinked_inodes()
    rep.unlinked = len(unlinked)
    if repair:
        for ino in unlinked:
            inode = cat.get_inode(ino)
            cat.delete_inode(ino, regions.get(inode.bucket, store.config.region))
    referenced = {}
    inodes = {}
    # a dry run still sees the chunks of unlinked inodes: count them as the repair
    # would (released), so both runs report the same numbers
    released = set()
    dead = set(unlinked)
    for ino, ch in cat.chunk_rows():
        if ino in dead:
            if not ch.packed:
                released.add(ch.blob)
            continue
        referenced[ch.blob] = (ino, ch)
        rep.chunks += 1
        inodes.setdefault(ino, None)
    rep.objects = len(inodes)
    garbage = cat.garbage(limit=10 ** 9)
    garbage_blobs = {b for b, _ in garbage} | released
    rep.garbage = len(garbage_blobs)
    targets = snapshots.targets_of(store.stores)
    if repair and (garbage or targets):
        # the releases (some made just above, for unlinked inodes) must be durable
        # before their blobs go: open_store made every blob durable if the store
        # was left unclean, so the catalog may be synced now
        cat.sync()
    if repair and targets:
        # before anything goes from an S3 store, the newest snapshot must be this
        # catalog: an older one may still name released blobs, and a newer one (copied
        # from commits that a power cut then undid) may name blobs that are orphans here
        snapshots.take(cat.path, store.keys, targets, store.config.snapshots.keep,
                       flush=snapshots.s3_stores_of(store.stores))
    for region, st in stores.items():
        for blob in st.list():
            if blob in referenced:
                continue
            if blob in garbage_blobs:
                continue
            rep.orphans += 1
            if repair:
                st.delete(blob)  # never referenced: losing the deletion to a crash is harmless
    if repair:
        for blob, region in garbage:
            s = stores.get(region)
            if s is not None:
                s.delete(blob)
        cat.forget_garbage([b for b, _ in garbage])
    with (progress or quiet)("verifying chunks" if verify else "checking chunks",
                              len(referenced)) as shown:
        for blob, (ino, ch) in referenced.items():
            shown.update(1)
            inode = inodes.get(ino) or cat.get_inode(ino)
            inodes[ino] = inode
            region = regions.get(inode.bucket, store.config.region)
            s = stores.get(region)
            try:
                # a packed chunk's sealed bytes are in its catalog row, not in the store
                size = len(ch.data) if ch.packed else s.size(blob)
            except CosfsError:
                rep.missing.append((ino, ch.idx, blob))
                continue
            expected = cipher.sealed_size(ch.length) if inode.enc else ch.length
            if size != expected:
                rep.wrong_size.append((ino, ch.idx, blob))
                continue
            if verify and inode.enc:
                try:
                    crypt = objects.stored_crypt(inode)
                    cipher.open_blob(crypt.algorithm, crypt.key, crypt.context(ch.idx, blob),
                                     ch.data if ch.packed else s.get(blob), ch.length)
                except CosfsError:
                    rep.unreadable.append((ino, ch.idx, blob))
    for line in rep.lines(repair):
        log.info("fsck: %s", line)
    return rep
