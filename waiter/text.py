"""Text a client sent that cannot go on as it is: bytes that were not UTF-8, lone surrogates, NUL characters.

Also what a failed call may tell a client of its cause (``failure_reason``): a few plain words, never an exception's
own text, which quotes library internals.

Request heads are decoded with surrogateescape (a byte that is not UTF-8 becomes \\udc80-\\udcff) and JSON may
spell a lone surrogate ("\\ud800"); neither can be encoded as UTF-8, so neither may reach a response, a file, a
command line or another system. Pure functions, no I/O.
"""

from __future__ import annotations

import os
import re

_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0:
        return "\\x00"
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` as valid UTF-8 without NUL: a byte that was not UTF-8 becomes ``\\xff``, a lone surrogate
    ``\\ud800``, NUL ``\\x00``."""
    return _UNSAFE.sub(_escape, text)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be handed to a process, a file or another system (None when it can)."""
    match = _UNSAFE.search(text)
    if match is None:
        return None
    at = match.start()
    if match.group() == "\x00":
        return f"contains a NUL character at position {at}"
    code = ord(match.group())
    what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate \\u{code:04x}"
    return f"is not valid UTF-8 ({what} at position {at})"


def failure_reason(error: BaseException) -> str:
    """Why a call failed, in a few plain words a client may read ("connection refused", "no answer in time"),
    for the end of a sentence of ours. Never the exception's text, which quotes library internals (``[Errno 111]
    Connect call failed ('127.0.0.1', 8080)``, ``Error 111 connecting to ...``): the log keeps that. The causes a
    library wrapped are searched for a timeout or an operating-system error number."""
    seen: BaseException | None = error
    for _ in range(8):  # a chain of causes, never a cycle
        if seen is None:
            break
        if isinstance(seen, TimeoutError):
            return "no answer in time"
        number = getattr(seen, "errno", None)
        if isinstance(number, int) and number > 0:
            words = os.strerror(number)  # "Connection refused": the end of our sentence, so lower case
            return words[:1].lower() + words[1:]
        seen = seen.__cause__ or seen.__context__
    return "the connection failed"
