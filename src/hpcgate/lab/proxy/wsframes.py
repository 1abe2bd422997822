"""Just enough RFC 6455 framing for a proxy that relays websocket bytes verbatim.

The relay (``proxy._FrameRelay``) never unmasks, decodes or re-frames: it only follows
frame boundaries in each direction, to enforce the message-size limit and to know
where a close frame of its own may be inserted.

Contracts:

* :class:`FrameScanner` is fed one direction's bytes in order, in chunks split
  anywhere (also inside a header); it looks at headers only and skips payloads in
  O(1) per chunk.
* A message's size is the sum of its frames' payload lengths as sent (compressed
  size when permessage-deflate is in use); control frames count on their own.
* :exc:`MessageTooBig` is raised from the header that brings a message over the limit,
  before any of that frame's payload could have been passed on.
"""

from __future__ import annotations

import os

CLOSE_TOO_BIG = 1009


class MessageTooBig(Exception):
    """A message grew over the limit.

    ``offset`` is where, in the chunk just fed, the offending frame's header starts: the
    bytes before it end on a frame boundary and may still be passed on. Negative when
    the header began in an earlier chunk (its first bytes are already out).
    """

    def __init__(self, offset: int, size: int):
        super().__init__(f"websocket message of at least {size} bytes")
        self.offset = offset
        self.size = size


class FrameScanner:
    """Follows the frames of one direction of a websocket connection."""

    def __init__(self, max_message_size: int):
        self.limit = max_message_size
        self._head = bytearray()  # the current frame header, as far as seen
        self._need = 2  # its length: 2 until the second byte tells the rest
        self._start = 0  # where it starts in the current chunk (negative: earlier)
        self._skip = 0  # payload bytes of the current frame not yet seen
        self._message = 0  # payload bytes of the unfinished data message so far

    @property
    def at_boundary(self) -> bool:
        """True if everything fed so far ends exactly at the end of a frame."""
        return not self._head and not self._skip

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for the next ``data`` of the stream; raises :exc:`MessageTooBig`."""
        n = len(data)
        i = 0
        self._start = -len(self._head)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            if not self._head:
                self._start = i
            take = min(self._need - len(self._head), n - i)
            self._head += data[i : i + take]
            i += take
            if len(self._head) < self._need:
                continue  # the header goes on in the next chunk
            if self._need == 2:
                need = _header_size(self._head[1])
                if need > 2:
                    self._need = need
                    continue
            self._header_done()

    def _header_done(self) -> None:
        head = self._head
        fin, opcode, short = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x7F
        if short == 126:
            length = int.from_bytes(head[2:4], "big")
        elif short == 127:
            length = int.from_bytes(head[2:10], "big")
        else:
            length = short
        if opcode >= 8:  # control frames never belong to a data message
            size = length
        else:
            size = (self._message if opcode == 0 else 0) + length
            self._message = 0 if fin else size
        if size > self.limit:
            raise MessageTooBig(self._start, size)
        self._skip = length
        head.clear()
        self._need = 2


def _header_size(second_byte: int) -> int:
    """Header length in bytes, given the byte with the mask bit and 7-bit length."""
    short = second_byte & 0x7F
    extended = 2 if short == 126 else 8 if short == 127 else 0
    return 2 + extended + (4 if second_byte & 0x80 else 0)


def close_frame(code: int, masked: bool) -> bytes:
    """A close frame with ``code`` and no reason; ``masked`` for client-to-server."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x88, len(payload))) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x80 | len(payload))) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
