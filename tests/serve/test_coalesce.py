"""CoalescingTransport on real socket transports (asyncio and uvloop): a response's header and body
leave in one write, in order; a lone small write leaves within the loop turn; close() sends what is
held before the FIN. And the server itself answers through it."""

import asyncio
import socket

import pytest

from ln_deploy.serve.coalesce import HOLD_BYTES, CoalescingTransport


class Recording:
    """The real transport, with its write calls counted."""

    def __init__(self, transport):
        self.transport, self.calls = transport, []

    def write(self, data):
        self.calls.append(("write", len(data)))
        self.transport.write(data)

    def writelines(self, chunks):
        chunks = list(chunks)
        self.calls.append(("writelines", [len(c) for c in chunks]))
        self.transport.writelines(chunks)

    def __getattr__(self, name):
        return getattr(self.transport, name)


def _loops():
    yield pytest.param(asyncio.new_event_loop, id="asyncio")
    try:
        import uvloop
    except ImportError:
        return
    yield pytest.param(uvloop.new_event_loop, id="uvloop")


def _run_on(new_loop, main):
    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def _pair(loop):
    ours, peer = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    peer.setblocking(False)
    rec = Recording(transport)
    return CoalescingTransport(rec, loop), rec, peer


async def _read_all(loop, peer, n):
    got = b""
    while len(got) < n:
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.parametrize("new_loop", list(_loops()))
def test_header_and_body_leave_in_one_write_in_order(new_loop):
    async def main():
        loop = asyncio.get_running_loop()
        t, rec, peer = await _pair(loop)
        header, body = b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n", bytes(range(256)) * 782
        body = body[:200000]
        t.write(header)
        t.write(body)
        assert rec.calls == [("writelines", [len(header), len(body)])]
        assert await _read_all(loop, peer, len(header) + len(body)) == header + body
        t.close()
        peer.close()

    _run_on(new_loop, main)


@pytest.mark.parametrize("new_loop", list(_loops()))
def test_a_lone_small_write_leaves_within_the_turn_and_close_flushes(new_loop):
    async def main():
        loop = asyncio.get_running_loop()
        t, rec, peer = await _pair(loop)
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert rec.calls == []  # held ...
        await asyncio.sleep(0)
        assert rec.calls == [("write", 27)]  # ... for one turn only
        assert await _read_all(loop, peer, 27) == b"HTTP/1.1 204 No Content\r\n\r\n"
        big = b"x" * (HOLD_BYTES + 1)
        t.write(big)  # larger than a header: not held
        assert rec.calls[-1] == ("write", len(big))
        assert len(await _read_all(loop, peer, len(big))) == len(big)
        t.write(b"last")
        t.close()  # held bytes go out before the FIN
        assert await _read_all(loop, peer, 5) == b"last"
        assert await loop.sock_recv(peer, 10) == b""
        peer.close()

    _run_on(new_loop, main)


def test_the_server_uses_it():
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from ln_deploy.serve.server import _http_protocol

    proto = _http_protocol()
    assert issubclass(proto, HttpToolsProtocol) and proto.__name__ == "CoalescingHttpToolsProtocol"
