"""Q-Block1 and Q-Block2 (RFC 9177): robust block-wise transfer over NON, sans-I/O.

RFC 9177 moves a body larger than one datagram in NON messages sent in bursts of at most
``MAX_PAYLOADS`` blocks; the receiver asks for what is missing instead of the sender
waiting for one acknowledgement per block as RFC 7959 does. Under loss (a network under
attack) that costs one round trip per burst rather than per block.

This module holds the parts both directions share: the RFC's default parameters (§7.2),
the missing-blocks payload of 4.08 (§5, a CBOR Sequence of block numbers), which blocks a
Q-Block2 request asks for (§4.4, with libcoap's reading of the M bit: NUM with M set asks
for the rest of that NUM's set of MAX_PAYLOADS, so NUM 0 or a set start with M set is the
whole set, "continue"; without M, that one block: libcoap's probe, NUM 0 without M, wants
one datagram back), cutting a block out of a representation, and
``Reassembly``, the receiving side's record of the blocks of one body. The role glue sends
and times; nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from gateway.coap.errors import CoapFormatError
from gateway.coap.message import CoapMessage
from gateway.coap.options import Block, OptionNumber, encode_uint

#: RFC 9177 §7.2 defaults. NON_TIMEOUT is ACK_TIMEOUT (RFC 7252's 2 s); the receiver waits
#: NON_RECEIVE_TIMEOUT (2 x NON_TIMEOUT) for a missing block before asking for it again,
#: and gives up on a partial body after NON_PARTIAL_TIMEOUT.
MAX_PAYLOADS = 10
NON_TIMEOUT = 2.0
NON_RECEIVE_TIMEOUT = 2 * NON_TIMEOUT
NON_MAX_RETRANSMIT = 4
NON_PARTIAL_TIMEOUT = 247.0
#: application/missing-blocks+cbor-seq (RFC 9177 §12.3): the payload of a 4.08 answer.
CONTENT_FORMAT_MISSING_BLOCKS = 272
#: Request-Tag (RFC 9175 §3.2): names one body among several sent to the same resource.
REQUEST_TAG = 292
#: Most blocks one body may have here (x 1024 bytes): bounds what a peer can make us hold.
MAX_BODY_BLOCKS = 1024
#: Block numbers named in one 4.08 (the rest are asked for again in the next round); keeps
#: the answer inside one datagram: at most 3 bytes each.
MAX_MISSING_LISTED = 256


def encode_missing_blocks(numbers: Iterable[int]) -> bytes:
    """The 4.08 payload (RFC 9177 §5): block numbers as a CBOR Sequence of unsigned
    integers, ascending, without duplicates."""
    out = bytearray()
    for num in sorted(set(numbers))[:MAX_MISSING_LISTED]:
        if not 0 <= num < 1 << 20:
            raise ValueError(f"block number out of range: {num}")
        if num < 24:
            out.append(num)
        elif num < 0x100:
            out += bytes((0x18, num))
        elif num < 0x10000:
            out += b"\x19" + num.to_bytes(2, "big")
        else:
            out += b"\x1a" + num.to_bytes(4, "big")
    return bytes(out)


def decode_missing_blocks(data: bytes) -> tuple[int, ...]:
    """The block numbers of a 4.08 payload; ``CoapFormatError`` for anything that is not a
    CBOR Sequence of unsigned integers that fit a block number (the sender's data is
    suspect, so nothing is guessed)."""
    numbers: list[int] = []
    i = 0
    while i < len(data):
        head = data[i]
        if head >> 5 != 0:
            raise CoapFormatError(f"missing-blocks item of major type {head >> 5}")
        info = head & 0x1F
        i += 1
        if info < 24:
            value = info
        elif info in (24, 25, 26):
            width = 1 << (info - 24)
            if i + width > len(data):
                raise CoapFormatError("missing-blocks item cut short")
            value = int.from_bytes(data[i:i + width], "big")
            i += width
        else:
            raise CoapFormatError("missing-blocks number too large for a block number")
        if value >= 1 << 20:
            raise CoapFormatError(f"missing block number out of range: {value}")
        numbers.append(value)
        if len(numbers) > MAX_BODY_BLOCKS:
            raise CoapFormatError("more missing blocks than a body may have")
    return tuple(sorted(set(numbers)))


def block_count(length: int, szx: int) -> int:
    """Blocks of size ``szx`` a body of ``length`` bytes takes (an empty body: one)."""
    size = 1 << (min(szx, 6) + 4)
    return max(1, -(-length // size))


def set_end(num: int, total: int | None = None) -> int:
    """The last block number of the MAX_PAYLOADS set holding ``num`` (within ``total``)."""
    last = num - num % MAX_PAYLOADS + MAX_PAYLOADS - 1
    return last if total is None else min(last, total - 1)


def requested_blocks(requested: Sequence[Block], total: int) -> list[int]:
    """Block numbers a Q-Block2 request asks for, ascending, at most MAX_PAYLOADS of them
    (RFC 9177 §4.4; see the module docstring for the M bit)."""
    wanted: set[int] = set()
    for block in requested:
        if block.num >= total:
            continue
        if block.more:
            wanted.update(range(block.num, set_end(block.num, total) + 1))
        else:
            wanted.add(block.num)
    return sorted(wanted)[:MAX_PAYLOADS]


def body_etag(payload: bytes) -> bytes:
    """The ETag every block of one representation carries (RFC 9177 §4.4 requires one)."""
    return hashlib.sha256(payload).digest()[:8]


def cut_block(response: CoapMessage, payload: bytes, num: int, szx: int,
              option: int = OptionNumber.Q_BLOCK2) -> CoapMessage:
    """Block ``num`` of ``payload`` as a copy of ``response`` carrying ``option`` (Q-Block2
    by default), the ETag of the whole and, on every block, Size2 with its length (lets the
    receiver know the block count from any block that arrives)."""
    size = 1 << (min(szx, 6) + 4)
    start = num * size
    more = start + size < len(payload)
    drop = {OptionNumber.ETAG, OptionNumber.BLOCK2, OptionNumber.SIZE2, option}
    if num:
        drop.add(OptionNumber.OBSERVE)  # RFC 9177 §4.4: only the first block carries it
    options = [o for o in response.options if o[0] not in drop]
    options += [(OptionNumber.ETAG, body_etag(payload)), (option, Block(num, more, szx).encode()),
                (OptionNumber.SIZE2, encode_uint(len(payload)))]
    return CoapMessage(None, response.code, 0, response.token, tuple(options),
                       payload[start:start + size])


class Reassembly:
    """The blocks received so far of one body (either direction).

    The block size is the first block's; a block of another size, one past the end a
    previous block announced (M unset), or one beyond ``MAX_BODY_BLOCKS`` is refused
    (``add`` returns False) rather than guessed at.
    """

    __slots__ = ("_blocks", "last_at", "started_at", "szx", "total")

    def __init__(self, szx: int, now: float = 0.0) -> None:
        self.szx = szx
        self.total: int | None = None  # known once the block without M arrived
        self._blocks: dict[int, bytes] = {}
        self.started_at = now
        self.last_at = now

    @property
    def size(self) -> int:
        return 1 << (min(self.szx, 6) + 4)

    @property
    def received(self) -> int:
        return len(self._blocks)

    @property
    def highest(self) -> int:
        return max(self._blocks, default=-1)

    @property
    def complete(self) -> bool:
        return self.total is not None and len(self._blocks) == self.total

    def has(self, num: int) -> bool:
        return num in self._blocks

    def add(self, block: Block, data: bytes, now: float = 0.0) -> bool:
        """Record one block; False when it does not fit the body (see the class)."""
        if block.szx != self.szx or block.num >= MAX_BODY_BLOCKS:
            return False
        if block.more and len(data) != self.size:
            return False
        if not block.more and len(data) > self.size:
            return False
        if self.total is not None and block.num >= self.total:
            return False
        if not block.more:
            if any(num > block.num for num in self._blocks):
                return False
            self.total = block.num + 1
        self._blocks[block.num] = data
        self.last_at = now
        return True

    def missing(self, upto: int | None = None) -> list[int]:
        """Block numbers not received, up to ``upto`` (default: the last known block, or
        the highest received when the end is not known yet)."""
        if upto is None:
            upto = self.total - 1 if self.total is not None else self.highest
        return [num for num in range(upto + 1) if num not in self._blocks]

    def body(self) -> bytes:
        if not self.complete:
            raise ValueError("body incomplete")
        return b"".join(self._blocks[num] for num in range(len(self._blocks)))
