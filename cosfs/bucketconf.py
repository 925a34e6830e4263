"""The bucket default encryption document (PUT / GET / DELETE bucket encryption).

Document, with the element names COS uses::

    <ServerSideEncryptionConfiguration>
      <Rule>
        <ApplyServerSideEncryptionByDefault>
          <SSEAlgorithm>AES256</SSEAlgorithm>       AES256 | SM4 | KMS
          <KMSMasterKeyID>id</KMSMasterKeyID>       optional, KMS only
          <KMSAlgorithm>AES256</KMSAlgorithm>       optional, KMS only: AES256 | SM4
        </ApplyServerSideEncryptionByDefault>
      </Rule>
    </ServerSideEncryptionConfiguration>

Exactly one ``Rule`` (COS has one; S3 allows several, which we refuse) and no
other elements. Anything else is :class:`errors.MalformedXML`, the code we
chose for every rejected document (COS leaves it unspecified). Pure, safe on
any thread; sits just above :mod:`cosfs.resolver`, whose spec it produces.
"""

import logging
import re
from dataclasses import dataclass

from . import errors, xmldoc
from .resolver import ALGORITHMS, KMS_ALGORITHMS, EncryptionSpec

log = logging.getLogger(__name__)

ROOT = "ServerSideEncryptionConfiguration"
RULE = "Rule"
APPLY = "ApplyServerSideEncryptionByDefault"
_APPLY_CHILDREN = ("SSEAlgorithm", "KMSMasterKeyID", "KMSAlgorithm")
# Printable ASCII without spaces: UUIDs, aliases and qcs resource names all fit.
_KMS_KEY_ID = re.compile(r"[\x21-\x7e]{1,256}\Z")
_STRIP = " \t\r\n\x00\ufeff"


@dataclass(frozen=True)
class EncryptionConfig:
    """A bucket's default encryption.

    ``algorithm`` is ``AES256``, ``SM4`` or ``KMS``; ``kms_key_id`` (printable
    ASCII without spaces, at most 256 characters) and ``kms_algorithm``
    (``AES256`` or ``SM4``) are allowed with ``KMS`` only; None means "not
    given" (COS then uses the default key and AES256). Invalid combinations
    raise :class:`errors.MalformedXML`.
    """

    algorithm: str
    kms_key_id: "str | None" = None
    kms_algorithm: "str | None" = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise errors.MalformedXML(
                f"SSEAlgorithm must be one of {', '.join(ALGORITHMS)}, found {_short(self.algorithm)}"
            )
        if self.algorithm != "KMS":
            if self.kms_key_id is not None:
                raise errors.MalformedXML("KMSMasterKeyID is allowed only with SSEAlgorithm KMS")
            if self.kms_algorithm is not None:
                raise errors.MalformedXML("KMSAlgorithm is allowed only with SSEAlgorithm KMS")
        if self.kms_key_id is not None and (
            not isinstance(self.kms_key_id, str) or not _KMS_KEY_ID.match(self.kms_key_id)
        ):
            raise errors.MalformedXML(
                "KMSMasterKeyID must be 1 to 256 printable characters without spaces"
            )
        if self.kms_algorithm is not None and self.kms_algorithm not in KMS_ALGORITHMS:
            raise errors.MalformedXML(
                f"KMSAlgorithm must be AES256 or SM4, found {_short(self.kms_algorithm)}"
            )


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_encryption(doc):
    """Parse a PUT bucket encryption body into an :class:`EncryptionConfig`.

    Takes bytes or str: either the full ``ServerSideEncryptionConfiguration``
    document, or a bare algorithm word (``AES256``, ``SM4``, ``KMS``) with
    optional surrounding whitespace and trailing NULs, as ``setfattr -v``
    writes it. An empty ``<KMSMasterKeyID/>`` or ``<KMSAlgorithm/>`` counts as
    absent. Raises :class:`errors.MalformedXML` for anything else.
    """
    if isinstance(doc, (bytes, bytearray, memoryview)):
        try:
            doc = bytes(doc).decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8 text: still XML with an encoding declaration perhaps.
            return _parse_document(bytes(doc))
    if not isinstance(doc, str):
        raise errors.MalformedXML(f"encryption configuration must be bytes or text, not {type(doc).__name__}")
    word = doc.strip(_STRIP)
    if not word.startswith("<"):
        if word in ALGORITHMS:
            return EncryptionConfig(word)
        raise errors.MalformedXML(
            f"expected a {ROOT} document or one of {', '.join(ALGORITHMS)}, found {_short(word)}"
        )
    return _parse_document(doc)


def _parse_document(doc):
    root = xmldoc.parse(doc, ROOT)
    xmldoc.check_children(root, (RULE,))
    rule = xmldoc.find_one(root, RULE)
    xmldoc.check_children(rule, (APPLY,))
    apply = xmldoc.find_one(rule, APPLY)
    xmldoc.check_children(apply, _APPLY_CHILDREN)
    algorithm = xmldoc.text(apply, "SSEAlgorithm")
    key_id = xmldoc.text(apply, "KMSMasterKeyID", required=False) or None
    kms_algorithm = xmldoc.text(apply, "KMSAlgorithm", required=False) or None
    return EncryptionConfig(algorithm, kms_key_id=key_id, kms_algorithm=kms_algorithm)


def render_encryption(cfg):
    """The canonical document for *cfg* as UTF-8 bytes; ``parse_encryption`` of it gives *cfg* back."""
    leaves = [xmldoc.element("SSEAlgorithm", cfg.algorithm)]
    if cfg.kms_key_id is not None:
        leaves.append(xmldoc.element("KMSMasterKeyID", cfg.kms_key_id))
    if cfg.kms_algorithm is not None:
        leaves.append(xmldoc.element("KMSAlgorithm", cfg.kms_algorithm))
    apply = xmldoc.element(APPLY, children=leaves)
    return xmldoc.render(xmldoc.element(ROOT, children=[xmldoc.element(RULE, children=[apply])]))


def spec_from_config(cfg):
    """The resolver's :class:`~cosfs.resolver.EncryptionSpec` for a bucket default."""
    return EncryptionSpec(cfg.algorithm, kms_key_id=cfg.kms_key_id, kms_algorithm=cfg.kms_algorithm)
