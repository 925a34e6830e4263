"""The FUSE front-end: the pyfuse3 adapter over the filesystem core (``cosfs.fuse.ops``)."""
