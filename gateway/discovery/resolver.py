"""DNS queries for the discovery plans, with dnspython's asyncio resolver.

Thin adapter: ``DnsQuery`` in, ``DnsAnswer`` or ``LookupFailure`` out, never an exception.
The failure kind follows the DNS outcome (NXDOMAIN, no data, SERVFAIL, REFUSED, timeout),
with the negative-caching TTL of RFC 2308 when the answer carries an SOA, because the
procedure's retry wait depends on it (seed §6). Queries go to the servers the query names
(learned by DHCP on the same interface, or configured) and, only when it names none, to the
system's resolvers. No caching here: validity is the procedure's business.

DNSSEC (seed §11): with a validator, queries carry the DO bit and each answer gets a status
(``DnsAnswer.dnssec``). ``local`` validates in process (``gateway.discovery.dnssec``): the
plan's DNSKEY / DS lookups go to the same servers, validated key sets are cached. ``resolver``
takes the AD bit of the server's reply (RFC 6840 §5.7: asked for with AD in the query); it
is only as trustworthy as the path to that server. Whether an unvalidated answer is used is
the procedure's decision (``discovery.dnssec``), not this adapter's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from gateway.discovery.candidates import DnssecStatus
from gateway.discovery.dnssec import (
    KeyCache,
    KeyQuery,
    KeyResult,
    TrustAnchorError,
    TrustAnchors,
    Verdict,
    answer_chain,
    signed_rrsets,
    validate,
)
from gateway.discovery.lookups import (
    DnsAnswer,
    DnsQuery,
    DnsResult,
    DnssecValidator,
    FailureKind,
    LookupFailure,
    Plan,
)

ANCHORS_KEY = "discovery.dnssec_trust_anchors"
EDNS_PAYLOAD = 1232  # the DNS flag day 2020 size: DNSKEY sets fit, fragments are avoided


def load_trust_anchors(path: Path) -> TrustAnchors:
    """The trust anchor file; errors name the configuration key and the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrustAnchorError(f"{ANCHORS_KEY}: {path}: cannot read: {exc.strerror or exc}"
                               ) from None
    except UnicodeDecodeError:
        raise TrustAnchorError(f"{ANCHORS_KEY}: {path}: not text") from None
    return TrustAnchors.from_text(text, f"{ANCHORS_KEY}: {path}")

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

    def __init__(self, timeout: float = 2.0, port: int = 53, *,
                 validator: DnssecValidator | None = None,
                 anchors: TrustAnchors | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if validator is DnssecValidator.LOCAL and anchors is None:
            raise TrustAnchorError(f"{ANCHORS_KEY}: needed to validate in process")
        self.timeout = timeout
        self.port = port  # tests run a server on a loopback port
        self.validator = validator
        self.anchors = anchors
        self.keys = KeyCache()
        self.wall_clock = wall_clock

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
        if self.validator is not None:
            resolver.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
            if self.validator is DnssecValidator.RESOLVER:
                resolver.flags = dns.flags.RD | dns.flags.AD
        return resolver

    async def query(self, query: DnsQuery) -> DnsResult:
        resolver = self._resolver(query)
        if isinstance(resolver, LookupFailure):
            return resolver
        try:
            qname = dns.name.from_text(query.name)
        except dns.exception.DNSException as exc:
            return LookupFailure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}")
        answer = await self._ask(resolver, qname, query.rdtype, query.name)
        if isinstance(answer, LookupFailure):
            return answer
        if answer.rrset is None:
            return LookupFailure(FailureKind.NODATA, "no such record",
                                 _negative_ttl(answer.response))
        if self.validator is None:
            return DnsAnswer(answer.rrset)
        verdict = await self._verdict(resolver, answer, qname)
        return DnsAnswer(answer.rrset, verdict.status, verdict.detail)

    async def _verdict(self, resolver: dns.asyncresolver.Resolver,
                       answer: dns.resolver.Answer, qname: dns.name.Name) -> Verdict:
        if self.validator is DnssecValidator.RESOLVER:
            if answer.response.flags & dns.flags.AD:
                return Verdict(DnssecStatus.SECURE)
            return Verdict(DnssecStatus.INSECURE, "the DNS server did not set the AD bit")
        assert self.anchors is not None
        chain = answer_chain(answer.response, qname, answer.rdtype)
        plan: Plan[KeyQuery, KeyResult, Verdict] = Plan(
            validate(chain, self.anchors, self.keys, self.wall_clock()))
        while (request := plan.next_request()) is not None:
            plan.query_result(await self._keys(resolver, request))
        assert plan.result is not None
        return plan.result

    async def _keys(self, resolver: dns.asyncresolver.Resolver, request: KeyQuery) -> KeyResult:
        answer = await self._ask(resolver, request.name, request.rdtype, str(request.name))
        if isinstance(answer, LookupFailure):
            return answer
        return signed_rrsets(answer.response)

    async def _ask(self, resolver: dns.asyncresolver.Resolver, qname: dns.name.Name,
                   rdtype: dns.rdatatype.RdataType | str, text: str
                   ) -> dns.resolver.Answer | LookupFailure:
        """One query; every DNS outcome other than an answer becomes a failure value."""
        try:
            return await resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
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
            return LookupFailure(kind, f"{text}: {kind.value.upper()}")
        except dns.exception.DNSException as exc:
            return LookupFailure(FailureKind.MALFORMED, f"{type(exc).__name__}: {exc}")
        except (OSError, ValueError) as exc:
            return LookupFailure(FailureKind.UNAVAILABLE, str(exc))
