"""Requests read off a client connection's bytes (httptools), with the front door's limits.

414 for a long target, 431 for a large head, a large header or too many headers, 400 for malformed heads and for
framing the router will not pass on (a Transfer-Encoding other than chunked, both it and Content-Length). A head's
size counts every byte received while it lasts, so a head trickled in small pieces is bounded too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from waiter.http1 import ENC, ERRORS, HEADER_NAMES, BadRequest, Request, RequestBody, header_name, malformed

if TYPE_CHECKING:
    from waiter.frontdoor import Limits


class RequestReader:
    """The httptools callback object of one connection: ``feed`` it bytes; each request whose head is complete goes
    to ``on_request`` (its body, if any, arrives into its ``RequestBody`` afterwards)."""

    def __init__(
        self,
        limits: Limits,
        on_request: Callable[[Request], None],
        pause_body: Callable[[bool], None],
        write_continue: Callable[[bytes], None],
        clock: Callable[[], float],
    ) -> None:
        self.limits = limits
        self._on_request = on_request
        self._pause_body, self._write_continue = pause_body, write_continue
        self._clock = clock
        self._parser = httptools.HttpRequestParser(self)
        self.parsing: Request | None = None  # the request being read: its head, or its body after the head
        self.in_head = False
        self.head_started = 0.0  # clock() when the unfinished head began
        self._head_bytes = self._fields_size = self._field_count = 0  # of an unfinished head

    def feed(self, data: bytes) -> bytes | None:
        """Parse ``data``. Returns the bytes after an upgrade request's head (the parser stops there; None
        otherwise); raises BadRequest for what breaks the limits or the protocol."""
        if self.in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return data[upgrade.args[0] :]
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                raise cause from None
            raise malformed(str(exc), self.in_head) from None
        if self.in_head and self._head_bytes > self.limits.max_head:
            raise BadRequest(431, f"The request head is larger than the limit of {self.limits.max_head} bytes.")
        return None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.parsing = Request()
        self.in_head, self._head_bytes, self._fields_size, self._field_count = True, 0, 0, 0
        self.head_started = self._clock()

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.url += url
        if len(req.url) > self.limits.max_url:
            raise BadRequest(414, f"The request target is longer than the limit of {self.limits.max_url} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        limits = self.limits
        size = len(name) + len(value)
        if size > limits.max_field:
            raise BadRequest(
                431, f"The header {name.decode(ENC, ERRORS)} is larger than the limit of {limits.max_field} bytes."
            )
        self._fields_size += size
        if self._fields_size > limits.max_head:
            raise BadRequest(431, f"The request head is larger than the limit of {limits.max_head} bytes.")
        self._field_count += 1
        if self._field_count > limits.max_headers:
            raise BadRequest(431, f"The request has more headers than the limit of {limits.max_headers}.")
        lname, waiter_name, special = HEADER_NAMES.get(name) or header_name(name)
        req.headers.append((name, value, lname))
        if waiter_name is not None:
            req.waiter.append((waiter_name, value.decode(ENC, ERRORS)))
        elif special:
            known = req.special.get(lname)
            if known is None:
                req.special[lname] = value
            elif lname == b"connection" or lname == b"transfer-encoding":
                req.special[lname] = known + b", " + value

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        parser = self._parser
        req.method = parser.get_method()
        req.http11 = parser.get_http_version() == "1.1"
        req.keep_alive = parser.should_keep_alive()
        special = req.special
        coding = special.get(b"transfer-encoding")
        chunked = coding is not None
        if coding is not None and coding.strip().lower() != b"chunked":
            # Any other coding would be passed on undone or framed wrongly: refused, as llhttp refuses it too.
            raise BadRequest(
                400,
                f"The request's Transfer-Encoding {coding.decode(ENC, ERRORS)!r} is not supported; only 'chunked' is.",
            )
        length = special.get(b"content-length")
        if length is not None:
            if chunked:
                raise BadRequest(400, "The request has both Content-Length and Transfer-Encoding; only one is allowed.")
            req.content_length = int(length)  # llhttp checked it is digits
        self.in_head = False
        if chunked or (req.content_length or 0) > 0:
            expect = special.get(b"expect", b"").lower() == b"100-continue"
            req.body = RequestBody(self._pause_body, self._write_continue, expect)
        if parser.should_upgrade():
            req.upgrade = True
            return  # handed on once the parser gives the bytes after the head (feed returns them)
        self._on_request(req)

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None and req.body is not None
        req.body.feed(body)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        if req.body is not None:
            req.body.finish()
        if not req.upgrade:
            self.parsing = None
