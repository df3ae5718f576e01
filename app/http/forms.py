"""
The fields of a form body: C{application/x-www-form-urlencoded} or
C{multipart/form-data}.

twisted.web's C{Request.requestReceived} parses the body of every POST
before the resource is even looked up, and does it in ways that a hostile
body makes slow.  Here the channel calls L{form_fields} when a handler first
asks for the fields, and these of twisted.web's behaviours are replaced:

  - The media type: twisted.web reads C{Content-Type} with the C{email}
    package, slow and quadratic on long parameter lists.  Here a small
    parser of RFC 9110's C{type/subtype *( OWS ";" OWS name=value )}, a
    value a token or a quoted string with backslash escapes, names and
    types matched case-insensitively.
  - urlencoded: twisted.web's C{parse_qs} (items split on C{&} and C{;}, an
    item without C{=} dropped, C{+} a space, percent escapes decoded, blank
    values kept) makes a list entry, and for an item without C{=} an
    exception, of every item, and decodes with C{urllib}'s
    C{unquote_to_bytes}, a Python loop per C{%}: a 1 MiB body of C{&}, or a
    1 MiB value of C{%}, holds it for hundreds of milliseconds.  Here the
    same result comes of C-speed C{bytes} operations only, and a body with
    more than L{MAX_FIELDS} fields is refused (413) before anything is
    decoded.
  - multipart: twisted.web hands the whole body to the C{email} package,
    which follows nested multiparts and is quadratic on some shapes.  Here
    python-multipart's streaming parser takes the body in 64 KiB pieces
    after a framing pass (L{_Framing}) has found their delimiters and part
    heads with C{bytes.find}, holding python-multipart's work in Python to
    a bounded number of steps: at most L{MAX_FIELDS} parts (more: 413);
    each head within L{_MAX_PART_HEAD} bytes; all heads together within
    L{_MAX_HEAD_BLANKS} blanks and L{_MAX_HEADER_LINES} lines; and a
    delimiter followed only by transport padding and a line end, or by
    C{--}, as RFC 2046 has it (python-multipart takes any other as part
    data, after a walk through it byte by byte).  A part that is itself
    C{multipart/*} is refused (400), not followed.  A named part's content
    is kept as sent, file or not, without Content-Transfer-Encoding
    decoding (RFC 7578 §4.7 deprecates it); a part whose
    C{Content-Disposition} is not C{form-data} with a non-empty name is
    skipped.  A preamble and an epilogue are ignored, as RFC 2046 says.

Whatever cannot be taken raises L{FormError} with the status to answer, and
nothing else escapes for any body.
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, Final

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["MAX_FIELDS", "FormError", "form_fields"]

#: The most fields one body may carry; more is a 413.
MAX_FIELDS: Final = 1000

#: Bytes read from the body at a time.
_CHUNK: Final = 64 * 1024
#: The longest part head (transport padding and header lines, through the
#: blank line); browsers send well under 1 KiB.
_MAX_PART_HEAD: Final = 16 * 1024
#: The most spaces and tabs in all part heads together: python-multipart
#: steps over those one byte at a time.
_MAX_HEAD_BLANKS: Final = 16 * 1024
#: The most header lines in all part heads together: python-multipart takes
#: a few microseconds over each.  Browsers send one or two a part.
_MAX_HEADER_LINES: Final = 3 * MAX_FIELDS

_URLENCODED: Final = b"application/x-www-form-urlencoded"
_MULTIPART: Final = b"multipart/form-data"
#: What L{_Framing._after_delimiter} answers for the close delimiter.
_CLOSED: Final = -1


class FormError(Exception):
    """
    A form body that cannot be taken: C{code} is 400 (malformed) or 413 (too
    many fields).
    """

    code: int

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def form_fields(content_type: bytes | None, body: BinaryIO) -> dict[bytes, list[bytes]]:
    """
    The fields of an C{application/x-www-form-urlencoded} or
    C{multipart/form-data} body; C{{}} for any other content type (or none).

    A form body is read from position 0 and left at position 0 afterwards;
    any other is not touched.

    @raise FormError: the body is malformed (400) or has more than
        L{MAX_FIELDS} fields (413).
    """
    if content_type is None:
        return {}
    parsed = _header_parameters(content_type, _MEDIA_TYPE)
    if parsed is None or parsed[0] not in (_URLENCODED, _MULTIPART):
        return {}
    media_type, parameters = parsed
    try:
        if media_type == _URLENCODED:
            return _urlencoded_fields(_chunks(body))
        return _multipart_fields(_boundary(parameters), _chunks(body))
    finally:
        body.seek(0)


def _chunks(body: BinaryIO) -> Iterator[bytes]:
    """
    C{body} from its start, L{_CHUNK} bytes at a time.
    """
    body.seek(0)
    while chunk := body.read(_CHUNK):
        yield chunk


# Header values: RFC 9110 §5.6.2 (token), §5.6.4 (quoted-string), §5.6.6
# (parameters), with optional whitespace wherever a sender might put it.
_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_END_OF_TYPE: Final = rb"[ \t]*(?=;|\Z)"
_MEDIA_TYPE: Final = re.compile(
    rb"[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")" + _END_OF_TYPE
)
_DISPOSITION_TYPE: Final = re.compile(rb"[ \t]*(" + _TOKEN + rb")" + _END_OF_TYPE)
_PARAMETER: Final = re.compile(
    rb"[ \t]*;[ \t]*(?:("
    + _TOKEN
    + rb")[ \t]*=[ \t]*(?:("
    + _TOKEN
    + rb')|"((?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*+)"))?'
)
_QUOTED_PAIR: Final = re.compile(rb"\\(.)", re.DOTALL)
#: The most parameters read from one header value (real ones have two or
#: three): each costs a step in Python, and a part head has room for
#: thousands.
_MAX_PARAMETERS: Final = 16


def _header_parameters(
    value: bytes, kind: re.Pattern[bytes]
) -> tuple[bytes, dict[bytes, bytes]] | None:
    """
    The type (C{kind} matches it: a media type or a disposition type),
    lowercased, and the parameters of a header value, names lowercased; the
    first of a repeated name counts.  C{None} if the value does not begin
    with a type followed by C{;} or nothing; parameters stop at the first
    that is malformed, or after L{_MAX_PARAMETERS}.
    """
    found = kind.match(value)
    if found is None:
        return None
    parameters: dict[bytes, bytes] = {}
    position = found.end()
    for _ in range(_MAX_PARAMETERS):
        parameter = _PARAMETER.match(value, position)
        if parameter is None:
            break
        name, token, quoted = parameter.groups()
        if name is not None:
            parameters.setdefault(name.lower(), token or _unquote_string(quoted))
        position = parameter.end()
    return found[1].lower(), parameters


def _unquote_string(quoted: bytes) -> bytes:
    """
    The content of a quoted string, its backslash escapes undone.
    """
    if b"\\" not in quoted:
        return quoted
    return _QUOTED_PAIR.sub(rb"\1", quoted)


# urlencoded


def _urlencoded_fields(chunks: Iterable[bytes]) -> dict[bytes, list[bytes]]:
    """
    The fields of an urlencoded body, as twisted.web's C{parse_qs(body, 1)}
    has them.
    """
    pairs: list[tuple[bytes, bytes]] = []
    # The item after a chunk's last separator may go on in the next chunk.
    unfinished: list[bytes] = []
    for chunk in chunks:
        chunk = chunk.replace(b";", b"&")
        last = chunk.rfind(b"&")
        if last == -1:
            unfinished.append(chunk)
            continue
        _raw_pairs(b"".join([*unfinished, chunk[:last]]), pairs)
        unfinished = [chunk[last + 1 :]]
    _raw_pairs(b"".join(unfinished), pairs)
    fields: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        fields.setdefault(_unquote_plus(name), []).append(_unquote_plus(value))
    return fields


def _raw_pairs(items: bytes, pairs: list[tuple[bytes, bytes]]) -> None:
    """
    Add to C{pairs} the undecoded name and value of each item of C{items}
    (separated by C{&}) that has an C{=}.

    Only the items with an C{=} are visited, each with C{bytes.find}: a body
    of separators alone costs nothing per separator.
    """
    position = 0
    while (equals := items.find(b"=", position)) != -1:
        separator = items.rfind(b"&", position, equals)
        start = position if separator == -1 else separator + 1
        end = items.find(b"&", equals)
        if end == -1:
            end = len(items)
        if len(pairs) == MAX_FIELDS:
            raise FormError(413, f"more than {MAX_FIELDS} form fields")
        pairs.append((items[start:equals], items[equals + 1 : end]))
        position = end + 1


def _table(mapping: dict[str, int], default: int) -> bytes:
    """
    A C{bytes.translate} table: each byte named in C{mapping} to its value,
    any other byte to C{default}.
    """
    return bytes(mapping.get(chr(byte), default) for byte in range(256))


#: Each byte as its class: C{h} a hex digit, C{%} and C{=} themselves, C{x}
#: anything else.
_ESCAPE_CLASSES: Final = _table(
    {digit: ord("h") for digit in "0123456789ABCDEFabcdef"}
    | {"%": ord("%"), "=": ord("=")},
    ord("x"),
)
#: A mask that, XORed with the value, turns the C{%} of each escape (class
#: C{V}) into C{=} and each C{=} of the value into C{Q}.
_ESCAPES_TO_QP: Final = _table({"V": ord("%") ^ ord("="), "=": ord("=") ^ ord("Q")}, 0)
#: The classes as quoted-printable that decodes to exactly as many bytes as
#: the value does, with C{Q} where the value's own C{=} are.
_CLASSES_TO_QP: Final = _table({"V": ord("="), "h": ord("0"), "=": ord("Q")}, ord("x"))
#: A mask that, XORed with the decoded value, turns those C{Q} back.
_Q_TO_EQUALS: Final = _table({"Q": ord("Q") ^ ord("=")}, 0)


def _unquote_plus(raw: bytes) -> bytes:
    """
    C{raw} with C{+} as a space and percent escapes decoded, as
    C{urllib.parse.unquote_to_bytes(raw.replace(b"+", b" "))} has it: a
    C{%} not followed by two hex digits stays as it is.

    C{unquote_to_bytes} is a Python loop per C{%}; this is a few C-speed
    passes over the value and a string of its byte classes:
    C{binascii.a2b_qp} (quoted-printable, whose escape is C{=XX}) decodes
    the value with its escapes' C{%} turned into C{=} and its own C{=} out
    of the way as C{Q}; the same decoding of the classes says where those
    C{Q} end up, to be turned back.
    """
    plain = raw.replace(b"+", b" ")
    if b"%" not in plain:
        return plain
    # Escapes never overlap, so one replace marks the % of each (V).
    classes = plain.translate(_ESCAPE_CLASSES).replace(b"%hh", b"Vhh")
    if b"V" not in classes:
        return plain
    decoded = binascii.a2b_qp(_xor(plain, classes.translate(_ESCAPES_TO_QP)))
    if b"=" not in plain:
        return decoded
    own_equals = binascii.a2b_qp(classes.translate(_CLASSES_TO_QP))
    return _xor(decoded, own_equals.translate(_Q_TO_EQUALS))


def _xor(data: bytes, mask: bytes) -> bytes:
    """
    C{data} XOR C{mask}, byte by byte, computed on integers: the one
    C-speed way to change exactly the bytes a mask marks.
    """
    value = int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")
    return value.to_bytes(len(data), "big")


# multipart

#: RFC 2046 §5.1.1: 1 to 70 characters from this set, not ending in a space.
_BOUNDARY: Final = re.compile(
    rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]"
)


def _boundary(parameters: dict[bytes, bytes]) -> bytes:
    """
    The boundary of a multipart body, from its media type's parameters.
    """
    boundary = parameters.get(b"boundary")
    if boundary is None:
        raise FormError(400, "multipart/form-data without a boundary")
    if not _BOUNDARY.fullmatch(boundary):
        raise FormError(400, "malformed multipart boundary")
    return boundary


def _silent_logger() -> logging.Logger:
    """
    A logger that drops every record: python-multipart logs a warning for
    each malformed body, and a client's mistake is its 400, not a line in
    the server's log (nor, with logging unconfigured, on standard error).
    """
    logger = logging.Logger(__name__)
    logger.disabled = True
    return logger


_SILENT: Final = _silent_logger()


def _multipart_fields(
    boundary: bytes, chunks: Iterable[bytes]
) -> dict[bytes, list[bytes]]:
    """
    The fields of a multipart body: the content of each part named by its
    C{Content-Disposition: form-data}, under that name.
    """
    parts = _Parts()
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.logger = _SILENT
        for piece in _Framing(boundary).pieces(chunks):
            parser.write(piece)
    except FormParserError as error:
        raise FormError(400, f"malformed multipart body: {error}") from None
    # The framing has seen the close delimiter; python-multipart must agree.
    if not parts.ended:
        raise FormError(400, "multipart body without its close delimiter")
    return parts.fields


class _Framing:
    """
    The delimiters and part heads of a multipart body, found with
    C{bytes.find} before python-multipart parses the bytes.

    python-multipart finds a delimiter with C{bytes.find} too, but checks
    what follows it, skips transport padding and the blanks before a header
    value one byte at a time in Python, and spends a few microseconds on
    each part and header line.  This pass bounds all of those:
    L{MAX_FIELDS} parts, L{_MAX_PART_HEAD} bytes a head, L{_MAX_HEAD_BLANKS}
    blanks and L{_MAX_HEADER_LINES} lines in all heads, and no delimiter
    followed by anything but transport padding and a line end, or C{--}.
    """

    def __init__(self, boundary: bytes) -> None:
        # Every delimiter but the first has the line end before it; the
        # body is scanned as if the first had one too.
        self._delimiter = b"\r\n--" + boundary
        self._parts = 0
        self._blanks = 0
        self._header_lines = 0
        self._started = False

    def pieces(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """
        The body from its first delimiter (a preamble is dropped) through
        its close delimiter, in pieces that end in part data, never inside a
        part head; what follows the close delimiter is not read.

        @raise FormError: the framing is malformed, or over a limit.
        """
        text = b"\r\n"
        for chunk in chunks:
            text += chunk
            start, end, closed = self._scan(text, final=False)
            if end > start:
                yield text[start:end]
            if closed:
                return
            text = text[end:]
        start, end, closed = self._scan(text, final=True)
        if not closed:
            raise FormError(400, "multipart body without its close delimiter")
        yield text[start:end]

    def _scan(self, text: bytes, final: bool) -> tuple[int, int, bool]:
        """
        Walk the delimiters of C{text}, which begins in a preamble or in
        part data.  Returns where in C{text} the bytes to parse begin and
        end (what is after the end is scanned again with the next chunk),
        and whether the close delimiter ends them.
        """
        start = 0
        position = 0
        while (found := text.find(self._delimiter, position)) != -1:
            if not self._started:
                self._started = True
                start = found
            data = self._after_delimiter(text, found, final)
            if data is None:
                return start, found, False
            if data == _CLOSED:
                return start, found + len(self._delimiter) + 2, True
            position = data
        # A delimiter may begin in the last bytes and end in the next chunk.
        end = max(position, len(text) - len(self._delimiter) + 1)
        return (start if self._started else end), end, False

    def _after_delimiter(self, text: bytes, found: int, final: bool) -> int | None:
        """
        Where the part data after the delimiter at C{found} begins;
        L{_CLOSED} after the close delimiter; C{None} if C{text} ends too
        soon to say.
        """
        line = found + len(self._delimiter)
        if text.startswith(b"--", line):
            return _CLOSED
        limit = line + _MAX_PART_HEAD
        line_end = text.find(b"\r\n", line, limit)
        if line_end != -1 and text[line:line_end].strip(b" \t"):
            raise FormError(400, "a multipart delimiter followed by data")
        head_end = -1 if line_end == -1 else text.find(b"\r\n\r\n", line_end, limit)
        if head_end == -1:
            if final or len(text) >= limit:
                raise FormError(
                    400, "a multipart body cut short, or a part head too long"
                )
            return None
        self._parts += 1
        if self._parts > MAX_FIELDS:
            raise FormError(413, f"more than {MAX_FIELDS} multipart parts")
        self._blanks += line_end - line + text.count(b" ", line_end, head_end)
        if self._blanks > _MAX_HEAD_BLANKS:
            raise FormError(400, "too many blanks in multipart part heads")
        self._header_lines += text.count(b"\r\n", line_end + 2, head_end + 2)
        if self._header_lines > _MAX_HEADER_LINES:
            raise FormError(400, "too many header lines in multipart part heads")
        return head_end + 4


#: The part headers that matter; the first of each counts.
_PART_HEADERS: Final = frozenset({b"content-disposition", b"content-type"})


class _Parts:
    """
    The named parts of a multipart body, as python-multipart's callbacks
    report them.
    """

    def __init__(self) -> None:
        self.fields: dict[bytes, list[bytes]] = {}
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name: bytes | None = None
        self._content: list[bytes] = []

    def callbacks(self) -> MultipartCallbacks:
        """
        What python-multipart's parser calls as it goes.
        """
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._content = []

    # A header comes in pieces if a write ends inside it.
    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = self._header_name.lower()
        if name in _PART_HEADERS:
            self._headers.setdefault(name, self._header_value)
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        content_type = self._headers.get(b"content-type", b"")
        if content_type.lstrip(b" \t").lower().startswith(b"multipart/"):
            raise FormError(400, "a nested multipart body")
        self._name = _part_name(self._headers.get(b"content-disposition", b""))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name is not None:
            self._content.append(data[start:end])

    def _part_end(self) -> None:
        if self._name is not None:
            self.fields.setdefault(self._name, []).append(b"".join(self._content))

    def _end(self) -> None:
        self.ended = True


def _part_name(disposition: bytes) -> bytes | None:
    """
    The field name of a part with this C{Content-Disposition}: its C{name}
    parameter, if it is C{form-data} and the name is not empty.
    """
    parsed = _header_parameters(disposition, _DISPOSITION_TYPE)
    if parsed is None or parsed[0] != b"form-data":
        return None
    return parsed[1].get(b"name") or None
