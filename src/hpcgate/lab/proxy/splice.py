"""Relay of a fixed-length response body in a worker thread, off the event loop.

For large downloads the bytes go app socket -> one reused buffer -> browser socket in
a worker thread that waits with ``poll(2)`` on both non-blocking sockets; the event
loop's own registrations for those sockets are left alone (the app connection's
reading is paused meanwhile). Memory stays flat: one ``BUFFER_SIZE`` buffer per relay.

Plain ``read``/``write`` replaced ``splice(2)`` here (the module keeps its name): on
loopback, where apps and SSH-tunnelled browsers are, the spliced pages cost more
than the copies they save (500 MiB-2 GiB downloads: splice 1.4-1.6 GiB/s and twice
the client's CPU; read/write 2.2-2.6 GiB/s; direct access 2.9-3.5 GiB/s).

Used only when: ``poll`` exists, the body length is known, the browser connection is
plain HTTP/1.1 (not TLS) and nothing is queued on it.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading

BUFFER_SIZE = 1 << 20
AVAILABLE = hasattr(select, "poll")


class SpliceError(Exception):
    """The relay stopped early: the app ended the body or the browser went away."""


def relay(src: int, dst: int, count: int, cancelled: threading.Event) -> None:
    """Move exactly ``count`` bytes from socket ``src`` to socket ``dst`` (blocking call).

    Raises :class:`SpliceError` if either side closes first or ``cancelled`` is set.
    """
    view = memoryview(bytearray(BUFFER_SIZE))
    start = end = 0  # view[start:end] is read from the app, not yet written
    poller = select.poll()
    while count or end > start:
        if cancelled.is_set():
            raise SpliceError("cancelled")
        progressed = False
        if count and end == 0:
            try:
                n = os.readv(src, [view[: min(count, BUFFER_SIZE)]])
            except BlockingIOError:
                n = -1
            except OSError as exc:
                raise SpliceError(f"app side: {exc}") from exc
            if n == 0:
                raise SpliceError("app closed the connection mid-body")
            if n > 0:
                count -= n
                end = n
                progressed = True
        if end > start:
            try:
                n = os.write(dst, view[start:end])
            except BlockingIOError:
                n = -1
            except OSError as exc:
                raise SpliceError(f"browser side: {exc}") from exc
            if n > 0:
                start += n
                if start == end:
                    start = end = 0
                progressed = True
        if not progressed:
            for fd in (src, dst):
                with contextlib.suppress(KeyError):
                    poller.unregister(fd)
            if count and end == 0:
                poller.register(src, select.POLLIN)
            if end > start:
                poller.register(dst, select.POLLOUT)
            events = poller.poll(500)
            for _fd, ev in events:
                if ev & (select.POLLERR | select.POLLNVAL):
                    raise SpliceError("socket error")
