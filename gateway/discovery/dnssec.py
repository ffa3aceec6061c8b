"""DNSSEC validation of the DNS answers discovery uses (seed §11: "DNSSEC SHOULD be used"),
sans I/O: trust anchors, the key cache, and the validation of an answer as a lookup plan.

An answer (the RRsets of the answer section that lead from the query name to the records:
CNAMEs, then the records) is *secure* when every RRset carries an RRSIG made by a DNSKEY of
a zone that chains to a configured trust anchor (RFC 4035 §5): the anchor zone's DNSKEY
RRset is signed by a key the anchor names (a DS digest or the DNSKEY itself); a zone below
it is reached through DS RRsets signed by its parent's keys. ``validate`` is a generator
that yields ``KeyQuery`` (DNSKEY or DS of a zone) and receives the answer-section RRsets of
the reply, like the other plans (``lookups.Plan``); the resolver adapter drives it with the
same servers as the original query, and keeps validated key sets in a ``KeyCache``.

Outcomes (``DnssecStatus``): ``secure``; ``insecure`` when no trust anchor covers the name
or an RRset carries no RRSIG (an unsigned zone, or signatures stripped on the way: without
a validated proof that the delegation is unsigned, which this module does not check, the
two cannot be told apart, and neither is trusted); ``bogus`` when signatures are there but
do not validate (tampered data, expired signatures, keys that do not chain). Negative
answers (NXDOMAIN, NODATA) are not validated: they produce no candidate, and a forged one
only denies what dropping the packet would deny too.

Wall-clock time (signature validity) arrives as ``now``. Pure: dnspython's record and
DNSSEC code only (``cryptography`` underneath), no resolver, no sockets.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zonefile

with warnings.catch_warnings():
    # dnspython imports its DSA support eagerly; cryptography deprecates DSA. We never use it.
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import dns.dnssec

from gateway.discovery.candidates import DnssecStatus
from gateway.discovery.errors import DiscoveryError
from gateway.discovery.lookups import LookupFailure

#: Key fetches (DNSKEY, DS) one answer may need: a few zone cuts below the anchor.
MAX_KEY_QUERIES = 12


class TrustAnchorError(DiscoveryError):
    """The trust anchor file cannot be used; the message names the key and the line."""


@dataclass(frozen=True, slots=True)
class SignedRRset:
    """An RRset of an answer and the RRSIGs that cover it (None: none came)."""

    rrset: dns.rrset.RRset
    rrsigs: dns.rrset.RRset | None


@dataclass(frozen=True, slots=True)
class KeyQuery:
    """Fetch the DNSKEY or DS RRset of ``name`` (with its RRSIGs)."""

    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType


KeyResult = tuple[SignedRRset, ...] | LookupFailure


@dataclass(frozen=True, slots=True)
class Verdict:
    status: DnssecStatus
    detail: str = ""  # why not secure


class TrustAnchors:
    """DS and DNSKEY records that are trusted without validation, by zone (RFC 4035 §4.4)."""

    __slots__ = ("_ds", "_keys")

    def __init__(self, rrsets: Iterable[dns.rrset.RRset]) -> None:
        self._ds: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        self._keys: dict[dns.name.Name, list[dns.rdata.Rdata]] = {}
        for rrset in rrsets:
            if rrset.rdtype == dns.rdatatype.DS:
                self._ds.setdefault(rrset.name, []).extend(rrset)
            elif rrset.rdtype == dns.rdatatype.DNSKEY:
                self._keys.setdefault(rrset.name, []).extend(rrset)
            else:
                raise TrustAnchorError(f"{rrset.name}: {dns.rdatatype.to_text(rrset.rdtype)} "
                                       "is not a trust anchor (DS or DNSKEY)")

    @classmethod
    def from_text(cls, text: str, source: str = "trust anchors") -> TrustAnchors:
        """Zone-file lines (``example.net. IN DS 12345 13 2 ...`` or ``... DNSKEY 257 3 13
        ...``), the format of unbound's ``trust-anchor-file`` and of ``dnssec-dsfromkey``."""
        try:
            rrsets = dns.zonefile.read_rrsets(text, rdclass=None, default_ttl=0,
                                              origin=dns.name.root)
        except dns.exception.DNSException as exc:
            raise TrustAnchorError(f"{source}: {exc}") from None
        try:
            anchors = cls(rrsets)
        except TrustAnchorError as exc:
            raise TrustAnchorError(f"{source}: {exc}") from None
        if not anchors.zones:
            raise TrustAnchorError(f"{source}: no DS or DNSKEY record")
        return anchors

    @property
    def zones(self) -> tuple[dns.name.Name, ...]:
        return tuple(dict.fromkeys([*self._ds, *self._keys]))

    def closest(self, name: dns.name.Name) -> dns.name.Name | None:
        """The deepest anchored zone at or above ``name``."""
        found = [zone for zone in self.zones if name.is_subdomain(zone)]
        return max(found, key=len, default=None)

    def matches(self, zone: dns.name.Name, key: dns.rdata.Rdata) -> bool:
        if any(key == anchored for anchored in self._keys.get(zone, ())):
            return True
        return _matches_ds(zone, key, self._ds.get(zone, ()))


