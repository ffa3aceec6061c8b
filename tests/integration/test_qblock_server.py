"""The server's Q-Block (RFC 9177) over real DTLS, seen from a hand-driven peer: the probe
answer, Q-Block2 bursts and the recovery of missing blocks, Q-Block1 bodies with 2.31 and
4.08, and RFC 7959 §2.6 (a notification in the block size its registration asked for)."""

from __future__ import annotations

import asyncio
import time

import cbor2

from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber
from gateway.coap.qblock import (
    CONTENT_FORMAT_MISSING_BLOCKS,
    MAX_PAYLOADS,
    REQUEST_TAG,
    decode_missing_blocks,
)
from gateway.coap.udp_codec import decode_udp, encode_udp
from gateway.dots.codec import cbor_to_json
from tests.integration.test_bad_input import Peer, connect
from tests.integration.test_server_role import mitigation, server  # noqa: F401 - fixture

Q1, Q2 = OptionNumber.Q_BLOCK1, OptionNumber.Q_BLOCK2


async def collect(peer: Peer, tokens: set[bytes], want: int, timeout: float = 6.0
                  ) -> list[CoapMessage]:
    """Responses for ``tokens`` until ``want`` arrived or ``timeout`` passed."""
    out: list[CoapMessage] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            message = decode_udp(await asyncio.wait_for(peer.replies.get(), left))
        except TimeoutError:
            break
        if message.token in tokens and message.code >= 64:
            out.append(message)
    return out


def send(peer: Peer, mtype: MessageType, code: int, mid: int, token: bytes,
         options: tuple[tuple[int, bytes], ...], payload: bytes = b"") -> None:
    peer.conn.send(encode_udp(CoapMessage(mtype, code, mid, token, options, payload)))


async def install(peer: Peer, cuid: str, count: int, per: int = 30) -> str:
    base = f".well-known/dots/mitigate/cuid={cuid}"
    for mid in range(1, count + 1):
        prefixes = [f"10.{mid}.{i}.0/24" for i in range(per)]
        assert (await peer.ask(3, f"{base}/mid={mid}", mitigation(*prefixes))).code == 0x41
    return base


async def test_probes_are_answered_with_q_block2(server) -> None:  # noqa: F811
    """libcoap probes with GET /.well-known/core and Q-Block2 SZX 0, go-dots with an
    empty path: both get 2.05 in Q-Block2 blocks (before: 4.04, and the peer fell back to
    Block2)."""
    running, pki, _cuid = server
    peer = await connect(running, pki)
    try:
        probe = CoapMessage.request(1, (".well-known", "core"))
        send(peer, MessageType.CON, 1, 7, b"p1",
             (*probe.options, (Q2, Block(0, False, 0).encode())))
        # libcoap's probe (NUM 0 without M, 16-byte blocks) wants one datagram back
        blocks = await collect(peer, {b"p1"}, 2, timeout=1.5)
        assert len(blocks) == 1 and blocks[0].code == 0x45
        assert Block.decode(blocks[0].option(Q2) or b"") == Block(0, True, 0)
        assert blocks[0].payload == b"</.well-known/do"
        send(peer, MessageType.CON, 1, 8, b"p2", ((Q2, Block(0, False, 6).encode()),))
        (answer,) = await collect(peer, {b"p2"}, 1)
        assert answer.code == 0x45 and Block.decode(answer.option(Q2) or b"").more is False
        # an empty-path GET without Q-Block2 is still 4.04
        assert (await peer.ask(1, "")).code == 0x84
    finally:
        peer.conn.close()


