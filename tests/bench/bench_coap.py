"""Timing of our CoAP codec and message layer (not a test; prints numbers, never fails).

Run: ``.venv/bin/python tests/bench/bench_coap.py [--compare-aiocoap]``. The message is a
typical DOTS request: 10 options (Uri-Host, five Uri-Path segments, Content-Format,
Uri-Query, Accept, Hop-Limit) and a 50-byte CBOR-like payload. Each figure is the best of
five runs, in microseconds of CPU per operation.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

from gateway.coap import (
    CoapMessage,
    MessageLayer,
    MessageType,
    RequestReceived,
    TcpFramer,
    decode_tcp,
    decode_udp,
    encode_tcp,
    encode_udp,
)

PATH = (".well-known", "dots", "mitigate", "cuid=dz6pHjaADkaFTbjr0JGBpw", "mid=123")


def typical_message() -> CoapMessage:
    msg = CoapMessage.request(3, PATH, query=("c=n",), content_format=271, accept=271,
                              hop_limit=16, uri_host="dots.example.com",
                              payload=bytes(range(50)), token=b"\x8b\x3e\x11\x02",
                              mtype=MessageType.NON)
    assert len(msg.options) == 10
    return CoapMessage(msg.mtype, msg.code, 0x1234, msg.token, msg.options, msg.payload)


def best_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--number", type=int, default=20_000)
    parser.add_argument("--compare-aiocoap", action="store_true",
                        help="also time aiocoap's Message.encode/decode (if installed)")
    args = parser.parse_args()
    n = args.number
    msg = typical_message()
    udp = encode_udp(msg)
    tcp = encode_tcp(msg)
    rows = [
        ("encode_udp", best_us(lambda: encode_udp(msg), n)),
        ("decode_udp", best_us(lambda: decode_udp(udp), n)),
        ("encode_udp + decode_udp", best_us(lambda: decode_udp(encode_udp(msg)), n)),
        ("encode_tcp", best_us(lambda: encode_tcp(msg), n)),
        ("decode_tcp", best_us(lambda: decode_tcp(tcp), n)),
        ("TcpFramer.feed (1 frame)", best_us(lambda: TcpFramer().feed(tcp), n)),
        ("accessors (uri_path, content_format)",
         best_us(lambda: (msg.uri_path, msg.content_format), n)),
    ]

    # Server side of one NON exchange through the message layer: receive, answer, flush.
    server = MessageLayer(random=lambda: 0.0, initial_mid=0)
    datagrams = [encode_udp(CoapMessage(MessageType.NON, 3, mid, msg.token, msg.options,
                                        msg.payload)) for mid in range(0x10000)]
    counter = [0]

    def exchange() -> None:  # a new message ID each time, so no duplicate shortcut
        counter[0] += 1
        server.receive(datagrams[counter[0] & 0xFFFF], 0.0)
        event = server.next_event()
        assert isinstance(event, RequestReceived)
        server.send_response(event.key, event.message.response(68), 0.0)
        server.datagrams_to_send()

    rows.append(("layer: NON request in, response out", best_us(exchange, n // 4)))

    if args.compare_aiocoap:
        try:
            from aiocoap import Message
        except ImportError:
            print("aiocoap not installed; skipping the comparison", file=sys.stderr)
        else:
            theirs = Message.decode(udp)
            from aiocoap.message import Direction

            theirs.direction = Direction.OUTGOING
            rows.append(("aiocoap Message.encode", best_us(theirs.encode, n)))
            rows.append(("aiocoap Message.decode", best_us(lambda: Message.decode(udp), n)))

    print(f"typical DOTS message: {len(msg.options)} options, {len(msg.payload)}-byte payload, "
          f"{len(udp)} bytes over UDP, {len(tcp)} over TCP")
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"  {name:<{width}}  {us:7.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
