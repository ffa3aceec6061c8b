"""One signal-channel session on the server side, and what it hands the core.

``SignalSession`` is what an endpoint (DtlsServer/TlsServer) drives: bytes in go to its CoAP
message layer and the role's pump; what the layer has to send leaves through the
connection. ``_dots_request`` turns a CoAP request into the core's ``DotsRequest``;
``_transmission`` the session's negotiated parameters into the message layer's.

Asyncio glue only, like the rest of the role; must not import the role at run time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.coap.errors import BadOptionError
from gateway.coap.layer import MessageLayer, outgoing
from gateway.coap.message import CoapMessage
from gateway.coap.options import OptionNumber
from gateway.coap.reliability import TransmissionParameters
from gateway.coap.tcp_layer import TcpLayer
from gateway.dots.codes import Method
from gateway.dots.message import DotsRequest, Requester
from gateway.dots.server import ServerSession
from gateway.server.block1 import Block1Bodies
from gateway.server.blocks import BLOCK_SIZE, BlockSnapshots
from gateway.server.qblock import QBlockBodies

if TYPE_CHECKING:
    from gateway.server.observe import Observation
    from gateway.server.role import ServerRole

log = logging.getLogger(__name__)


@dataclass
class SignalSession:
    """One authenticated signal-channel session (DTLS or TLS) on the server side."""

    role: ServerRole
    conn: Any  # DtlsConnection or TlsConnection
    dots: ServerSession
    layer: MessageLayer | TcpLayer
    identity: str
    observations: dict[bytes, Observation] = field(default_factory=dict)
    heartbeat_tokens: set[bytes] = field(default_factory=set)
    next_notification_at: float = 0.0
    pending_notifications: set[bytes] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    closed: bool = False
    #: Whether the session arrived on an anycast address (its local address never changes;
    #: None until first asked).
    on_anycast: bool | None = None
    classified_by: Any = None
    #: The session parameters the message layer's transmission settings were made from.
    transmission_from: Any = None
    #: Representations of block-wise transfers under way (made on the first large answer).
    block_snapshots: BlockSnapshots | None = None
    #: Request bodies arriving in Q-Block1 blocks (RFC 9177).
    q_bodies: QBlockBodies = field(default_factory=QBlockBodies)
    #: Request bodies arriving in Block1 blocks (RFC 7959).
    block1_bodies: Block1Bodies = field(default_factory=Block1Bodies)
    #: The peer probed for Q-Block on this session (RFC 9177 §4.1): its large GET answers
    #: go in Q-Block2 even when a request carries none.
    q_block_peer: bool = False
    #: Datagrams (or stream chunks) waiting for saves to be durable, in order, each with the
    #: commit count it waits for (``ServerRole.send``).
    held: list[tuple[int, list[bytes]]] = field(default_factory=list)

    def block_payload(self, msg: CoapMessage, payload: bytes, now: float) -> bytes:
        """The representation to answer ``msg`` from: see ``BlockSnapshots``."""
        if self.block_snapshots is None:
            if len(payload) <= BLOCK_SIZE:
                return payload
            self.block_snapshots = BlockSnapshots()
        try:
            requested = msg.block2
            if requested is None:
                # Q-Block2: a request for later blocks of a transfer (missing ones, or the
                # next set) names a block past 0; they are cut from the same snapshot.
                requested = max(msg.q_block2, key=lambda b: b.num, default=None)
        except BadOptionError:
            requested = None
        resource = (msg.code, *msg.uri_path, *msg.uri_query)
        etag = msg.etag if msg.has_option(OptionNumber.Q_BLOCK2) else None
        return self.block_snapshots.representation(resource, requested, payload, now, etag)

    # --- SessionHandler ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        now = self.role.clock()
        self.layer.receive(data, now)
        self.role.pump(self, now)

    def connection_lost(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.layer.close()
        if self.timer is not None:
            self.timer.cancel()
        self.role.forget(self, reason)

    # --- outputs -----------------------------------------------------------------------------

    def flush(self) -> None:
        if self.closed:
            return
        chunks = outgoing(self.layer)
        if chunks:
            # Held by the role until the saves the chunks may depend on are durable.
            self.role.send(self, chunks)

    def transmit(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            try:
                self.conn.send(chunk)
            except Exception as exc:  # a session that cannot send is finished
                log.info("send failed peer=%s: %s", self.conn.remote, exc)
                self.conn.close(f"send failed: {exc}")
                return


def _transmission(params: Any) -> TransmissionParameters:
    # Sessions on default parameters share one SessionParameters object: convert it once.
    last = _last_transmission
    if last and last[0] is params:
        return last[1]
    made = TransmissionParameters(ack_timeout=float(params.ack_timeout),
                                  ack_random_factor=float(params.ack_random_factor),
                                  max_retransmit=int(params.max_retransmit))
    _last_transmission[:] = [params, made]
    return made


_last_transmission: list[Any] = []


def _dots_request(msg: CoapMessage, requester: Requester) -> DotsRequest:
    # An invalid Hop-Limit reads as None: only a gateway acts on it, and it checks the
    # option itself.
    o = msg.request_options()
    return DotsRequest(
        method=_method(msg.code),
        path=o.uri_path,
        query=o.uri_query,
        payload=msg.payload,
        content_format=o.content_format,
        observe=o.observe,
        if_match=o.if_match,
        requester=requester,
        hop_limit=o.hop_limit,
    )


def _method(code: int) -> Method:
    # A dictionary, not Method(code): the enum's call runs Python code on every request.
    return _METHODS.get(code, _POST)  # any other method code: 4.05 from the core


_METHODS = {int(m): m for m in Method}
_POST = Method.POST

