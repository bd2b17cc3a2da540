"""One write per HTTP response: uvicorn's httptools protocol with its status line and headers held
until the body follows.

uvicorn writes a response's status line and headers on ``http.response.start`` and the body on
``http.response.body``: two ``transport.write`` calls, so two ``write`` syscalls, and with
``TCP_NODELAY`` two TCP segments, the first of which wakes the client for 200 bytes. On loopback the
sender's syscall also does the receiver's TCP work. A py-spy profile of the event-loop thread (one
client sending 8-row binary requests to the small model) put the header's own ``write`` at 7% of the
loop's busy samples, as much as the 131 KB body's. ``CoalescingTransport`` holds a small write
made when nothing is held and sends it together with the next write (``writelines``: one ``writev``
on uvloop, no copy of the body), or at the end of the loop turn if no write follows (a response
without a body, a streamed one whose next chunk is not ready): nothing waits longer than one turn.
"""

from __future__ import annotations

# A write this small, made when nothing is held, is a status line and headers (or a tiny body that
# may have a sibling coming); anything larger goes out at once.
HOLD_BYTES = 16 << 10


class CoalescingTransport:
    """Wraps a transport; every attribute but ``write``/``writelines``/``close``/``write_eof`` is the
    wrapped transport's own (flow control, ``get_extra_info``, ``is_closing``, ``abort``)."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport, loop):
        self._transport = transport
        self._loop = loop
        self._held = None

    def write(self, data) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif len(data) <= HOLD_BYTES and not self._transport.is_closing():
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()  # a held response goes out before the FIN, as it would have unheld
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def coalescing_httptools_protocol():
    """uvicorn's ``HttpToolsProtocol`` whose transport is a ``CoalescingTransport`` (a class to pass
    as ``uvicorn.Config(http=...)``)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(CoalescingTransport(transport, self.loop))

    return CoalescingHttpToolsProtocol
