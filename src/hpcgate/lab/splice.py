"""Zero-copy relay of a fixed-length response body with ``splice(2)``.

For large downloads the bytes go app socket -> pipe -> browser socket inside the kernel;
the server never copies them into Python objects, so throughput stays close to direct
access and memory stays flat. The relay runs in a worker thread that waits with
``poll(2)`` on both non-blocking sockets; the event loop's own registrations for those
sockets are left alone (the app connection's reading is paused meanwhile).

Used only when: Linux ``os.splice`` exists, the body length is known, the browser
connection is plain HTTP/1.1 (not TLS) and nothing is queued on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import threading

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
AVAILABLE = hasattr(os, "splice")


class SpliceError(Exception):
    """The relay stopped early: the app ended the body or the browser went away."""


def relay(src: int, dst: int, count: int, cancelled: threading.Event) -> None:
    """Move exactly ``count`` bytes from socket ``src`` to socket ``dst`` (blocking call).

    Raises :class:`SpliceError` if either side closes first or ``cancelled`` is set.
    """
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # stays 64 KiB above fs.pipe-max-size
            fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        in_pipe = 0
        poller = select.poll()
        while count or in_pipe:
            if cancelled.is_set():
                raise SpliceError("cancelled")
            progressed = False
            if count:
                try:
                    n = os.splice(src, wfd, min(count, PIPE_SIZE), flags=flags)
                except BlockingIOError:
                    n = -1
                except OSError as exc:
                    raise SpliceError(f"app side: {exc}") from exc
                if n == 0:
                    raise SpliceError("app closed the connection mid-body")
                if n > 0:
                    count -= n
                    in_pipe += n
                    progressed = True
            if in_pipe:
                try:
                    n = os.splice(rfd, dst, in_pipe, flags=flags)
                except BlockingIOError:
                    n = -1
                except OSError as exc:
                    raise SpliceError(f"browser side: {exc}") from exc
                if n > 0:
                    in_pipe -= n
                    progressed = True
            if not progressed:
                for fd in (src, dst):
                    with contextlib.suppress(KeyError):
                        poller.unregister(fd)
                if count:
                    poller.register(src, select.POLLIN)
                if in_pipe:
                    poller.register(dst, select.POLLOUT)
                events = poller.poll(500)
                for _fd, ev in events:
                    if ev & (select.POLLERR | select.POLLNVAL):
                        raise SpliceError("socket error")
    finally:
        os.close(rfd)
        os.close(wfd)
