"""The bucket versioning document (PUT / GET Bucket versioning). Pure.

Document, as COS and S3 write it::

    <VersioningConfiguration>
      <Status>Enabled</Status>                      Enabled | Suspended
    </VersioningConfiguration>

A bucket that never had versioning has no document (GET answers an empty
``<VersioningConfiguration/>``); once enabled, versioning can be suspended but
never removed, as in COS. :func:`parse_versioning` also takes the bare word
(``Enabled``, ``Suspended``) that ``setfattr -v`` writes. Anything else is
:class:`errors.MalformedXML`. Safe on any thread.
"""

import logging

from . import errors, xmldoc

log = logging.getLogger(__name__)

ROOT = "VersioningConfiguration"
STATUSES = ("Enabled", "Suspended")
_STRIP = " \t\r\n\x00\ufeff"


def parse_versioning(doc) -> str:
    """The status (``Enabled`` or ``Suspended``) of a document or bare word (bytes or str)."""
    if isinstance(doc, (bytes, bytearray, memoryview)):
        try:
            doc = bytes(doc).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.MalformedXML("the versioning configuration is not UTF-8 text") from None
    if not isinstance(doc, str):
        raise errors.MalformedXML("versioning configuration must be bytes or text")
    word = doc.strip(_STRIP)
    if not word.startswith("<"):
        status = word
    else:
        root = xmldoc.parse(doc, ROOT)
        xmldoc.check_children(root, ("Status", "MfaDelete"))
        status = xmldoc.text(root, "Status")
    if status not in STATUSES:
        raise errors.MalformedXML("versioning Status must be Enabled or Suspended, found %r"
                                  % status[:40])
    return status


def render_versioning(status) -> bytes:
    """The document for ``status``; None (never enabled) gives the empty document."""
    root = xmldoc.element(ROOT)
    if status is not None:
        root.append(xmldoc.element("Status", status))
    return xmldoc.render(root)
