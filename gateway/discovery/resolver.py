"""DNS queries for the discovery plans, with dnspython's asyncio resolver.

Thin adapter: ``DnsQuery`` in, ``DnsAnswer`` or ``LookupFailure`` out, never an exception.
The failure kind follows the DNS outcome (NXDOMAIN, no data, SERVFAIL, REFUSED, timeout),
with the negative-caching TTL of RFC 2308 when the answer carries an SOA, because the
procedure's retry wait depends on it (seed §6). Queries go to the servers the query names
(learned by DHCP on the same interface, or configured) and, only when it names none, to the
system's resolvers. No caching here: validity is the procedure's business.
"""

from __future__ import annotations

import logging

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from gateway.discovery.lookups import DnsAnswer, DnsQuery, DnsResult, FailureKind, LookupFailure

log = logging.getLogger(__name__)


def _negative_ttl(response: dns.message.Message | None) -> int | None:
    """RFC 2308 §5: the TTL of a negative answer is min(SOA TTL, SOA MINIMUM)."""
    if response is None:
        return None
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return int(min(rrset.ttl, rrset[0].minimum))
    return None


class DnsResolver:
    """Performs ``DnsQuery`` requests. ``timeout`` bounds each query, all servers included."""

    def __init__(self, timeout: float = 2.0, port: int = 53) -> None:
        self.timeout = timeout
        self.port = port  # tests run a server on a loopback port

    def _resolver(self, query: DnsQuery) -> dns.asyncresolver.Resolver | LookupFailure:
        if query.servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            names = []
            for server in query.servers:
                text = str(server)
                if server.version == 6 and server.is_link_local and query.interface:
                    text += f"%{query.interface}"
                names.append(text)
            resolver.nameservers = names
            resolver.port = self.port
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                return LookupFailure(FailureKind.UNAVAILABLE, "no DNS servers known")
        resolver.cache = None
        resolver.lifetime = self.timeout
        resolver.timeout = self.timeout
        return resolver

    async def query(self, query: DnsQuery) -> DnsResult:
        resolver = self._resolver(query)
        if isinstance(resolver, LookupFailure):
            return resolver
        try:
            qname = dns.name.from_text(query.name)
            answer = await resolver.resolve(
                qname, query.rdtype, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN as exc:
            try:
                qnames = exc.qnames()  # type: ignore[no-untyped-call]
                response = exc.response(qnames[0]) if qnames else None  # type: ignore[no-untyped-call]
            except (KeyError, IndexError):
                response = None
            return LookupFailure(FailureKind.NXDOMAIN, "no such name",
                                 _negative_ttl(response))
        except dns.resolver.LifetimeTimeout:
            return LookupFailure(FailureKind.TIMEOUT, f"no answer in {self.timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            text = str(exc)
            kind = FailureKind.REFUSED if "REFUSED" in text else FailureKind.SERVFAIL
            return LookupFailure(kind, f"{query.name}: {kind.value.upper()}")
        except dns.exception.DNSException as exc:
            return LookupFailure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}")
        except (OSError, ValueError) as exc:
            return LookupFailure(FailureKind.UNAVAILABLE, str(exc))
        if answer.rrset is None:
            return LookupFailure(FailureKind.NODATA, "no such record",
                                 _negative_ttl(answer.response))
        return DnsAnswer(answer.rrset)
