"""Which encryption an object gets: the resolver.

Pure: no I/O, no state, imports nothing of cosfs but :mod:`cosfs.errors`;
safe on any thread. The data path asks it once per commit of new object
content; reads never consult it (they follow the object's recorded header).

Rules, from the COS bucket-encryption page (``/work/shared/cos-reference.md``,
"Which encryption an object gets"):

=============  =============================================================
writer         result
=============  =============================================================
NORMAL         the object's override xattr, else the bucket default, else none
INVENTORY      the inventory's own ``Encryption``, else the bucket default
ORIGIN_PULL    the bucket default
REPLICA        the source object's encryption if it has one (the destination
               default is ignored), else the destination bucket default
=============  =============================================================

Service writers (INVENTORY, ORIGIN_PULL, REPLICA) create objects that have no
override of their own, so an ``override`` passed with them is ignored.

:func:`decide` also says which rule decided (:data:`SOURCES`), for the
``cosfs_resolver_decisions_total{source}`` metric: ``request`` (the object's
override), ``bucket-default``, ``none`` (neither: plaintext) for NORMAL
writers; a service writer's decisions are labelled with its writer kind
(``inventory``, ``origin-pull``, ``replica``) whatever the outcome.
"""

import enum
import logging
from dataclasses import dataclass
from typing import NamedTuple, Optional

from . import errors

log = logging.getLogger(__name__)

ALGORITHMS = ("AES256", "SM4", "KMS")
KMS_ALGORITHMS = ("AES256", "SM4")
# Algorithm word of a spec -> the name an object reports (COS header / xattr value).
_STORED_NAMES = {"AES256": "AES256", "SM4": "SM4", "KMS": "cos/kms"}
_FROM_STORED = {v: k for k, v in _STORED_NAMES.items()}

OVERRIDE_VALUES = frozenset(_STORED_NAMES.values())
"""Valid values of the ``user.cos.server-side-encryption`` xattr."""

_STRIP_TRAILING = b"\x00\n\r \t"


class WriterKind(enum.Enum):
    """Who commits the content: a user, or one of the daemon's services."""

    NORMAL = "normal"
    INVENTORY = "inventory"
    ORIGIN_PULL = "origin-pull"
    REPLICA = "replica"


@dataclass(frozen=True)
class EncryptionSpec:
    """How one object is to be encrypted.

    ``algorithm`` is ``"AES256"`` or ``"SM4"`` (SSE-COS) or ``"KMS"``
    (SSE-KMS with a named master key ``kms_key_id``, None for the default key,
    and the data algorithm ``kms_algorithm``, None meaning AES256).
    Construction with any other combination raises
    :class:`errors.InvalidArgument`.
    """

    algorithm: str
    kms_key_id: "str | None" = None
    kms_algorithm: "str | None" = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise errors.InvalidArgument(
                f"unknown encryption algorithm {_short(self.algorithm)}: "
                f"expected one of {', '.join(ALGORITHMS)}"
            )
        if self.algorithm != "KMS" and (self.kms_key_id is not None or self.kms_algorithm is not None):
            raise errors.InvalidArgument("a KMS key id or KMS algorithm needs algorithm KMS")
        if self.kms_key_id is not None and (not isinstance(self.kms_key_id, str) or not self.kms_key_id):
            raise errors.InvalidArgument("KMS key id must be a non-empty string")
        if self.kms_algorithm is not None and self.kms_algorithm not in KMS_ALGORITHMS:
            raise errors.InvalidArgument(
                f"unknown KMS algorithm {_short(self.kms_algorithm)}: expected AES256 or SM4"
            )

    @property
    def stored_name(self):
        """The algorithm name an object reports: ``AES256``, ``SM4`` or ``cos/kms``."""
        return _STORED_NAMES[self.algorithm]

    @classmethod
    def from_stored_name(cls, name, kms_key_id=None):
        """Inverse of :attr:`stored_name`; unknown names raise :class:`errors.InvalidArgument`."""
        try:
            algorithm = _FROM_STORED[name]
        except (KeyError, TypeError):
            raise errors.InvalidArgument(
                f"unknown server-side encryption {_short(name)}: "
                f"expected one of {', '.join(sorted(OVERRIDE_VALUES))}"
            ) from None
        return cls(algorithm, kms_key_id=kms_key_id)


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_override(value):
    """Parse a value written to the ``user.cos.server-side-encryption`` xattr.

    Takes bytes; trailing NUL, newline, carriage return, tab and space are
    dropped (``setfattr`` and ``attr`` add some of them). The rest must be
    exactly ``AES256``, ``SM4`` or ``cos/kms`` (case-sensitive, as COS header
    values are). Returns an :class:`EncryptionSpec` (``cos/kms`` gives KMS with
    the default key). Raises :class:`errors.InvalidArgument` (EINVAL) otherwise.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise errors.InvalidArgument(f"encryption override must be bytes, not {type(value).__name__}")
    word = bytes(value).rstrip(_STRIP_TRAILING)
    try:
        text = word.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text not in OVERRIDE_VALUES:
        raise errors.InvalidArgument(
            f"invalid server-side encryption {_short(word)}: "
            f"expected one of {', '.join(sorted(OVERRIDE_VALUES))}"
        )
    return EncryptionSpec.from_stored_name(text)


#: rules a decision can come from (see the module docstring)
SOURCES = ("request", "bucket-default", "none", WriterKind.INVENTORY.value,
           WriterKind.ORIGIN_PULL.value, WriterKind.REPLICA.value)


class Decision(NamedTuple):
    """The resolver's answer: ``spec`` (None: plaintext) and the ``source`` rule."""

    spec: Optional[EncryptionSpec]
    source: str


def decide(
    *,
    override,
    bucket_default,
    writer=WriterKind.NORMAL,
    inventory_encryption=None,
    source_encryption=None,
):
    """:func:`resolve` with the rule that decided: a :class:`Decision`.

    Same arguments and errors as :func:`resolve`; ``source`` is one of
    :data:`SOURCES` (service writers: their writer kind's value).
    """
    spec = resolve(override=override, bucket_default=bucket_default, writer=writer,
                   inventory_encryption=inventory_encryption,
                   source_encryption=source_encryption)
    if writer is not WriterKind.NORMAL:
        return Decision(spec, writer.value)
    if override is not None:
        return Decision(spec, "request")
    return Decision(spec, "bucket-default" if spec is not None else "none")


def resolve(
    *,
    override,
    bucket_default,
    writer=WriterKind.NORMAL,
    inventory_encryption=None,
    source_encryption=None,
):
    """Return the :class:`EncryptionSpec` for new content, or None for plaintext.

    ``override``: the object's explicit request (NORMAL writers only).
    ``bucket_default``: the bucket's default encryption at commit time.
    ``inventory_encryption``: the inventory's ``Encryption`` (INVENTORY only).
    ``source_encryption``: the replicated source object's encryption (REPLICA only).
    Raises ValueError for an unknown ``writer``.
    """
    if writer is WriterKind.NORMAL:
        chosen = override if override is not None else bucket_default
    elif writer is WriterKind.INVENTORY:
        chosen = inventory_encryption if inventory_encryption is not None else bucket_default
    elif writer is WriterKind.ORIGIN_PULL:
        chosen = bucket_default
    elif writer is WriterKind.REPLICA:
        # COS: replicas of encrypted objects inherit the source encryption and
        # the destination bucket setting is not honoured.
        chosen = source_encryption if source_encryption is not None else bucket_default
    else:
        raise ValueError(f"unknown writer kind {writer!r}")
    return chosen
