"""A DOTS client living in the lab's client namespace, driven over stdin/stdout.

Started once with ``ip netns exec <client-ns> python -m tests.lab.anycast_probe PKI_DIR``
(Python start-up and imports are paid once, not per probe). Each stdin line is a JSON
command, each stdout line the JSON answer:

    {"op": "probe", "transport": "udp"|"tcp", "host": H, "timeout": s}
        a NEW session (connect_dtls / connect_tls), one PUT /.well-known/dots/hb, close:
        {"ok": true, "code": "2.04", "local": "10.46.9.2:40000", "ms": 12.5}
        or {"ok": false, "error": "...", "kind": "refused"|"unreachable"|"timeout"|"other"}
    {"op": "open", ...same...}   keep the session: answers also carry "id"
    {"op": "hb", "id": N, "timeout": s}   one more heartbeat on an open session
    {"op": "close", "id": N}

DTLS uses a connected UDP socket (asyncio's remote_addr), so a reply from any source but
the anycast address the client targeted is never delivered: a 2.04 proves the reply came
from the anycast address. TLS is TCP, connected by nature.
"""

from __future__ import annotations

import asyncio
import errno
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.coap.codes import MessageType, format_code
from gateway.coap.events import ResponseReceived
from gateway.coap.message import CoapMessage
from gateway.coap.tcp_layer import TcpLayer
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.transport.dtls_client import connect_dtls
from gateway.transport.tls_context import ClientContext, ClientCredentials, Kind
from gateway.transport.tls_stream import connect_tls

PORT = 4646
HB_BODY = bytes.fromhex("a11831a11833f5")  # heartbeat {peer-hb-status: true}
HB_PATH = (".well-known", "dots", "hb")
SERVER_NAME = "localhost"


def hb_request() -> CoapMessage:
    return CoapMessage.request(3, HB_PATH, content_format=271, payload=HB_BODY)  # PUT


class Session:
    """One DTLS or TLS session and its heartbeat exchange."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.conn: Any = None
        self.layer = TcpLayer() if transport == "tcp" else None
        self.mid = 0

    async def connect(self, pki: Path, host: str, timeout: float) -> None:
        kind = Kind.DTLS if self.transport == "udp" else Kind.TLS
        ctx = ClientContext(kind, ClientCredentials(pki / "client.pem", pki / "client.key",
                                                    pki / "ca.pem"))
        connect = connect_dtls if self.transport == "udp" else connect_tls
        self.conn = await connect(host, PORT, ctx, self.replies.put_nowait,
                                  server_name=SERVER_NAME, timeout=timeout)

    async def heartbeat(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        if self.layer is None:
            self.mid = (self.mid + 1) % 65536
            msg = hb_request()
            token = self.mid.to_bytes(2, "big")
            self.conn.send(encode_udp(CoapMessage(MessageType.CON, msg.code, self.mid, token,
                                                  msg.options, msg.payload)))
            while True:
                reply = decode_udp(await self._next(deadline))
                if reply.token == token and reply.mtype in (MessageType.ACK, MessageType.CON,
                                                            MessageType.NON):
                    return format_code(reply.code)
        token = self.layer.send_request(hb_request(), time.monotonic())
        self.conn.send(self.layer.data_to_send())
        while True:
            self.layer.receive(await self._next(deadline), time.monotonic())
            out = self.layer.data_to_send()
            if out:
                self.conn.send(out)
            while (event := self.layer.next_event()) is not None:
                if isinstance(event, ResponseReceived) and event.token == token:
                    return format_code(event.message.code)

    async def _next(self, deadline: float) -> bytes:
        return await asyncio.wait_for(self.replies.get(), max(0.0, deadline - time.monotonic()))

    @property
    def local(self) -> str:
        host, port = self.conn.transport.get_extra_info("sockname")[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def classify(exc: BaseException) -> str:
    """refused: something at the address said no (ICMP port unreachable, RST): the failure
    a premature close while announced would cause. unreachable: no route (withdrawn)."""
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED or "refused" in text:
        return "refused"
    if isinstance(exc, ConnectionResetError) or "reset" in text:
        return "refused"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH) or "unreachable" in text:
        return "unreachable"
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return "timeout"
    return "other"


async def main(pki: Path) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sessions: dict[int, Session] = {}
    next_id = 0
    while line := await reader.readline():
        cmd = json.loads(line)
        started = time.monotonic()
        answer: dict[str, Any] = {}
        session: Session | None = None
        try:
            if cmd["op"] in ("probe", "open"):
                session = Session(cmd["transport"])
                await session.connect(pki, cmd["host"], cmd.get("timeout", 1.0))
                answer["local"] = session.local
                answer["code"] = await session.heartbeat(cmd.get("timeout", 1.0))
                if cmd["op"] == "open":
                    next_id += 1
                    sessions[next_id] = session
                    answer["id"] = next_id
                    session = None
            elif cmd["op"] == "hb":
                answer["code"] = await sessions[cmd["id"]].heartbeat(cmd.get("timeout", 1.0))
            elif cmd["op"] == "close":
                sessions.pop(cmd["id"]).close()
            answer["ok"] = answer.get("code", "2.04") == "2.04"
        except Exception as exc:  # every failure is an answer, the helper goes on
            answer.update(ok=False, error=f"{type(exc).__name__}: {exc}", kind=classify(exc))
        finally:
            if session is not None:
                session.close()
        answer["ms"] = round(1000 * (time.monotonic() - started), 1)
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for session in sessions.values():
        session.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
