"""The one exception tree of cosfs.

Every error raised on purpose by a cosfs layer is a :class:`CosfsError`. Each
class carries the POSIX ``errno`` that the FUSE adapter answers with and the
COS error ``code`` that the command line prints. Translation happens in
exactly one place per boundary: ``fuse_ops`` maps to errno, ``cli`` maps to
a one-line message and exit status. Messages never contain key material.
"""

import errno as _errno


class CosfsError(Exception):
    """Base class: ``errno`` for the filesystem, ``code`` for the CLI."""

    errno = _errno.EIO
    code = "InternalError"

    def __init__(self, message="", *, errno=None, code=None):
        super().__init__(message or self.code)
        if errno is not None:
            self.errno = errno
        if code is not None:
            self.code = code

    @property
    def message(self):
        return str(self)


class ConfigError(CosfsError):
    """A configuration file is missing, malformed or has a wrong value."""

    errno = _errno.EINVAL
    code = "InvalidConfig"


class KeyStoreError(CosfsError):
    """The key store is missing, unreadable, corrupt, too open or does not fit the catalog."""

    errno = _errno.EIO
    code = "KeyStoreError"


class IntegrityError(CosfsError):
    """Authentication of sealed data or a wrapped key failed (tampering, corruption)."""

    errno = _errno.EIO
    code = "IntegrityError"


class StoreError(CosfsError):
    """The chunk store failed; ``errno`` is the one the store gave (EIO, ENOSPC, EROFS...)."""

    errno = _errno.EIO
    code = "StoreError"


class InvalidBucketName(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidBucketName"


class BucketNameTooLong(InvalidBucketName):
    code = "BucketNameTooLong"


class NoSuchBucket(CosfsError):
    errno = _errno.ENOENT
    code = "NoSuchBucket"


class BucketAlreadyExists(CosfsError):
    errno = _errno.EEXIST
    code = "BucketAlreadyExists"


class BucketNotEmpty(CosfsError):
    errno = _errno.ENOTEMPTY
    code = "BucketNotEmpty"


class MalformedXML(CosfsError):
    errno = _errno.EINVAL
    code = "MalformedXML"


class InvalidArgument(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidArgument"


class NoSuchEncryptionConfiguration(CosfsError):
    errno = _errno.ENODATA
    code = "NoSuchEncryptionConfiguration"


class KeyTooLong(CosfsError):
    errno = _errno.ENAMETOOLONG
    code = "KeyTooLong"


class InvalidObjectName(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidObjectName"


class NotAnObject(CosfsError):
    """A plain file or symlink at the mount root: objects live inside buckets."""

    errno = _errno.EPERM
    code = "InvalidObjectName"


class ReadOnlyAttribute(CosfsError):
    """A status xattr (etag, version id, replication status) cannot be written."""

    errno = _errno.EPERM
    code = "AccessDenied"


class FsError(CosfsError):
    """A plain POSIX error with no COS counterpart (ENOENT, EEXIST, EISDIR...)."""

    code = "PosixError"

    def __init__(self, errno, message=""):
        super().__init__(message or _errno.errorcode.get(errno, str(errno)), errno=errno)