async def test_q_block2_burst_then_missing_blocks_and_continue(server) -> None:  # noqa: F811
    running, pki, cuid = server
    peer = await connect(running, pki)
    try:
        base = await install(peer, cuid, 20, per=60)
        path = CoapMessage.request(1, tuple(base.split("/"))).options
        send(peer, MessageType.NON, 1, 100, b"g0", (*path, (Q2, Block(0, True, 6).encode())))
        first = await collect(peer, {b"g0"}, MAX_PAYLOADS)
        nums = sorted(Block.decode(m.option(Q2) or b"").num for m in first)
        assert nums == list(range(MAX_PAYLOADS))  # one burst of MAX_PAYLOADS, NON
        assert {m.mtype for m in first} == {MessageType.NON}
        etag = first[0].etag
        assert etag and all(m.etag == etag for m in first)
        total = first[0].size2
        assert total is not None and total > MAX_PAYLOADS * 1024
        count = -(-total // 1024)
        blocks = {Block.decode(m.option(Q2) or b"").num: m.payload for m in first}
        # blocks 3 and 7 "lost": ask for them, and for the next set ("continue", M set)
        del blocks[3], blocks[7]
        send(peer, MessageType.NON, 1, 101, b"g1",
             (*path, (Q2, Block(3, False, 6).encode()), (Q2, Block(7, False, 6).encode())))
        send(peer, MessageType.NON, 1, 102, b"g2", (*path, (Q2, Block(10, True, 6).encode())))
        more = await collect(peer, {b"g1", b"g2"}, 2 + min(MAX_PAYLOADS, count - 10))
        for m in more:
            assert m.etag == etag  # the same representation throughout
            blocks[Block.decode(m.option(Q2) or b"").num] = m.payload
        assert sorted(blocks) == list(range(min(count, 20)))
        rest = 20
        while rest < count:
            send(peer, MessageType.NON, 1, 103 + rest, b"g%d" % rest,
                 (*path, (Q2, Block(rest, True, 6).encode())))
            for m in await collect(peer, {b"g%d" % rest}, min(MAX_PAYLOADS, count - rest)):
                blocks[Block.decode(m.option(Q2) or b"").num] = m.payload
            rest += MAX_PAYLOADS
        body = b"".join(blocks[n] for n in range(count))
        assert len(body) == total
        listed = cbor_to_json(body)["ietf-dots-signal-channel:mitigation-scope"]["scope"]
        assert [s["mid"] for s in listed] == list(range(1, 21))
        # Q-Block2 in GETs does not mark the session: a plain GET (our client in Block2
        # mode, an Observe registration) still gets Block2 (the bench found such GETs cut
        # to their first Q-Block2 block when it did).
        send(peer, MessageType.CON, 1, 898, b"p0", path)
        (b0,) = await collect(peer, {b"p0"}, 1)
        assert b0.block2 is not None and b0.option(Q2) is None
        # After a probe (libcoap), a GET without Q-Block2 is answered in Q-Block2; one with
        # Block2 in Block2.
        probe = CoapMessage.request(1, (".well-known", "core")).options
        send(peer, MessageType.CON, 1, 899, b"pr", (*probe, (Q2, Block(0, False, 0).encode())))
        await collect(peer, {b"pr"}, 1)
        send(peer, MessageType.CON, 1, 900, b"pl", path)
        plain = await collect(peer, {b"pl"}, MAX_PAYLOADS)
        assert len(plain) == MAX_PAYLOADS and all(m.option(Q2) for m in plain)
        send(peer, MessageType.CON, 1, 901, b"b2", (*path, (OptionNumber.BLOCK2, b"\x06")))
        (b2,) = await collect(peer, {b"b2"}, 1)
        assert b2.block2 is not None and b2.option(Q2) is None
    finally:
        peer.conn.close()


async def test_q_block1_put_with_continue_and_missing_blocks(server) -> None:  # noqa: F811
    running, pki, cuid = server
    peer = await connect(running, pki)
    try:
        prefixes = [f"10.{i // 250}.{i % 250}.0/24" for i in range(1000)]
        body = mitigation(*prefixes)
        parts = [body[i:i + 1024] for i in range(0, len(body), 1024)]
        assert len(parts) > MAX_PAYLOADS
        path = CoapMessage.request(3, (*f".well-known/dots/mitigate/cuid={cuid}".split("/"),
                                       "mid=77"), content_format=271).options
        tag = (REQUEST_TAG, b"\x01\x02")

        def block(num: int, mid: int) -> bytes:
            token = b"b%d" % mid
            more = num < len(parts) - 1
            extra = ((OptionNumber.SIZE1, len(body).to_bytes(2, "big")),) if num == 0 else ()
            send(peer, MessageType.NON, 3, mid, token,
                 (*path, (Q1, Block(num, more, 6).encode()), tag, *extra), parts[num])
            return token

        # first set with block 4 lost: the set's last block draws 4.08 naming 4
        tokens = {block(n, 200 + n) for n in range(MAX_PAYLOADS) if n != 4}
        (answer,) = await collect(peer, tokens, 1)
        assert answer.code == 0x88  # 4.08
        assert answer.content_format == CONTENT_FORMAT_MISSING_BLOCKS
        assert decode_missing_blocks(answer.payload) == (4,)
        # the missing block again: the set is whole, 2.31 Continue
        (answer,) = await collect(peer, {block(4, 300)}, 1)
        assert answer.code == 0x5F and answer.option(Q1) is not None
        tokens = {block(n, 400 + n) for n in range(MAX_PAYLOADS, len(parts))}
        final = await collect(peer, tokens, 1)
        assert final and final[0].code == 0x41  # 2.01 Created, from the whole body
        got = await peer.ask(1, f".well-known/dots/mitigate/cuid={cuid}/mid=77")
        assert got.code == 0x45 and (got.size2 or 0) > len(body)  # all 1000 prefixes
    finally:
        peer.conn.close()


async def test_notification_uses_the_registered_block_size(server) -> None:  # noqa: F811
    """RFC 7959 §2.6: a registration that asked for 64-byte blocks gets its notifications
    in 64-byte blocks (before: whole, or 1024-byte blocks)."""
    running, pki, cuid = server
    peer = await connect(running, pki)
    try:
        base = await install(peer, cuid, 1)
        request = CoapMessage.request(1, tuple(base.split("/")), observe=0,
                                      block2=Block(0, False, 2))
        send(peer, MessageType.CON, 1, 500, b"ob", request.options)
        (first,) = await collect(peer, {b"ob"}, 1)
        assert first.observe is not None and first.block2 is not None
        assert first.block2.szx == 2
        assert (await peer.ask(3, f"{base}/mid=2", mitigation("10.2.0.0/24"))).code == 0x41
        (note,) = await collect(peer, {b"ob"}, 1, timeout=10)
        assert note.observe is not None
        assert note.block2 is not None and note.block2.szx == 2 and note.block2.more
        assert len(note.payload) == 64
    finally:
        peer.conn.close()


def test_mitigation_helper_is_cbor() -> None:
    assert cbor2.loads(mitigation("10.0.0.0/24"))
