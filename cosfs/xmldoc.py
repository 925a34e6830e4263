"""Safe parsing and stable rendering of bucket configuration documents.

Every XML document a user hands to cosfs (bucket encryption, inventory,
origin, replication...) goes through :func:`parse`. It uses the stdlib expat
parser directly and refuses, before any expansion can happen:

* documents larger than ``max_bytes`` (64 KiB unless told otherwise);
* any ``<!DOCTYPE``, hence any entity declaration (no external entities, no
  "billion laughs"), and any processing instruction other than the XML
  declaration itself;
* elements nested deeper than :data:`MAX_DEPTH`;
* malformed XML, and a root element of another name.

Namespaces: COS documents carry none, but SDKs written for S3 sometimes send
``xmlns="http://..."``. Namespaces are accepted and stripped, so elements are
matched by local name only. An undeclared prefix is malformed XML.

All failures raise :class:`errors.MalformedXML` with a short message that
never echoes more than a few characters of the input. Pure, safe on any thread.
"""

import logging
import xml.etree.ElementTree as ET
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

from . import errors

log = logging.getLogger(__name__)

MAX_BYTES = 64 * 1024
MAX_DEPTH = 32
_NS_SEP = "}"


class _Refused(Exception):
    """Raised inside expat handlers; turned into MalformedXML by :func:`parse`."""


def _name(tag, limit=40):
    """An element name cut short for messages."""
    return tag if len(tag) <= limit else tag[: limit - 3] + "..."


def _local(name):
    return name.rpartition(_NS_SEP)[2]


def parse(doc, root, *, max_bytes=MAX_BYTES):
    """Parse *doc* (bytes or str) and return its root :class:`~xml.etree.ElementTree.Element`.

    The root element must be called *root*. Element and attribute names in
    the result have their namespaces stripped; text keeps its whitespace
    (use :func:`text` to read leaves). Raises :class:`errors.MalformedXML`.
    """
    if isinstance(doc, str):
        size = len(doc.encode("utf-8", "surrogatepass"))
    elif isinstance(doc, (bytes, bytearray, memoryview)):
        doc = bytes(doc)
        size = len(doc)
    else:
        raise errors.MalformedXML(f"XML document must be bytes or text, not {type(doc).__name__}")
    if size > max_bytes:
        raise errors.MalformedXML(f"XML document is {size} bytes, at most {max_bytes} allowed")
    if not doc.strip():
        raise errors.MalformedXML("XML document is empty")

    builder = ET.TreeBuilder()
    depth = 0

    def start(name, attrs):
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_DEPTH} levels")
        builder.start(_local(name), {_local(k): v for k, v in attrs.items()})

    def end(name):
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    def refuse(what):
        def handler(*_args):
            raise _Refused(f"{what} not allowed")

        return handler

    parser = expat.ParserCreate(namespace_separator=_NS_SEP)
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse("DOCTYPE declaration")
    parser.EntityDeclHandler = refuse("entity declaration")
    parser.UnparsedEntityDeclHandler = refuse("entity declaration")
    parser.NotationDeclHandler = refuse("notation declaration")
    parser.ExternalEntityRefHandler = refuse("external entity")
    parser.ProcessingInstructionHandler = refuse("processing instruction")
    try:
        parser.Parse(doc, True)
        tree = builder.close()
    except _Refused as exc:
        raise errors.MalformedXML(f"XML document refused: {exc}") from None
    except expat.ExpatError as exc:
        raise errors.MalformedXML(
            f"malformed XML at line {exc.lineno}, column {exc.offset}: "
            f"{expat.ErrorString(exc.code)}"
        ) from None
    except UnicodeError:
        raise errors.MalformedXML("XML document is not valid text") from None
    except LookupError:
        # expat asks Python's codecs about an encoding it does not know itself
        raise errors.MalformedXML("XML document declares an unknown encoding") from None
    except (ValueError, AssertionError):
        # TreeBuilder complains about unbalanced input expat let through.
        raise errors.MalformedXML("malformed XML") from None
    if tree.tag != root:
        raise errors.MalformedXML(f"root element must be <{root}>, found <{_name(tree.tag)}>")
    return tree


def find_one(elem, path, *, required=True):
    """The single element at ElementTree *path* below *elem*, or None.

    Raises :class:`errors.MalformedXML` when the element is missing (and
    *required*) or appears more than once.
    """
    found = elem.findall(path)
    if len(found) > 1:
        raise errors.MalformedXML(f"<{path}> may appear only once in <{elem.tag}>")
    if not found:
        if required:
            raise errors.MalformedXML(f"<{elem.tag}> is missing <{path}>")
        return None
    return found[0]


def text(elem, path, *, required=True):
    """The text of the single leaf element at *path* below *elem*, whitespace stripped.

    Returns None when the element is absent and not *required*; an empty
    element gives ``""``. Raises :class:`errors.MalformedXML` when it is
    missing (and required), repeated, or has child elements.
    """
    leaf = find_one(elem, path, required=required)
    if leaf is None:
        return None
    if len(leaf):
        raise errors.MalformedXML(f"<{leaf.tag}> must hold text, not elements")
    return (leaf.text or "").strip()


def check_children(elem, allowed, *, repeatable=()):
    """Refuse unknown children, repeated children and stray text in a container element.

    *allowed* is the collection of permitted child names; names in
    *repeatable* may occur more than once. Raises :class:`errors.MalformedXML`.
    """
    if elem.text and elem.text.strip():
        raise errors.MalformedXML(f"<{elem.tag}> must hold elements, not text")
    seen = set()
    for child in elem:
        if child.tag not in allowed:
            raise errors.MalformedXML(f"unknown element <{_name(child.tag)}> in <{elem.tag}>")
        if child.tag in seen and child.tag not in repeatable:
            raise errors.MalformedXML(f"<{child.tag}> may appear only once in <{elem.tag}>")
        seen.add(child.tag)
        if child.tail and child.tail.strip():
            raise errors.MalformedXML(f"<{elem.tag}> must hold elements, not text")


def element(tag, text=None, children=()):
    """Build an element with optional *text* and *children* (a convenience for renderers)."""
    elem = ET.Element(tag)
    elem.text = text
    elem.extend(children)
    return elem


def render(elem, *, declaration=True):
    """Serialize *elem* as UTF-8 bytes in one stable layout.

    Two-space indentation, one element per line, leaf text inline, empty
    leaves as ``<Tag/>``, attributes sorted, a final newline; with
    *declaration*, an ``<?xml version="1.0" encoding="UTF-8"?>`` line first.
    Tails are ignored. Equal trees always give equal bytes.
    """
    lines = ['<?xml version="1.0" encoding="UTF-8"?>'] if declaration else []
    _render_into(elem, 0, lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


def _render_into(elem, depth, lines):
    pad = "  " * depth
    attrs = "".join(f" {k}={quoteattr(str(v))}" for k, v in sorted(elem.attrib.items()))
    if len(elem):
        lines.append(f"{pad}<{elem.tag}{attrs}>")
        for child in elem:
            _render_into(child, depth + 1, lines)
        lines.append(f"{pad}</{elem.tag}>")
    elif elem.text:
        lines.append(f"{pad}<{elem.tag}{attrs}>{escape(elem.text)}</{elem.tag}>")
    else:
        lines.append(f"{pad}<{elem.tag}{attrs}/>")
