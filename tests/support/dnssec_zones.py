"""Signed test zones made with dnspython (``dns.dnssec.sign_zone``), for the DNSSEC unit tests
(answered in memory or by a loopback responder) and the lab (written out for nsd)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ed25519

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="DSA is deprecated")
    import dns.dnssec

from gateway.discovery.dnssec import SignedRRset

SOA = "@ SOA ns hostmaster 1 3600 600 86400 300\n@ NS ns\nns A 192.0.2.53\n"


@dataclass
class SignedZone:
    zone: dns.zone.Zone
    dnskey: dns.rdata.Rdata

    @property
    def origin(self) -> dns.name.Name:
        assert self.zone.origin is not None
        return self.zone.origin

    def ds(self) -> dns.rdata.Rdata:
        return dns.dnssec.make_ds(self.origin, self.dnskey, "SHA256")

    def anchor_text(self, kind: str = "DS") -> str:
        rdata = self.ds() if kind == "DS" else self.dnskey
        return f"{self.origin} IN {kind} {rdata.to_text()}\n"

    def tamper(self, name: str, rdtype: str, *values: str) -> None:
        """Replace the records of ``name``/``rdtype`` after signing; the RRSIG stays."""
        node = self.zone.find_node(dns.name.from_text(name))
        old = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
        assert old is not None
        node.replace_rdataset(dns.rdataset.from_text("IN", rdtype, old.ttl, *values))

    def strip(self, name: str, rdtype: str) -> None:
        """Remove the RRSIG over ``name``/``rdtype``: what an on-path downgrade does."""
        node = self.zone.find_node(dns.name.from_text(name))
        node.delete_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG,
                             dns.rdatatype.from_text(rdtype))


def make_zone(origin: str, records: str, *, signed: bool = True, lifetime: int = 86400,
              inception: float | None = None) -> SignedZone:
    zone = dns.zone.from_text(f"$TTL 300\n{SOA}{records}", origin=origin, relativize=False)
    private = ed25519.Ed25519PrivateKey.generate()
    dnskey = dns.dnssec.make_dnskey(private.public_key(), dns.dnssec.Algorithm.ED25519,
                                    flags=257)
    if signed:
        start = time.time() - 3600 if inception is None else inception
        with zone.writer() as txn:
            dns.dnssec.sign_zone(zone, txn, keys=[(private, dnskey)], inception=start,
                                 expiration=start + lifetime)
    return SignedZone(zone, dnskey)


def lookup(zones: list[SignedZone], name: dns.name.Name | str,
           rdtype: dns.rdatatype.RdataType | str) -> tuple[SignedRRset, ...]:
    """What an authoritative server answers (with DO): the RRset and its RRSIGs; DS from the
    parent side of a zone cut."""
    name = dns.name.from_text(name) if isinstance(name, str) else name
    rdtype = dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype
    owners = [z for z in zones if name.is_subdomain(z.origin)
              and not (rdtype == dns.rdatatype.DS and name == z.origin)]
    if not owners:
        return ()
    zone = max(owners, key=lambda z: len(z.origin)).zone
    node = zone.get_node(name)
    if node is None:
        return ()
    out = []
    cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
    found = node.get_rdataset(dns.rdataclass.IN, rdtype) or cname
    if found is None:
        return ()
    sigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, found.rdtype)
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, found.rdtype)
    rrset.update(found)
    sig_rrset = None
    if sigs is not None:
        sig_rrset = dns.rrset.RRset(name, dns.rdataclass.IN, dns.rdatatype.RRSIG, found.rdtype)
        sig_rrset.update(sigs)
    out.append(SignedRRset(rrset, sig_rrset))
    if found.rdtype == dns.rdatatype.CNAME and rdtype != dns.rdatatype.CNAME:
        out += lookup(zones, found[0].target, rdtype)
    return tuple(out)
