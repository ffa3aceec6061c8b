"""DOTS request load over established DTLS sessions (NON requests, one outstanding per
session): mitigation create+delete cycles and heartbeats, for bench_dots.py and the gateway
benches. A module of its own so that the bench scripts import it without importing each
other (bench_dots.py runs a baseline with bench_relay_reconcile.py's helpers, which import
bench_gateway.py, which uses ``Runner``)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from gateway.coap.codes import MessageType
from gateway.coap.message import CoapMessage
from gateway.coap.udp_codec import decode_udp, encode_udp
from tests.bench.bench_transport import HB, HB_OPTIONS, Client, Generator

MITIGATION = bytes.fromhex("a101a10281a206816c3139322e302e322e302f32340e190e10")  # 192.0.2.0/24


@dataclass
class Cycles:
    """What one window of create+delete cycles measured (latencies in ms)."""

    seconds: float
    cycles: int = 0
    put_ms: list[float] = field(default_factory=list)
    delete_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    #: Requests unanswered for more than a second when the window closed (a NON request or
    #: answer lost: that session took no further part).
    stalled: int = 0

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0


class Runner:
    def __init__(self, gen: Generator, cuid: str) -> None:
        self.gen = gen
        self.cuid = cuid
        self.mid = 0

    def send(self, client: Client, code: int, path: tuple[str, ...], payload: bytes,
             options: tuple[tuple[int, bytes], ...], now: float) -> None:
        client.mid = (client.mid + 1) & 0xFFFF
        msg = CoapMessage(MessageType.NON, code, client.mid, client.mid.to_bytes(2, "big"),
                          options, payload)
        client.session.send(encode_udp(msg))
        client.sent_at = now
        self.gen._flush(client)

    def mitigation_cycles(self, clients: list[Client], seconds: float,
                          rate: float | None = None,
                          identities: list[tuple[str, bytes]] | None = None) -> Cycles:
        """Each session: PUT (create), then DELETE, then the next mid. With ``rate``, new
        cycles start at that many per second in total (open loop), to measure latency at
        a given load rather than under saturation. ``identities``: each session's cuid and
        mitigation body (a client of its own), else all share the Runner's cuid and
        ``MITIGATION`` (each PUT then supersedes the other sessions' requests)."""
        stage: dict[int, tuple[str, int]] = {}
        out = Cycles(seconds)
        who = {id(c): identities[i] if identities else (self.cuid, MITIGATION)
               for i, c in enumerate(clients)}

        def next_put(c: Client, now: float) -> None:
            self.mid += 1
            cuid, body = who[id(c)]
            path = (".well-known", "dots", "mitigate", f"cuid={cuid}", f"mid={self.mid}")
            opts = CoapMessage.request(3, path, content_format=271).options
            self.send(c, 3, path, body, opts, now)
            stage[id(c)] = ("put", self.mid)

        start = time.monotonic()
        idle: list[Client] = []
        next_slot = start
        if rate is None:
            for c in clients:
                next_put(c, start)
        else:
            idle = list(clients)
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            while rate is not None and idle and now >= next_slot:
                next_put(idle.pop(), now)
                next_slot += 1.0 / rate
            # Paced: sleep in select until the next slot (the generator's CPU then says
            # what it spent, not a busy wait; an answer still wakes it at once).
            wait = 0.05 if rate is None or not idle else min(0.05, max(0.0, next_slot - now))
            for client, records in self.gen.poll(wait):
                for record in records:
                    reply = decode_udp(record)
                    if reply.code < 64:
                        continue
                    now = time.monotonic()
                    kind, mid = stage[id(client)]
                    out.codes[f"{kind.upper()} {reply.code >> 5}.{reply.code & 31:02d}"] += 1
                    if kind == "put":
                        out.put_ms.append((now - client.sent_at) * 1000)
                        path = (".well-known", "dots", "mitigate",
                                f"cuid={who[id(client)][0]}", f"mid={mid}")
                        self.send(client, 4, path, b"", CoapMessage.request(4, path).options,
                                  now)
                        stage[id(client)] = ("delete", mid)
                    else:
                        out.delete_ms.append((now - client.sent_at) * 1000)
                        out.cycles += 1
                        stage.pop(id(client))
                        if rate is None:
                            next_put(client, now)
                        else:
                            idle.append(client)
        end = time.monotonic()
        out.seconds = end - start
        out.stalled = sum(1 for c in clients if id(c) in stage and end - c.sent_at > 1.0)
        return out

    def heartbeats(self, clients: list[Client], seconds: float,
                   latencies_ms: list[float] | None = None) -> float:
        """Heartbeat round trips per second, each session sending its next on an answer;
        each round trip's milliseconds are appended to ``latencies_ms`` if given."""
        start = time.monotonic()
        count = 0
        for c in clients:
            self.send(c, 3, (), HB, HB_OPTIONS, start)
        while time.monotonic() - start < seconds:
            for client, records in self.gen.poll(0.05):
                if any(decode_udp(r).code >= 64 for r in records):
                    count += 1
                    now = time.monotonic()
                    if latencies_ms is not None:
                        latencies_ms.append((now - client.sent_at) * 1000)
                    self.send(client, 3, (), HB, HB_OPTIONS, now)
        return count / (time.monotonic() - start)
