"""Form bodies of the console: url-encoded fields, and multipart uploads as a stream.

:func:`parse_urlencoded` reads a small ``application/x-www-form-urlencoded``
body (at most :data:`MAX_FORM_BYTES`) into {name: value} (the last value of a
repeated name wins).

:func:`multipart_events` turns the chunks of a ``multipart/form-data`` body
(an async iterator of bytes) into events, parsed by :mod:`python_multipart`
as the chunks arrive, so an upload of any size takes constant memory:

* ``("part", name, filename)`` when a part's headers are complete
  (``filename`` None for an ordinary field);
* ``("data", bytes)`` for each piece of the part's content;
* ``("end",)`` when the part is complete.

A malformed body raises :class:`FormError`. Runs on the trio thread (the
parser is fed synchronously between awaits).
"""

import logging
import urllib.parse

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 64 * 1024
MAX_FIELD_BYTES = 64 * 1024


class FormError(ValueError):
    """A form body that cannot be parsed (answered 400)."""


def parse_urlencoded(body: bytes) -> dict:
    if len(body) > MAX_FORM_BYTES:
        raise FormError("the form is too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                       strict_parsing=False, max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError("the form cannot be read: %s" % exc) from None
    return dict(pairs)


def boundary_of(content_type: str):
    """The boundary of a ``multipart/form-data`` content type, or None for anything else."""
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        return None
    return params[b"boundary"]


async def multipart_events(chunks, boundary):
    """Events of the multipart body in ``chunks`` (see the module docstring)."""
    events = []
    head = {"field": b"", "value": b"", "headers": {}}

    def on_part_begin():
        head["headers"] = {}

    def on_header_field(data, start, end):
        head["field"] += data[start:end]

    def on_header_value(data, start, end):
        head["value"] += data[start:end]

    def on_header_end():
        head["headers"][head["field"].lower()] = head["value"]
        head["field"], head["value"] = b"", b""

    def on_headers_finished():
        _, params = parse_options_header(head["headers"].get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        events.append(("part", name,
                       None if filename is None else filename.decode("utf-8", "replace")))

    def on_part_data(data, start, end):
        if end > start:
            events.append(("data", bytes(data[start:end])))

    def on_part_end():
        events.append(("end",))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in chunks:
            parser.write(chunk)
            while events:
                yield events.pop(0)
        parser.finalize()
    except MultipartParseError as exc:
        raise FormError("the upload cannot be read: %s" % exc) from None
    while events:
        yield events.pop(0)


async def field_value(events):
    """The content of the current (ordinary) part, up to its ``end`` event."""
    value = b""
    async for ev in events:
        if ev[0] == "end":
            return value.decode("utf-8", "replace")
        if ev[0] == "data":
            value += ev[1]
            if len(value) > MAX_FIELD_BYTES:
                raise FormError("a form field is too large")
    raise FormError("the upload ended in the middle of a field")


async def file_body(events):
    """The pieces of the current (file) part, up to its ``end`` event."""
    async for ev in events:
        if ev[0] == "end":
            return
        if ev[0] == "data":
            yield ev[1]
    raise FormError("the upload ended in the middle of a file")
