"""A small HTTP/1.1 response reader on asyncio streams, for one request per connection.

Every read is bounded: the response head (status line and headers), the number of interim
1xx responses, the chunk-size digits and the body (``max_body`` bytes, and whether there was
more). Anything that is not an HTTP/1.x response certok can read raises MalformedResponse;
the connection is closed after one response, so trailers and keep-alive are never needed.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

# RFC 9110 §15.4: the redirects a CA follows (Let's Encrypt: 301, 302, 307, 308).
REDIRECT_STATUSES = frozenset({301, 302, 307, 308})
# The response head (status line and headers) a redirect or a key authorization needs is a few
# hundred bytes; this bounds what a hostile server can make certok buffer.
MAX_HEAD_BYTES = 16 * 1024
_MAX_HEADERS = 100
_MAX_INTERIM_RESPONSES = 5
_MAX_CHUNK_SIZE_DIGITS = 16
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class MalformedResponse(Exception):
    """The peer's bytes are not an HTTP/1.x response certok can read."""


@dataclass(frozen=True)
class Response:
    status: int
    location: str | None
    body: bytes
    truncated: bool


async def read_response(reader: asyncio.StreamReader, max_body: int) -> Response:
    status, headers = await read_final_head(reader)
    locations = headers.get("location")
    location = locations[0] if locations else None
    if not has_body_worth_reading(status):
        # A redirect's body is never looked at; the connection is closed unread.
        return Response(status, location, b"", False)
    body, truncated = await read_body(reader, headers, max_body)
    return Response(status, location, body, truncated)


def has_body_worth_reading(status: int) -> bool:
    """False for a redirect (its body is never looked at) and for 204/304 (they have none)."""
    return status not in REDIRECT_STATUSES and status not in (204, 304)


async def read_final_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    """The status and headers (lower-case names) of the first non-1xx response."""
    for _ in range(_MAX_INTERIM_RESPONSES + 1):
        status, headers = await _read_head(reader)
        # 1xx responses are interim (RFC 9110 §15.2); the real one follows.
        if status >= 200:
            return status, headers
    raise MalformedResponse(f"more than {_MAX_INTERIM_RESPONSES} interim 1xx responses")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    budget = MAX_HEAD_BYTES
    status_line = await _read_line(reader, budget)
    if status_line is None:
        raise MalformedResponse("the connection closed before a status line")
    budget -= len(status_line)
    matched = _STATUS_LINE.fullmatch(status_line.rstrip(b"\r\n"))
    if matched is None:
        raise MalformedResponse(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    headers: dict[str, list[str]] = {}
    count = 0
    while True:
        line = await _read_line(reader, budget)
        if line is None:
            raise MalformedResponse("the connection closed inside the headers")
        budget -= len(line)
        line = line.rstrip(b"\r\n")
        if not line:
            return int(matched.group(1)), headers
        count += 1
        if count > _MAX_HEADERS:
            raise MalformedResponse(f"more than {_MAX_HEADERS} header fields")
        name, colon, value = line.partition(b":")
        # RFC 9112 §5: no whitespace inside or before the colon; obsolete folding is refused.
        if not colon or not _TOKEN.fullmatch(name):
            raise MalformedResponse(f"bad header line {line[:60]!r}")
        text = value.strip(b" \t").decode("utf-8", "surrogateescape")
        headers.setdefault(name.decode("ascii").lower(), []).append(text)


async def _read_line(reader: asyncio.StreamReader, budget: int) -> bytes | None:
    """One line ending in LF, None at a clean EOF; MalformedResponse past the head's budget."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise MalformedResponse("the connection closed mid-line") from None
        return None
    except asyncio.LimitOverrunError:
        raise MalformedResponse(
            f"a response head line longer than {MAX_HEAD_BYTES} bytes"
        ) from None
    if len(line) > budget:
        raise MalformedResponse(f"a response head larger than {MAX_HEAD_BYTES} bytes")
    return line


async def read_body(
    reader: asyncio.StreamReader, headers: dict[str, list[str]], max_body: int
) -> tuple[bytes, bool]:
    """At most max_body bytes of the body, and whether there was more."""
    codings = [
        coding.strip().lower()
        for value in headers.get("transfer-encoding", [])
        for coding in value.split(",")
    ]
    if codings and codings[-1] == "chunked":
        return await _read_chunked(reader, max_body)
    lengths = {
        value.strip()
        for field_value in headers.get("content-length", [])
        for value in field_value.split(",")
    }
    if lengths and not codings:
        # RFC 9112 §6.3: differing lengths are an error, not a choice.
        if len(lengths) != 1 or not (length_text := lengths.pop()).isdigit():
            raise MalformedResponse("an invalid Content-Length")
        length = int(length_text)
        try:
            body = await reader.readexactly(min(length, max_body))
        except asyncio.IncompleteReadError:
            raise MalformedResponse("the body is shorter than its Content-Length") from None
        return body, length > max_body
    # No length: the body runs to the end of the connection (RFC 9112 §6.3, item 8).
    return await _read_until_close(reader, max_body)


async def _read_until_close(reader: asyncio.StreamReader, max_body: int) -> tuple[bytes, bool]:
    # One byte past the cap tells "exactly max_body" from "more than max_body".
    body = bytearray()
    while len(body) <= max_body:
        data = await reader.read(max_body + 1 - len(body))
        if not data:
            break
        body += data
    return bytes(body[:max_body]), len(body) > max_body


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        line = await _read_line(reader, MAX_HEAD_BYTES)
        if line is None:
            raise MalformedResponse("the connection closed inside a chunked body")
        size_text = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text) or len(size_text) > _MAX_CHUNK_SIZE_DIGITS:
            raise MalformedResponse(f"a bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            # Trailers are not needed: the connection is closed right after.
            return bytes(body), False
        wanted = min(size, max_body + 1 - len(body))
        try:
            body += await reader.readexactly(wanted)
        except asyncio.IncompleteReadError:
            raise MalformedResponse("the connection closed inside a chunk") from None
        if len(body) > max_body:
            return bytes(body[:max_body]), True
        if await _read_line(reader, MAX_HEAD_BYTES) not in (b"\r\n", b"\n"):
            raise MalformedResponse("a chunk not followed by CRLF")
