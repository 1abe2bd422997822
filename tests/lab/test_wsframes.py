"""The websocket frame scanner of the verbatim relay (hpcgate.lab.proxy.wsframes)."""

from __future__ import annotations

import os
import struct

import pytest

from hpcgate.lab.proxy.wsframes import FrameScanner, MessageTooBig, close_frame


def frame(payload: bytes, opcode: int = 2, fin: bool = True, masked: bool = False) -> bytes:
    """One RFC 6455 frame (the payload is sent as is; a mask key is only carried)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    return head + (os.urandom(4) if masked else b"") + payload


def feed_split(scanner: FrameScanner, data: bytes, cut: int) -> None:
    scanner.feed(data[:cut])
    scanner.feed(memoryview(data)[cut:])


STREAM = b"".join(
    [
        frame(b"hello", opcode=1, masked=True),
        frame(b"x" * 126, masked=True),  # 16-bit length
        frame(b"y" * 70000),  # 64-bit length
        frame(b"a" * 40, fin=False, masked=True),  # fragmented message...
        frame(b"ping", opcode=9, masked=True),  # ...with a control frame in between
        frame(b"b" * 40, opcode=0, masked=True),
        frame(b"", opcode=0),
        frame(struct.pack("!H", 4002) + b"bye", opcode=8),
    ]
)


def test_every_split_point_keeps_the_frame_boundaries():
    for cut in range(len(STREAM) + 1):
        scanner = FrameScanner(1 << 20)
        feed_split(scanner, STREAM, cut)
        assert scanner.at_boundary, cut


def test_byte_by_byte():
    scanner = FrameScanner(1 << 20)
    for i in range(len(STREAM)):
        scanner.feed(STREAM[i : i + 1])
        assert scanner.at_boundary == (STREAM[: i + 1] in _prefixes())
    assert scanner.at_boundary


def _prefixes() -> set[bytes]:
    out, pos = set(), 0
    for part in (
        frame(b"hello", opcode=1, masked=True),
        frame(b"x" * 126, masked=True),
        frame(b"y" * 70000),
        frame(b"a" * 40, fin=False, masked=True),
        frame(b"ping", opcode=9, masked=True),
        frame(b"b" * 40, opcode=0, masked=True),
        frame(b"", opcode=0),
        frame(struct.pack("!H", 4002) + b"bye", opcode=8),
    ):
        pos += len(part)
        out.add(STREAM[:pos])
    return out


def test_fragments_add_up_to_the_limit():
    ok = frame(b"a" * 60, fin=False, masked=True) + frame(b"b" * 40, opcode=0, masked=True)
    too_big = frame(b"a" * 60, fin=False, masked=True) + frame(b"b" * 41, opcode=0, masked=True)
    for cut in range(len(ok) + 1):
        scanner = FrameScanner(100)
        feed_split(scanner, ok + frame(b"c" * 100), cut)  # a new message starts from 0
        assert scanner.at_boundary
    second = len(frame(b"a" * 60, fin=False, masked=True))
    for cut in range(len(too_big) + 1):
        scanner = FrameScanner(100)
        with pytest.raises(MessageTooBig) as err:
            feed_split(scanner, too_big, cut)
        # offset: where the offending header starts in the chunk that completed it
        assert err.value.offset == (second if cut >= second + 6 else second - cut), cut


def test_single_frame_over_the_limit_is_seen_from_its_header():
    data = frame(b"z" * 70000, masked=True)
    for cut in range(15):
        scanner = FrameScanner(65536)
        with pytest.raises(MessageTooBig) as err:
            scanner.feed(data[:cut])  # a header alone, or part of it
            scanner.feed(data[cut:14])
        assert err.value.size == 70000
        assert err.value.offset == (0 if cut in (0, 14) else -cut)


def test_control_frames_do_not_count_towards_the_message():
    scanner = FrameScanner(100)
    scanner.feed(frame(b"a" * 90, fin=False) + frame(b"p" * 90, opcode=10) + frame(b"b" * 10, opcode=0))
    assert scanner.at_boundary


def test_close_frames():
    assert close_frame(1009, masked=False) == b"\x88\x02\x03\xf1"
    masked = close_frame(1009, masked=True)
    assert masked[:2] == b"\x88\x82" and len(masked) == 8
    key = masked[2:6]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(masked[6:])) == b"\x03\xf1"
    scanner = FrameScanner(10)
    scanner.feed(masked)
    assert scanner.at_boundary
