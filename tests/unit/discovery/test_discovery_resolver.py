"""The dnspython adapter's mapping of DNS outcomes to failure kinds, against a tiny DNS
responder on 127.0.0.1 (loopback only: no other network is touched)."""

from __future__ import annotations

import asyncio
import ipaddress

import dns.message
import dns.rcode
import dns.rrset

from gateway.discovery.lookups import DnsAnswer, DnsQuery, FailureKind, LookupFailure
from gateway.discovery.resolver import DnsResolver

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 {minimum}"


class Responder(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        query = dns.message.from_wire(data)
        name = query.question[0].name.to_text()
        response = dns.message.make_response(query)
        if name == "slow.test.":
            return  # never answers
        if name == "garbage.test.":
            self.transport.sendto(data[:2] + b"\x81\x80\xff\xff", addr)
            return
        if name == "nx.test.":
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text("test.", 600, "IN", "SOA",
                                                          SOA.format(minimum=900)))
        elif name == "empty.test.":
            response.authority.append(dns.rrset.from_text("test.", 300, "IN", "SOA",
                                                          SOA.format(minimum=30)))
        elif name == "servfail.test.":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name == "refused.test.":
            response.set_rcode(dns.rcode.REFUSED)
        elif name == "ok.test.":
            response.answer.append(dns.rrset.from_text("ok.test.", 77, "IN", "A", "192.0.2.1"))
        self.transport.sendto(response.to_wire(), addr)


async def ask_all(names: list[str]) -> dict[str, DnsAnswer | LookupFailure]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    resolver = DnsResolver(timeout=0.3, port=port)
    server = (ipaddress.ip_address("127.0.0.1"),)
    try:
        results = await asyncio.gather(*(resolver.query(DnsQuery(n, "A", server))
                                         for n in names))
    finally:
        transport.close()
    return dict(zip(names, results, strict=True))


def test_outcomes_map_to_failure_kinds() -> None:
    names = ["ok.test", "nx.test", "empty.test", "servfail.test", "refused.test", "slow.test",
             "garbage.test"]
    got = asyncio.run(ask_all(names))
    ok = got["ok.test"]
    assert isinstance(ok, DnsAnswer) and ok.ttl == 77
    assert [r.address for r in ok.rdataset] == ["192.0.2.1"]

    def failure(name: str) -> LookupFailure:
        result = got[name]
        assert isinstance(result, LookupFailure), result
        return result

    # RFC 2308: negative TTL = min(SOA TTL, SOA MINIMUM).
    assert (failure("nx.test").kind, failure("nx.test").negative_ttl) == (FailureKind.NXDOMAIN,
                                                                          600)
    assert (failure("empty.test").kind,
            failure("empty.test").negative_ttl) == (FailureKind.NODATA, 30)
    assert failure("servfail.test").kind is FailureKind.SERVFAIL
    assert failure("refused.test").kind is FailureKind.REFUSED
    assert failure("slow.test").kind is FailureKind.TIMEOUT
    assert failure("garbage.test").kind in (FailureKind.SERVFAIL, FailureKind.MALFORMED,
                                            FailureKind.TIMEOUT)
