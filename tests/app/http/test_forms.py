"""
Form bodies: urlencoded fields as twisted.web's C{parse_qs} has them,
multipart fields as their encoder put them, and L{FormError} (400 or 413),
never anything else, for what cannot be taken.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.web.http import parse_qs

from app.http.forms import (
    _MAX_HEAD_BLANKS,
    _MAX_HEADER_LINES,
    _MAX_PARAMETERS,
    _MAX_PART_HEAD,
    MAX_FIELDS,
    FormError,
    form_fields,
)

URLENCODED = b"application/x-www-form-urlencoded"
BOUNDARY = b"----formdata7MA4YWxkTrZu0gW"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY


class Trickle(io.BytesIO):
    """
    A body that gives at most C{most} bytes a read, as a raw stream may.
    """

    def __init__(self, data: bytes, most: int) -> None:
        super().__init__(data)
        self.most = most

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.most:
            size = self.most
        return super().read(size)


def fields(content_type: bytes | None, body: bytes) -> dict[bytes, list[bytes]]:
    return form_fields(content_type, io.BytesIO(body))


def refusal(content_type: bytes, body: bytes) -> int:
    """
    The status of the L{FormError} that C{body} raises.
    """
    with pytest.raises(FormError) as raised:
        fields(content_type, body)
    return raised.value.code


# urlencoded

_URLENCODED_PIECES = st.sampled_from(
    [*b"& ; = + % %41 %3d %3D %2B %zz %4 %e2%82%ac a B 0 f Q".split(b" "), b" "]
)
urlencoded_bodies = st.lists(
    st.one_of(_URLENCODED_PIECES, st.binary(max_size=4)), max_size=60
).map(b"".join)


@given(urlencoded_bodies)
def test_urlencoded_as_parse_qs(body: bytes) -> None:
    assert fields(URLENCODED, body) == parse_qs(body, 1)


@given(urlencoded_bodies, st.integers(min_value=1, max_value=9))
def test_urlencoded_read_in_short_pieces(body: bytes, most: int) -> None:
    assert form_fields(URLENCODED, Trickle(body, most)) == parse_qs(body, 1)


def test_urlencoded_values_longer_than_a_read() -> None:
    value = b"%41=%%e2%82%ac+%3" * 20_000
    body = b"a=" + value + b"&b=" + value[::-1] + b";" + value
    assert len(body) > 4 * 64 * 1024
    assert fields(URLENCODED, body) == parse_qs(body, 1)


def test_urlencoded_type_with_parameters_and_any_case() -> None:
    content_type = b" Application/X-WWW-Form-URLEncoded ; charset=UTF-8"
    assert fields(content_type, b"a=1&a=2") == {b"a": [b"1", b"2"]}


def test_urlencoded_most_fields() -> None:
    body = b"&".join(b"f%d=%d" % (index, index) for index in range(MAX_FIELDS))
    taken = fields(URLENCODED, body)
    assert len(taken) == MAX_FIELDS
    assert taken == parse_qs(body, 1)


@pytest.mark.parametrize("separator", [b"&", b";"])
def test_urlencoded_too_many_fields(separator: bytes) -> None:
    body = separator.join([b"a="] * (MAX_FIELDS + 1))
    assert refusal(URLENCODED, body) == 413


def test_urlencoded_items_without_equals_are_not_fields() -> None:
    body = b"&".join([b"a=1", b"", b"flag", b";;"] * MAX_FIELDS)
    assert fields(URLENCODED, body) == {b"a": [b"1"] * MAX_FIELDS}


# multipart


def quoted(text: str) -> bytes:
    """
    C{text} as an RFC 9110 quoted string, in UTF-8.
    """
    return b'"' + text.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def disposition(name: str, filename: str | None = None) -> bytes:
    line = b"Content-Disposition: form-data; name=" + quoted(name)
    if filename is not None:
        line += b"; filename=" + quoted(filename)
    return line


def multipart(
    parts: Sequence[tuple[Sequence[bytes], bytes]], boundary: bytes = BOUNDARY
) -> bytes:
    """
    A multipart body of C{parts}, each its header lines and its content.
    """
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n"
        body += b"".join(header + b"\r\n" for header in headers)
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def form(items: Sequence[tuple[str, bytes]], boundary: bytes = BOUNDARY) -> bytes:
    return multipart([([disposition(name)], value) for name, value in items], boundary)


def expected(items: Sequence[tuple[str, bytes]]) -> dict[bytes, list[bytes]]:
    result: dict[bytes, list[bytes]] = {}
    for name, value in items:
        result.setdefault(name.encode(), []).append(value)
    return result


LONGEST_BOUNDARY = b"x" * 69 + b"9"
boundaries = st.sampled_from([BOUNDARY, b"B", b"a b", LONGEST_BOUNDARY])
names = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1)


def values(boundary: bytes) -> st.SearchStrategy[bytes]:
    """
    Contents full of line ends and of what a delimiter begins with.
    """
    near_misses = [b"\r\n", b"\r", b"\n", b"--", b"-", b"\r\n--", b"\r\n\r\n"]
    near_misses += [b"\r\n--" + boundary[:-1], b"--" + boundary + b"-", boundary]
    pieces = st.one_of(st.sampled_from(near_misses), st.binary(max_size=8))
    return st.lists(pieces, max_size=12).map(b"".join)


@st.composite
def forms(
    draw: st.DrawFn,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    boundary = draw(boundaries)
    items = draw(st.lists(st.tuples(names, values(boundary)), max_size=8))
    for _, value in items:
        # A delimiter cannot be part of a value (RFC 2046 §5.1.1), nor can
        # a value begin a line with the boundary.
        assume(b"\r\n--" + boundary not in b"\r\n" + value)
    return boundary, items


@given(forms(), st.sampled_from([None, 1, 2, 7, 64]))
def test_multipart_round_trip(
    drawn: tuple[bytes, list[tuple[str, bytes]]], most: int | None
) -> None:
    boundary, items = drawn
    body = form(items, boundary)
    content = io.BytesIO(body) if most is None else Trickle(body, most)
    taken = form_fields(b'multipart/form-data; boundary="' + boundary + b'"', content)
    assert taken == expected(items)


def test_multipart_values_longer_than_a_read() -> None:
    near_miss = b"\r\n--" + BOUNDARY[:-1] + b"\r\n\r\n"
    items = [("big", near_miss * 20_000), ("small", b"x"), ("big", b"\r" * 70_000)]
    assert fields(MULTIPART, form(items)) == expected(items)


def test_multipart_file_parts() -> None:
    content = bytes(range(256)) * 3 + b"\r\n--not the boundary\r\n"
    body = multipart(
        [
            ([disposition("upload", "a b.bin"), b"Content-Type: image/png"], content),
            ([disposition("note")], b"hello"),
            ([disposition("upload", "empty.txt")], b""),
        ]
    )
    assert fields(MULTIPART, body) == {
        b"upload": [content, b""],
        b"note": [b"hello"],
    }


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [b"Content-Type: text/plain"],
        [b"Content-Disposition: form-data"],
        [b'Content-Disposition: form-data; name=""'],
        [b'Content-Disposition: form-data; filename="a.txt"'],
        [b'Content-Disposition: attachment; name="a"'],
        [b"Content-Disposition: form-data; name*=utf-8''a\""],
        [b"Content-Disposition: "],
    ],
)
def test_multipart_parts_without_a_name_are_skipped(headers: list[bytes]) -> None:
    body = multipart([(headers, b"lost"), ([disposition("kept")], b"value")])
    assert fields(MULTIPART, body) == {b"kept": [b"value"]}


def test_multipart_disposition_parameters() -> None:
    headers = [
        b'content-disposition:FORM-DATA ;NAME = "a \\"b\\" \\\\c" ; name="second"',
        b"Content-Disposition: form-data; name=ignored",
    ]
    body = multipart(
        [(headers, b"1"), ([b"Content-Disposition: form-data;name=t"], b"2")]
    )
    assert fields(MULTIPART, body) == {b'a "b" \\c': [b"1"], b"t": [b"2"]}


def test_multipart_parameters_past_the_most_are_not_read() -> None:
    def named_after(count: int) -> bytes:
        return b"Content-Disposition: form-data" + b"; x=y" * count + b"; name=n"

    body = multipart(
        [
            ([named_after(_MAX_PARAMETERS - 1)], b"read"),
            ([named_after(_MAX_PARAMETERS)], b"not read"),
        ]
    )
    assert fields(MULTIPART, body) == {b"n": [b"read"]}


def test_multipart_name_bytes_are_kept() -> None:
    body = multipart([([disposition("caf\u00e9 \u20ac")], b"1")])
    assert fields(MULTIPART, body) == {"caf\u00e9 \u20ac".encode(): [b"1"]}


@pytest.mark.parametrize(
    "content_type",
    [
        b"Multipart/Form-Data; Boundary=" + BOUNDARY,
        b'multipart/form-data ; charset=utf-8 ; boundary = "' + BOUNDARY + b'" ',
        b'multipart/form-data; boundary="' + BOUNDARY.replace(b"-", b"\\-") + b'"',
        b"multipart/form-data;boundary=" + BOUNDARY + b";boundary=other",
    ],
)
def test_multipart_type_parameters(content_type: bytes) -> None:
    assert fields(content_type, form([("a", b"1")])) == {b"a": [b"1"]}


def test_multipart_preamble_epilogue_and_padding_are_ignored() -> None:
    body = form([("a", b"1"), ("b", b"2")])
    body = body.replace(
        b"\r\n--" + BOUNDARY + b"\r\n", b"\r\n--" + BOUNDARY + b" \t \r\n"
    )
    body = (
        b"preamble --" + BOUNDARY[:-1] + b"\r\n" + body + b"epilogue\r\n--" + BOUNDARY
    )
    assert fields(MULTIPART, body) == {b"a": [b"1"], b"b": [b"2"]}


def test_multipart_without_parts() -> None:
    assert fields(MULTIPART, b"--" + BOUNDARY + b"--\r\n") == {}


def test_multipart_most_parts() -> None:
    items = [(f"f{index % 7}", b"%d" % index) for index in range(MAX_FIELDS)]
    assert fields(MULTIPART, form(items)) == expected(items)


def test_multipart_too_many_parts() -> None:
    body = multipart([([], b"")] * MAX_FIELDS + [([disposition("a")], b"1")])
    assert refusal(MULTIPART, body) == 413


def test_multipart_too_many_empty_parts_in_a_long_body() -> None:
    body = (b"--" + BOUNDARY + b"\r\n\r\n\r\n") * 100_000
    assert refusal(MULTIPART, body) == 413


@pytest.mark.parametrize(
    "content_type",
    [b"multipart/mixed; boundary=inner", b" MULTIPART/alternative", b"multipart/x"],
)
def test_multipart_nested(content_type: bytes) -> None:
    inner = b"--inner\r\n" + disposition("x") + b"\r\n\r\n1\r\n--inner--"
    headers = [disposition("a"), b"Content-Type: " + content_type]
    body = multipart([([disposition("before")], b"0"), (headers, inner)])
    assert refusal(MULTIPART, body) == 400


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (b"multipart/form-data", BOUNDARY),
        (b"multipart/form-data; charset=utf-8", BOUNDARY),
        (b"multipart/form-data; boundary", BOUNDARY),
        (b'multipart/form-data; boundary=""', b""),
        (b"multipart/form-data; boundary=" + b"x" * 71, b"x" * 71),
        (b"multipart/form-data; boundary=" + b"x" * 69 + b"#", b"x" * 69 + b"#"),
        (b'multipart/form-data; boundary="ends in space "', b"ends in space "),
        (b'multipart/form-data; boundary="a\\\\b"', b"a\\b"),
    ],
)
def test_multipart_without_a_usable_boundary(
    content_type: bytes, boundary: bytes
) -> None:
    assert refusal(content_type, form([("a", b"1")], boundary)) == 400


def test_multipart_longest_boundary() -> None:
    content_type = b"multipart/form-data; boundary=" + LONGEST_BOUNDARY
    assert fields(content_type, form([("a", b"1")], LONGEST_BOUNDARY)) == {b"a": [b"1"]}


def test_multipart_cut_short() -> None:
    body = form([("a", b"1\r\n--" + BOUNDARY[:5]), ("b", b"")])
    complete = body.index(b"\r\n--" + BOUNDARY + b"--") + len(BOUNDARY) + 6
    for length in range(complete):
        assert refusal(MULTIPART, body[:length]) == 400, body[:length]
    assert fields(MULTIPART, body[:complete]) == {b"a": [b"1\r\n------f"], b"b": [b""]}


@pytest.mark.parametrize(
    "after",
    [b"X\r\n", b"-\r\n", b"-X", b" X\r\n", b"\r\r\n", b"\n\r\n"],
)
def test_multipart_delimiter_followed_by_data(after: bytes) -> None:
    body = form([("a", b"1" + b"\r\n--" + BOUNDARY + after + b"2"), ("b", b"3")])
    assert refusal(MULTIPART, body) == 400


def test_multipart_malformed_head() -> None:
    body = multipart([([b"No colon here"], b"1")])
    assert refusal(MULTIPART, body) == 400


def test_multipart_longest_part_head() -> None:
    headers = [b"X-Long: " + b"a" * 4000] * 3
    assert len(b"\r\n".join(headers)) < _MAX_PART_HEAD
    body = multipart([([disposition("a"), *headers], b"1")])
    assert fields(MULTIPART, body) == {b"a": [b"1"]}


def test_multipart_part_head_too_long() -> None:
    headers = [disposition("a")] + [b"X-Long: " + b"a" * 4100] * 4
    assert len(b"\r\n".join(headers)) > _MAX_PART_HEAD
    assert refusal(MULTIPART, multipart([(headers, b"1")])) == 400


def test_multipart_too_many_blanks_in_heads() -> None:
    blanks = b"X-Blank:" + b" " * 1000 + b"x"
    count = _MAX_HEAD_BLANKS // 1000 // 2 + 1
    body = multipart([([disposition("a"), blanks, blanks], b"1")] * count)
    assert refusal(MULTIPART, body) == 400
    assert fields(MULTIPART, multipart([([disposition("a"), blanks], b"1")])) == {
        b"a": [b"1"]
    }


def test_multipart_too_many_header_lines() -> None:
    headers = [disposition("a"), b"Content-Type: text/plain", b"X-A: 1", b"X-B: 2"]
    parts = [(headers, b"1")] * (_MAX_HEADER_LINES // len(headers) + 1)
    assert refusal(MULTIPART, multipart(parts)) == 400
    assert len(fields(MULTIPART, multipart(parts[: MAX_FIELDS // 2]))[b"a"]) == 500


def test_multipart_errors_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert refusal(MULTIPART, multipart([([b"No colon"], b"1")])) == 400
        assert (
            refusal(MULTIPART, form([("a", b"1")]).replace(b"\r\n", b" \r\n", 1)) == 400
        )
    assert caplog.records == []


# any body


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        b"",
        b"text/plain",
        b"application/json",
        b"multipart/mixed; boundary=" + BOUNDARY,
        b"multipart/form-datax; boundary=" + BOUNDARY,
        b"application/x-www-form-urlencoded-not",
        b"application/x-www-form-urlencoded/x",
        b"/x-www-form-urlencoded",
        b"; application/x-www-form-urlencoded",
        b'"multipart/form-data"; boundary=' + BOUNDARY,
        b"multipart/form-data boundary=" + BOUNDARY,
    ],
)
def test_other_content_types_have_no_fields(content_type: bytes | None) -> None:
    body = io.BytesIO(form([("a", b"1")]) + b"&b=2")
    body.seek(5)
    assert form_fields(content_type, body) == {}
    assert body.tell() == 5


@pytest.mark.parametrize(
    ("content_type", "body", "outcome"),
    [
        (URLENCODED, b"a=1&b=2", {b"a": [b"1"], b"b": [b"2"]}),
        (URLENCODED, b"a=&" * (MAX_FIELDS + 1), 413),
        (MULTIPART, form([("a", b"1")]), {b"a": [b"1"]}),
        (MULTIPART, form([("a", b"1")])[:-9], 400),
        (b"multipart/form-data", form([("a", b"1")]), 400),
        (MULTIPART, multipart([([disposition("a")], b"1")] * (MAX_FIELDS + 1)), 413),
    ],
)
def test_body_read_from_the_start_and_left_there(
    content_type: bytes, body: bytes, outcome: dict[bytes, list[bytes]] | int
) -> None:
    content = io.BytesIO(body)
    content.seek(0, io.SEEK_END)
    if isinstance(outcome, int):
        with pytest.raises(FormError) as raised:
            form_fields(content_type, content)
        assert raised.value.code == outcome
    else:
        assert form_fields(content_type, content) == outcome
    assert content.tell() == 0


def _taken_or_refused(content_type: bytes, body: bytes) -> None:
    try:
        taken = fields(content_type, body)
    except FormError as error:
        assert error.code in (400, 413)
    else:
        assert all(
            isinstance(name, bytes)
            and all(isinstance(value, bytes) for value in values)
            for name, values in taken.items()
        )


@given(st.binary(max_size=400), st.sampled_from([URLENCODED, MULTIPART]))
def test_any_bytes_are_taken_or_refused(body: bytes, content_type: bytes) -> None:
    _taken_or_refused(content_type, body)


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=6),
            st.sampled_from(
                [
                    b"--" + BOUNDARY,
                    b"\r\n",
                    b"--",
                    b"\r\n\r\n",
                    b"--" + BOUNDARY + b"--",
                    b"Content-Type: multipart/mixed",
                    disposition("a"),
                    b": ",
                    b" ",
                    b"\t",
                ]
            ),
        ),
        max_size=30,
    ).map(b"".join)
)
def test_any_multipart_like_bytes_are_taken_or_refused(body: bytes) -> None:
    _taken_or_refused(MULTIPART, body)


@given(
    forms(),
    st.lists(
        st.tuples(st.integers(min_value=0), st.integers(0, 3), st.binary(max_size=3)),
        min_size=1,
        max_size=4,
    ),
)
def test_damaged_multipart_is_taken_or_refused(
    drawn: tuple[bytes, list[tuple[str, bytes]]],
    damage: list[tuple[int, int, bytes]],
) -> None:
    boundary, items = drawn
    body = form(items, boundary)
    for position, removed, inserted in damage:
        position %= len(body) + 1
        body = body[:position] + inserted + body[position + removed :]
    _taken_or_refused(b"multipart/form-data; boundary=" + boundary, body)
