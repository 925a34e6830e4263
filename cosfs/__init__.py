"""cosfs: a FUSE filesystem with Tencent COS semantics over an encrypted chunk store."""

__version__ = "0.1.0"