def _matches_ds(zone: dns.name.Name, key: dns.rdata.Rdata, ds_set: Iterable[dns.rdata.Rdata]
                ) -> bool:
    for ds in ds_set:
        if ds.algorithm != key.algorithm:  # type: ignore[attr-defined]
            continue
        try:
            made = dns.dnssec.make_ds(zone, key, ds.digest_type,  # type: ignore[attr-defined]
                                      validating=True)
        except (dns.exception.UnsupportedAlgorithm, dns.exception.DeniedByPolicy, ValueError):
            continue
        if made == ds:
            return True
    return False


class KeyCache:
    """Validated DNSKEY RRsets by zone, until their TTL or the earliest signature expiry."""

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: dict[dns.name.Name, tuple[dns.rdataset.Rdataset, float]] = {}

    def get(self, zone: dns.name.Name, now: float) -> dns.rdataset.Rdataset | None:
        entry = self._keys.get(zone)
        if entry is None or entry[1] <= now:
            self._keys.pop(zone, None)
            return None
        return entry[0]

    def put(self, zone: dns.name.Name, keys: dns.rdataset.Rdataset, expires_at: float) -> None:
        self._keys[zone] = (keys, expires_at)

    def __len__(self) -> int:
        return len(self._keys)


def signed_rrsets(message: dns.message.Message) -> tuple[SignedRRset, ...]:
    """The answer section as RRsets, each with the RRSIGs covering it."""
    sigs = {(r.name, r.covers): r for r in message.answer if r.rdtype == dns.rdatatype.RRSIG}
    return tuple(SignedRRset(r, sigs.get((r.name, r.rdtype)))
                 for r in message.answer if r.rdtype != dns.rdatatype.RRSIG)


def answer_chain(message: dns.message.Message, qname: dns.name.Name,
                 rdtype: dns.rdatatype.RdataType) -> tuple[SignedRRset, ...]:
    """The RRsets that lead from ``qname`` to the ``rdtype`` records: CNAMEs, then them.
    Unrelated RRsets in the answer section are left out (they are not used)."""
    by_name = {(s.rrset.name, s.rrset.rdtype): s for s in signed_rrsets(message)}
    chain: list[SignedRRset] = []
    name = qname
    for _ in range(16):  # a CNAME loop in a reply ends here
        found = by_name.get((name, rdtype))
        if found is not None:
            chain.append(found)
            break
        cname = by_name.get((name, dns.rdatatype.CNAME))
        if cname is None or not len(cname.rrset):
            break
        chain.append(cname)
        name = cname.rrset[0].target
    return tuple(chain)


def validate(chain: Sequence[SignedRRset], anchors: TrustAnchors, cache: KeyCache,
             now: float) -> Generator[KeyQuery, KeyResult, Verdict]:
    """The verdict on an answer: secure only when every RRset of ``chain`` is. ``now`` is
    wall-clock seconds (signature validity periods are absolute times)."""
    if not chain:
        return Verdict(DnssecStatus.INSECURE, "no records to validate")
    budget = [MAX_KEY_QUERIES]
    verdicts = []
    for signed in chain:
        verdicts.append((yield from _validate_rrset(signed, anchors, cache, now, budget)))
    status = DnssecStatus.combine(v.status for v in verdicts)
    detail = next((v.detail for v in verdicts if v.status is status), "")
    return Verdict(status, detail)


def _what(rrset: dns.rrset.RRset) -> str:
    return f"{dns.rdatatype.to_text(rrset.rdtype)} {rrset.name.to_text(omit_final_dot=True)}"


def _validate_rrset(signed: SignedRRset, anchors: TrustAnchors, cache: KeyCache, now: float,
                    budget: list[int]) -> Generator[KeyQuery, KeyResult, Verdict]:
    rrset = signed.rrset
    anchor = anchors.closest(rrset.name)
    if anchor is None:
        return Verdict(DnssecStatus.INSECURE, f"{_what(rrset)}: no trust anchor covers it")
    if signed.rrsigs is None or not len(signed.rrsigs):
        return Verdict(DnssecStatus.INSECURE, f"{_what(rrset)}: no RRSIG")
    signers = {sig.signer for sig in signed.rrsigs}
    usable = [s for s in signers if rrset.name.is_subdomain(s) and s.is_subdomain(anchor)]
    if not usable:
        return Verdict(DnssecStatus.BOGUS, f"{_what(rrset)}: signed by "
                       f"{', '.join(sorted(str(s) for s in signers))}, not a zone under the "
                       f"trust anchor {anchor}")
    problems = []
    for signer in sorted(usable, key=len, reverse=True):
        keys = yield from _zone_keys(signer, anchor, anchors, cache, now, budget)
        if isinstance(keys, Verdict):
            problems.append(keys.detail)
            continue
        problem = _check(rrset, signed.rrsigs, signer, keys, now)
        if problem is None:
            return Verdict(DnssecStatus.SECURE)
        problems.append(f"{_what(rrset)}: {problem}")
    return Verdict(DnssecStatus.BOGUS, "; ".join(problems))


