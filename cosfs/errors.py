"""The one exception tree of cosfs.

Every error raised on purpose by a cosfs layer is a :class:`CosfsError`. Each
class carries the POSIX ``errno`` that the FUSE adapter answers with and the
COS error ``code`` that the command line prints. Translation happens in
exactly one place per boundary: ``fuse.ops`` maps to errno, ``cli`` maps to
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

    @property
    def http_status(self):
        """The HTTP status of this error for the XML API (see :func:`http_status`)."""
        return http_status(self)


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


class CredentialsError(CosfsError):
    """The API credentials file is unreadable, malformed or too open (never shows a secret)."""

    errno = _errno.EIO
    code = "CredentialsError"


# -- request authentication of the XML API: ``status`` is the HTTP status COS answers
class AuthError(CosfsError):
    """A request was refused by authentication or authorization (HTTP ``status``)."""

    errno = _errno.EACCES
    code = "AccessDenied"
    status = 403


class AccessDenied(AuthError):
    code = "AccessDenied"


class InvalidAccessKeyId(AuthError):
    code = "InvalidAccessKeyId"


class SignatureDoesNotMatch(AuthError):
    code = "SignatureDoesNotMatch"


class RequestTimeTooSkewed(AuthError):
    code = "RequestTimeTooSkewed"


class MalformedAuth(AuthError):
    """Authentication fields that cannot be parsed; ``code`` says where they were."""

    errno = _errno.EINVAL
    code = "InvalidArgument"
    status = 400


class BadRequestBody(CosfsError):
    """A request body that fails its framing, length or checksum (HTTP 400): nothing is stored."""

    errno = _errno.EINVAL
    code = "InvalidRequest"
    status = 400


# -- object semantics of the key-level core (cosfs.keyspace); COS codes
class NoSuchKey(CosfsError):
    errno = _errno.ENOENT
    code = "NoSuchKey"


class NoSuchUpload(CosfsError):
    errno = _errno.ENOENT
    code = "NoSuchUpload"


class BucketAlreadyOwnedByYou(BucketAlreadyExists):
    """Creating a bucket that already exists: every bucket of a store is its owner's."""

    code = "BucketAlreadyOwnedByYou"


class InvalidRegionName(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidRegionName"


class KeyConflict(CosfsError):
    """A key the tree cannot hold beside an existing one: ``a`` beside ``a/b``, or a key
    where the mount holds a symlink or special file."""

    errno = _errno.EEXIST
    code = "PathConflict"


class InvalidRequest(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidRequest"


class InvalidDigest(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidDigest"


class BadDigest(CosfsError):
    errno = _errno.EINVAL
    code = "BadDigest"


class MetadataTooLarge(CosfsError):
    errno = _errno.E2BIG
    code = "MetadataTooLarge"


class InvalidPart(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidPart"


class InvalidPartOrder(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidPartOrder"


class EntityTooSmall(CosfsError):
    errno = _errno.EINVAL
    code = "EntityTooSmall"


class InvalidRange(CosfsError):
    errno = _errno.EINVAL
    code = "InvalidRange"


class NoSuchVersion(CosfsError):
    """A version id that the key does not have (also a delete marker read as an object)."""
    errno = _errno.ENOENT
    code = "NoSuchVersion"


class ReplicationConfigurationNotFound(CosfsError):
    errno = _errno.ENODATA
    code = "ReplicationConfigurationNotFoundError"


class BucketVersionNotOpen(CosfsError):
    """Replication needs versioning Enabled on the source and the destination bucket."""
    errno = _errno.EINVAL
    code = "BucketVersionNotOpen"


class InvalidBucketState(CosfsError):
    """The bucket's configuration forbids the change (e.g. suspending versioning of a
    bucket that replicates)."""
    errno = _errno.EBUSY
    code = "InvalidBucketState"


class OriginConfigurationNotFoundError(CosfsError):
    errno = _errno.ENODATA
    code = "OriginConfigurationNotFoundError"


class OriginFailed(CosfsError):
    """The origin of a bucket could not deliver a missing object (COS answers 424)."""

    errno = _errno.EIO
    code = "FailedDependency"


class InventoryConfigurationNotFoundError(CosfsError):
    """No inventory of that id on the bucket (GET, POST of a stored id, the xattr)."""

    errno = _errno.ENODATA
    code = "InventoryConfigurationNotFoundError"
    status = 404


class InventoryFull(CosfsError):
    """A bucket holds at most 1000 inventory configurations."""

    errno = _errno.ENOSPC
    code = "InventoryFull"
    status = 400


class DuplicateInventoryId(CosfsError):
    """A one-off run (POST) under the id of a configured inventory, or of a one-off run
    delivered the same day (its report would replace that day's manifest)."""

    errno = _errno.EEXIST
    code = "DuplicateInventoryId"
    status = 409


#: The HTTP status of each COS error code the core raises (read by ``http_status``;
#: a class with its own ``status`` attribute keeps it). Codes not listed answer 500.
HTTP_STATUS = {
    "InvalidBucketName": 400, "BucketNameTooLong": 400, "MalformedXML": 400,
    "InvalidArgument": 400, "KeyTooLong": 400, "InvalidObjectName": 400,
    "InvalidRegionName": 400, "InvalidRequest": 400, "InvalidDigest": 400, "BadDigest": 400,
    "MetadataTooLarge": 400, "InvalidPart": 400, "InvalidPartOrder": 400,
    "EntityTooSmall": 400, "InvalidConfig": 400,
    "AccessDenied": 403,
    "NoSuchBucket": 404, "NoSuchKey": 404, "NoSuchUpload": 404,
    "NoSuchEncryptionConfiguration": 404, "NoSuchVersion": 404,
    "ReplicationConfigurationNotFoundError": 404, "BucketVersionNotOpen": 400,
    "InvalidBucketState": 409,
    "BucketAlreadyExists": 409, "BucketAlreadyOwnedByYou": 409, "BucketNotEmpty": 409,
    "PathConflict": 409,
    "InvalidRange": 416,
    "OriginConfigurationNotFoundError": 404, "FailedDependency": 424,
    "InternalError": 500, "IntegrityError": 500, "KeyStoreError": 500, "CorruptCatalog": 500,
    "StoreError": 503, "CatalogFull": 503,
}


def http_status(exc):
    """The HTTP status for a CosfsError: its class's ``status`` if it has one, else the
    status of its code (:data:`HTTP_STATUS`); a plain POSIX error is 500 for EIO and 400
    otherwise; anything else 500."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)
    if code == "PosixError":
        return 500 if exc.errno == _errno.EIO else 400
    return HTTP_STATUS.get(code, 500)
