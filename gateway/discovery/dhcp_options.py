"""DHCP option codecs for DOTS discovery, and what a client makes of the options it got.

Formats: RFC 8973 §5 (DHCPv6 OPTION_V6_DOTS_RI 141 / OPTION_V6_DOTS_ADDRESS 142, DHCPv4
OPTION_V4_DOTS_RI 147 / OPTION_V4_DOTS_ADDRESS 148 with a flat address list), the seed
draft's DHCPv4 address option with several length-prefixed lists (seed §9.2.2; its code was
never assigned, so it is operator configuration), RFC 5986 access-network-domain options
(213 / 57, seed §7.1.1), the DHCPv4 domain name (15) and DNS server (6) options, DHCPv6 DNS
servers (23), domain list (24) and information refresh time (32). RFC 3396 splitting and
joining of long DHCPv4 options lives here too.

Every decoder raises ``MalformedOption`` (or ``MalformedPacket`` for a broken option area)
for bad input, never anything else; ``interpret_*`` decode each option on its own and keep
what is valid, recording the problems, so one broken option does not hide the others.
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.discovery.candidates import IdentifierType, IPAddress, usable_address
from gateway.discovery.dnsname import decode_first_name, decode_names, encode_name, encode_names
from gateway.discovery.errors import InvalidName, MalformedOption, MalformedPacket

# DHCPv6 option codes (RFC 8415 §21, RFC 3646, RFC 5986 §3.3, RFC 8973 §9.2).
V6_CLIENTID = 1
V6_SERVERID = 2
V6_ORO = 6
V6_ELAPSED_TIME = 8
V6_STATUS_CODE = 13
V6_DNS_SERVERS = 23
V6_DOMAIN_LIST = 24
V6_INFORMATION_REFRESH_TIME = 32
V6_ACCESS_DOMAIN = 57
V6_DOTS_RI = 141
V6_DOTS_ADDRESS = 142

# DHCPv4 option codes (RFC 2132, RFC 5986 §3.2, RFC 8973 §9.3).
V4_PAD = 0
V4_DNS_SERVERS = 6
V4_DOMAIN_NAME = 15
V4_LEASE_TIME = 51
V4_OVERLOAD = 52
V4_MESSAGE_TYPE = 53
V4_SERVER_ID = 54
V4_PARAMETER_REQUEST_LIST = 55
V4_DOTS_RI = 147
V4_DOTS_ADDRESS = 148
V4_ACCESS_DOMAIN = 213
V4_END = 255

MAX_V4_OPTION_LENGTH = 255  # one instance; RFC 3396 splits anything longer


# --- DHCPv4 option area and RFC 3396 ---------------------------------------------------------


def parse_v4_options(area: bytes) -> list[tuple[int, bytes]]:
    """Every option instance in an option area, in order, up to the End option.

    Pad options are skipped. A length running past the area is a MalformedPacket: the rest
    of the area cannot be trusted. A missing End option is tolerated (the file and sname
    fields are zero-padded rather than terminated by some servers).
    """
    instances: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(area):
        code = area[pos]
        if code == V4_PAD:
            pos += 1
            continue
        if code == V4_END:
            break
        if pos + 1 >= len(area):
            raise MalformedPacket(f"option {code} at octet {pos} has no length octet")
        length = area[pos + 1]
        value = area[pos + 2 : pos + 2 + length]
        if len(value) < length:
            raise MalformedPacket(
                f"option {code} at octet {pos} claims {length} octets, {len(value)} remain"
            )
        instances.append((code, value))
        pos += 2 + length
    return instances


def join_v4_options(instances: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    """RFC 3396 §6: all instances of one code, in the order they appear, form one option.

    ``instances`` must already be in aggregation order (options field, then file, then
    sname, RFC 3396 §7). In DHCPv4 this concatenation *is* the first-instance rule of seed
    §9.2.3: several instances of a code are parts of one option, not several options.
    """
    joined: dict[int, bytearray] = {}
    for code, value in instances:
        joined.setdefault(code, bytearray()).extend(value)
    return {code: bytes(value) for code, value in joined.items()}


def encode_v4_option(code: int, value: bytes) -> bytes:
    """One option as code/length/value, split into several instances of at most 255 octets
    when longer (RFC 3396 §5; seed §9.2.2 and RFC 8973 §5.2.2: the address option MUST use
    it beyond 255 octets)."""
    if not 1 <= code <= 254:
        raise MalformedOption(code, "DHCPv4 option codes are 1..254")
    if not value:
        return bytes((code, 0))
    out = bytearray()
    for start in range(0, len(value), MAX_V4_OPTION_LENGTH):
        chunk = value[start : start + MAX_V4_OPTION_LENGTH]
        out += bytes((code, len(chunk))) + chunk
    return bytes(out)


# --- DHCPv6 option list ----------------------------------------------------------------------


def parse_v6_options(data: bytes) -> list[tuple[int, bytes]]:
    """Every option in a DHCPv6 option list, in order (RFC 8415 §21.1)."""
    instances: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise MalformedPacket(f"option header at octet {pos} is truncated")
        code, length = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4 : pos + 4 + length]
        if len(value) < length:
            raise MalformedPacket(
                f"option {code} at octet {pos} claims {length} octets, {len(value)} remain"
            )
        instances.append((code, value))
        pos += 4 + length
    return instances


def first_v6_options(instances: Iterable[tuple[int, bytes]]) -> dict[int, bytes]:
    """The first instance of each code; later ones are ignored (seed §9.1.3, RFC 8973
    §5.1.3: "MUST use only the first instance of that option")."""
    first: dict[int, bytes] = {}
    for code, value in instances:
        first.setdefault(code, value)
    return first


def encode_v6_option(code: int, value: bytes) -> bytes:
    if not 0 <= code <= 0xFFFF or len(value) > 0xFFFF:
        raise MalformedOption(code, "DHCPv6 option code or length out of range")
    return struct.pack("!HH", code, len(value)) + value


# --- value codecs ----------------------------------------------------------------------------


def decode_dots_ri(code: int, value: bytes) -> str:
    """OPTION_V6_DOTS_RI / OPTION_V4_DOTS_RI: the first name (several names are told apart
    by their root labels; seed §9.1.3, §9.2.3: "MUST use only the first name")."""
    if not value:
        raise MalformedOption(code, "empty (a name is required)")
    try:
        return decode_first_name(value)
    except InvalidName as exc:
        raise MalformedOption(code, f"not a DNS name in wire format: {exc}") from None


def encode_dots_ri(names: Sequence[str]) -> bytes:
    """The value of a DOTS RI option naming ``names`` (normally one)."""
    try:
        return encode_names(tuple(names))
    except InvalidName as exc:
        raise MalformedOption(V6_DOTS_RI, str(exc)) from None


def decode_domain(code: int, value: bytes) -> str:
    """RFC 5986 access-network domain (213 / 57): one FQDN in DNS wire format."""
    if not value:
        raise MalformedOption(code, "empty (a domain name is required)")
    try:
        return decode_first_name(value)
    except InvalidName as exc:
        raise MalformedOption(code, f"not a DNS name in wire format: {exc}") from None


def decode_domain_list(code: int, value: bytes) -> tuple[str, ...]:
    """DHCPv6 domain search list (24): names in DNS wire format."""
    try:
        return tuple(decode_names(value))
    except InvalidName as exc:
        raise MalformedOption(code, f"not a list of DNS names: {exc}") from None


def decode_v4_domain_name(value: bytes) -> str:
    """DHCPv4 option 15 (RFC 2132 §3.17): the name as ASCII text. Trailing NULs, which some
    servers append, are dropped; the text must be a host name."""
    text_bytes = value.rstrip(b"\x00").rstrip(b".")
    try:
        text = text_bytes.decode("ascii")
        encode_name(text)  # validates every label
    except (UnicodeDecodeError, InvalidName):
        raise MalformedOption(V4_DOMAIN_NAME, f"{value[:64]!r} is not a domain name") from None
    return text


def decode_ipv6_addresses(code: int, value: bytes) -> tuple[ipaddress.IPv6Address, ...]:
    """A list of IPv6 addresses: length a non-zero multiple of 16 (seed §9.1.2: "MUST be a
    multiple of 16")."""
    if not value or len(value) % 16:
        raise MalformedOption(code, f"length {len(value)} is not a non-zero multiple of 16")
    return tuple(ipaddress.IPv6Address(value[i : i + 16]) for i in range(0, len(value), 16))


def decode_ipv4_addresses(code: int, value: bytes) -> tuple[ipaddress.IPv4Address, ...]:
    """A flat list of IPv4 addresses (RFC 8973 §5.2.2: length 4*N; option 6 likewise)."""
    if not value or len(value) % 4:
        raise MalformedOption(code, f"length {len(value)} is not a non-zero multiple of 4")
    return tuple(ipaddress.IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


def decode_v6_dots_address(value: bytes) -> tuple[IPAddress, ...]:
    """OPTION_V6_DOTS_ADDRESS: usable addresses in preference order. IPv4-mapped addresses
    (allowed by seed §9.1.2) come back as IPv4; multicast and loopback are dropped."""
    result: list[IPAddress] = []
    for address in decode_ipv6_addresses(V6_DOTS_ADDRESS, value):
        plain: IPAddress = address.ipv4_mapped or address
        if usable_address(plain):  # RFC 8973 §5.1.3: silently discard multicast/loopback
            result.append(plain)
    return tuple(result)


def encode_v6_dots_address(addresses: Sequence[IPAddress]) -> bytes:
    """IPv4 addresses are written IPv4-mapped (seed §9.1.2)."""
    if not addresses:
        raise MalformedOption(V6_DOTS_ADDRESS, "at least one address is required")
    out = bytearray()
    for address in addresses:
        if isinstance(address, ipaddress.IPv4Address):
            address = ipaddress.IPv6Address(f"::ffff:{address}")
        out += address.packed
    return bytes(out)


def decode_v4_dots_address(code: int, value: bytes) -> tuple[ipaddress.IPv4Address, ...]:
    """OPTION_V4_DOTS_ADDRESS in the RFC 8973 format: usable addresses in preference order."""
    return tuple(a for a in decode_ipv4_addresses(code, value) if usable_address(a))


def encode_v4_dots_address(addresses: Sequence[ipaddress.IPv4Address]) -> bytes:
    """The value (may exceed 255 octets: ``encode_v4_option`` splits it, RFC 3396)."""
    if not addresses:
        raise MalformedOption(V4_DOTS_ADDRESS, "at least one address is required")
    return b"".join(a.packed for a in addresses)


def decode_seed_v4_dots_address(
    code: int, value: bytes
) -> tuple[tuple[ipaddress.IPv4Address, ...], ...]:
    """The seed's DHCPv4 address option (seed §9.2.2): one or more lists, each a List-Length
    octet (a multiple of 4) and that many octets of IPv4 addresses; each list is one DOTS
    server. Lists left empty after dropping multicast/loopback addresses are omitted."""
    if len(value) < 5:  # seed §9.2.2: "The minimum length is 5."
        raise MalformedOption(code, f"length {len(value)}, the minimum is 5")
    lists: list[tuple[ipaddress.IPv4Address, ...]] = []
    pos = 0
    while pos < len(value):
        list_length = value[pos]
        if list_length == 0 or list_length % 4:
            # Seed §9.2.2: List-Length "MUST be a multiple of 4".
            raise MalformedOption(
                code, f"List-Length {list_length} at octet {pos} is not a non-zero multiple of 4"
            )
        body = value[pos + 1 : pos + 1 + list_length]
        if len(body) < list_length:
            raise MalformedOption(
                code, f"list at octet {pos} claims {list_length} octets, {len(body)} remain"
            )
        addresses = tuple(a for a in decode_ipv4_addresses(code, body) if usable_address(a))
        if addresses:
            lists.append(addresses)
        pos += 1 + list_length
    return tuple(lists)


def encode_seed_v4_dots_address(lists: Sequence[Sequence[ipaddress.IPv4Address]]) -> bytes:
    """The seed format's value: each list prefixed by its length (at most 63 addresses)."""
    out = bytearray()
    for addresses in lists:
        if not addresses or len(addresses) > 63:
            raise MalformedOption(0, "each list holds 1 to 63 addresses")
        out.append(4 * len(addresses))
        out += b"".join(a.packed for a in addresses)
    if not out:
        raise MalformedOption(0, "at least one list is required")
    return bytes(out)


def decode_uint32(code: int, value: bytes) -> int:
    if len(value) != 4:
        raise MalformedOption(code, f"length {len(value)}, expected 4")
    return int.from_bytes(value, "big")


# --- what the client makes of a reply --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DotsServer:
    """One DOTS server learned from DHCP (seed §9.1.3 / §9.2.3 decide the fields).

    ``addresses`` empty means ``name`` must be resolved; otherwise the name, when there is
    one, is the reference identifier only and MUST NOT go to a resolver.
    """

    addresses: tuple[IPAddress, ...]
    name: str | None

    @property
    def resolve_name(self) -> bool:
        return not self.addresses and self.name is not None

    def reference_identifier(self, address: IPAddress) -> tuple[str, IdentifierType]:
        """Seed §9.1.3: the RI name when there is one; with addresses only, "these addresses
        can be used as identifiers for authentication"."""
        if self.name is not None:
            return self.name, IdentifierType.DNS
        return str(address), IdentifierType.IP


@dataclass(frozen=True, slots=True)
class DhcpInfo:
    """What one DHCP reply said that discovery can use, plus the problems found in it."""

    family: int  # 4 or 6
    servers: tuple[DotsServer, ...] = ()
    access_domain: str | None = None  # RFC 5986 (213 / 57)
    domain_name: str | None = None  # DHCPv4 option 15
    domain_list: tuple[str, ...] = ()  # DHCPv6 option 24
    dns_servers: tuple[IPAddress, ...] = ()  # option 6 / 23
    refresh: int | None = None  # seconds: lease time (51) / information refresh time (32)
    server_id: str = ""
    problems: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        """Domains for S-NAPTR / DNS-SD in preference order: the access-network domain
        (seed §7.1.1 MUST request it), then the less suitable domain name (MAY)."""
        found = [self.access_domain, self.domain_name, *self.domain_list]
        return tuple(dict.fromkeys(d for d in found if d))


def dots_servers(
    names: Sequence[str], address_lists: Sequence[Sequence[IPAddress]]
) -> tuple[DotsServer, ...]:
    """Seed §9.1.3 / §9.2.3 (RFC 8973 §5.1.3): RI and ADDRESS -> connect to the addresses,
    the name is the reference identifier only; RI only -> resolve the (first) name; ADDRESS
    only -> the addresses, which are also the identifiers."""
    name = names[0] if names else None
    lists = [tuple(a) for a in address_lists if a]
    if lists:
        return tuple(DotsServer(addresses, name) for addresses in lists)
    if name is not None:
        return (DotsServer((), name),)
    return ()


class _Collector:
    """Decode options one by one; a bad one becomes a problem line, the others still count."""

    def __init__(self, options: Mapping[int, bytes]) -> None:
        self.options = options
        self.problems: list[str] = []

    def get(self, code: int, decode, *args):  # type: ignore[no-untyped-def]
        value = self.options.get(code)
        if value is None:
            return None
        try:
            return decode(*args, value)
        except MalformedOption as exc:
            self.problems.append(str(exc))
            return None


def interpret_v4(
    options: Mapping[int, bytes],
    *,
    seed_address_code: int | None = None,
    seed_ri_code: int | None = None,
    server_id: str = "",
) -> DhcpInfo:
    """A DHCPv4 reply's joined options (RFC 3396) -> DhcpInfo.

    With ``seed_address_code`` the seed's multi-list format is read from that code as well;
    its lists come after the RFC 8973 option's (assigned codes are preferred).
    """
    c = _Collector(options)
    name = c.get(V4_DOTS_RI, decode_dots_ri, V4_DOTS_RI)
    if name is None and seed_ri_code:
        name = c.get(seed_ri_code, decode_dots_ri, seed_ri_code)
    lists: list[Sequence[IPAddress]] = []
    flat = c.get(V4_DOTS_ADDRESS, decode_v4_dots_address, V4_DOTS_ADDRESS)
    if flat:
        lists.append(flat)
    if seed_address_code:
        lists += c.get(seed_address_code, decode_seed_v4_dots_address, seed_address_code) or ()
    lease = c.get(V4_LEASE_TIME, decode_uint32, V4_LEASE_TIME)
    server_ip = c.get(V4_SERVER_ID, decode_ipv4_addresses, V4_SERVER_ID)
    return DhcpInfo(
        family=4,
        servers=dots_servers([name] if name else [], lists),
        access_domain=c.get(V4_ACCESS_DOMAIN, decode_domain, V4_ACCESS_DOMAIN),
        domain_name=c.get(V4_DOMAIN_NAME, decode_v4_domain_name),
        dns_servers=tuple(
            a for a in c.get(V4_DNS_SERVERS, decode_ipv4_addresses, V4_DNS_SERVERS) or ()
            if usable_address(a)
        ),
        refresh=lease,
        server_id=server_id or (str(server_ip[0]) if server_ip else ""),
        problems=tuple(c.problems),
    )


def interpret_v6(options: Mapping[int, bytes], *, server_id: str = "") -> DhcpInfo:
    """A DHCPv6 Reply's options (first instance of each, seed §9.1.3) -> DhcpInfo."""
    c = _Collector(options)
    name = c.get(V6_DOTS_RI, decode_dots_ri, V6_DOTS_RI)
    addresses = c.get(V6_DOTS_ADDRESS, decode_v6_dots_address) or ()
    refresh = c.get(V6_INFORMATION_REFRESH_TIME, decode_uint32, V6_INFORMATION_REFRESH_TIME)
    return DhcpInfo(
        family=6,
        servers=dots_servers([name] if name else [], [addresses] if addresses else []),
        access_domain=c.get(V6_ACCESS_DOMAIN, decode_domain, V6_ACCESS_DOMAIN),
        domain_list=c.get(V6_DOMAIN_LIST, decode_domain_list, V6_DOMAIN_LIST) or (),
        dns_servers=tuple(
            a for a in c.get(V6_DNS_SERVERS, decode_ipv6_addresses, V6_DNS_SERVERS) or ()
            if usable_address(a)
        ),
        refresh=refresh,
        server_id=server_id,
        problems=tuple(c.problems),
    )


# --- the operator's side: option bytes for a DHCP server ----------------------------------


@dataclass(frozen=True, slots=True)
class EncodedOption:
    family: int
    code: int
    value: bytes
    name: str

    @property
    def wire(self) -> bytes:
        """Code, length and value as they appear in a message (DHCPv4: split, RFC 3396)."""
        if self.family == 4:
            return encode_v4_option(self.code, self.value)
        return encode_v6_option(self.code, self.value)


def encode_for_servers(
    names: Sequence[str],
    addresses: Sequence[IPAddress],
    *,
    seed_lists: Sequence[Sequence[ipaddress.IPv4Address]] = (),
    seed_address_code: int | None = None,
) -> list[EncodedOption]:
    """The DOTS options an operator would configure: RI and ADDRESS for DHCPv4 and DHCPv6
    (RFC 8973 codes), and the seed's multi-list format under ``seed_address_code``."""
    v4 = [a for a in addresses if isinstance(a, ipaddress.IPv4Address)]
    v6 = [a for a in addresses if isinstance(a, ipaddress.IPv6Address)]
    out: list[EncodedOption] = []
    if names:
        ri = encode_dots_ri(names)
        out.append(EncodedOption(6, V6_DOTS_RI, ri, "OPTION_V6_DOTS_RI"))
        out.append(EncodedOption(4, V4_DOTS_RI, ri, "OPTION_V4_DOTS_RI"))
    if v6:
        out.append(EncodedOption(6, V6_DOTS_ADDRESS, encode_v6_dots_address(v6),
                                 "OPTION_V6_DOTS_ADDRESS"))
    if v4:
        out.append(EncodedOption(4, V4_DOTS_ADDRESS, encode_v4_dots_address(v4),
                                 "OPTION_V4_DOTS_ADDRESS"))
    if seed_lists:
        if seed_address_code is None:
            raise MalformedOption(0, "the seed format needs an option code")
        out.append(EncodedOption(4, seed_address_code, encode_seed_v4_dots_address(seed_lists),
                                 "seed DHCPv4 DOTS address (multi-list)"))
    return out