def _check(rrset: dns.rrset.RRset, rrsigs: dns.rrset.RRset, signer: dns.name.Name,
           keys: dns.rdataset.Rdataset, now: float) -> str | None:
    """None when one RRSIG by ``signer`` validates with ``keys``, else why not (the reason
    of each signature: "expired", "verify failure"...)."""
    reasons = []
    for rrsig in rrsigs:
        if rrsig.signer != signer:
            continue
        try:
            dns.dnssec.validate_rrsig(rrset, rrsig, {signer: keys}, now=now)
            return None
        except (dns.exception.ValidationFailure, dns.exception.UnsupportedAlgorithm) as exc:
            reasons.append(str(exc) or type(exc).__name__)
    return "signature " + ", ".join(dict.fromkeys(reasons)) if reasons else "no RRSIG"


def _find(result: tuple[SignedRRset, ...], name: dns.name.Name,
          rdtype: dns.rdatatype.RdataType) -> SignedRRset | None:
    return next((s for s in result if s.rrset.name == name and s.rrset.rdtype == rdtype), None)


def _fetch(name: dns.name.Name, rdtype: dns.rdatatype.RdataType, budget: list[int]
           ) -> Generator[KeyQuery, KeyResult, SignedRRset | Verdict]:
    what = f"{dns.rdatatype.to_text(rdtype)} {name.to_text(omit_final_dot=True)}"
    budget[0] -= 1
    if budget[0] < 0:
        return Verdict(DnssecStatus.BOGUS, f"{what}: more than {MAX_KEY_QUERIES} key lookups")
    result = yield KeyQuery(name, rdtype)
    if isinstance(result, LookupFailure):
        return Verdict(DnssecStatus.BOGUS, f"{what}: {result}")
    found = _find(result, name, rdtype)
    if found is None:
        return Verdict(DnssecStatus.BOGUS, f"{what}: not in the reply")
    return found


def _zone_keys(zone: dns.name.Name, anchor: dns.name.Name, anchors: TrustAnchors,
               cache: KeyCache, now: float, budget: list[int]
               ) -> Generator[KeyQuery, KeyResult, dns.rdataset.Rdataset | Verdict]:
    """The validated DNSKEY RRset of ``zone`` (at or below ``anchor``), or why not."""
    cached = cache.get(zone, now)
    if cached is not None:
        return cached
    dnskey = yield from _fetch(zone, dns.rdatatype.DNSKEY, budget)
    if isinstance(dnskey, Verdict):
        return dnskey
    if zone == anchor:
        trusted = [k for k in dnskey.rrset if anchors.matches(zone, k)]
        if not trusted:
            return Verdict(DnssecStatus.BOGUS, f"DNSKEY {zone}: no key matches the trust anchor")
    else:
        ds = yield from _fetch(zone, dns.rdatatype.DS, budget)
        if isinstance(ds, Verdict):
            return ds
        if ds.rrsigs is None:
            return Verdict(DnssecStatus.BOGUS, f"DS {zone}: no RRSIG")
        parents = {sig.signer for sig in ds.rrsigs
                   if zone.is_subdomain(sig.signer) and zone != sig.signer
                   and sig.signer.is_subdomain(anchor)}
        if not parents:
            return Verdict(DnssecStatus.BOGUS, f"DS {zone}: not signed by a zone above it")
        parent = max(parents, key=len)
        parent_keys = yield from _zone_keys(parent, anchor, anchors, cache, now, budget)
        if isinstance(parent_keys, Verdict):
            return parent_keys
        problem = _check(ds.rrset, ds.rrsigs, parent, parent_keys, now)
        if problem is not None:
            return Verdict(DnssecStatus.BOGUS, f"DS {zone}: {problem}")
        trusted = [k for k in dnskey.rrset if _matches_ds(zone, k, ds.rrset)]
        if not trusted:
            return Verdict(DnssecStatus.BOGUS, f"DNSKEY {zone}: no key matches its DS")
    if dnskey.rrsigs is None:
        return Verdict(DnssecStatus.BOGUS, f"DNSKEY {zone}: no RRSIG")
    keys = dns.rdataset.from_rdata_list(dnskey.rrset.ttl, trusted)
    problem = _check(dnskey.rrset, dnskey.rrsigs, zone, keys, now)
    if problem is not None:
        return Verdict(DnssecStatus.BOGUS, f"DNSKEY {zone}: {problem}")
    expiry = min([now + dnskey.rrset.ttl,
                  *(float(s.expiration) for s in dnskey.rrsigs)])
    validated = dns.rdataset.from_rdata_list(dnskey.rrset.ttl, list(dnskey.rrset))
    cache.put(zone, validated, expiry)
    return validated
