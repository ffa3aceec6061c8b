"""DHCP messages for discovery: DHCPINFORM (RFC 2131 §3.4) and DHCPv6 Information-request
(RFC 8415 §18.2.6), built and parsed without any I/O.

The client already has its address; it only asks for configuration. The DHCPv4 Parameter
Request List names both DOTS options (seed §9.2.3: MUST include both), the access-network
domain (seed §7.1.1: MUST), the domain name (MAY) and the DNS servers; the DHCPv6 ORO names
the DOTS options, the access-network domain (seed §7.1.1: MUST), DNS servers, the domain
list and the information refresh time. ``parse_*`` return ``DhcpInfo`` or raise
``MalformedPacket``; a reply to somebody else's transaction is ``NotOurs`` (ignored, not
an error).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.discovery import dhcp_options as o
from gateway.discovery.errors import MalformedPacket

V4_SERVER_PORT, V4_CLIENT_PORT = 67, 68
V6_SERVER_PORT, V6_CLIENT_PORT = 547, 546
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = "ff02::1:2"  # RFC 8415 §7.1

_MAGIC_COOKIE = b"\x63\x82\x53\x63"  # RFC 2131 §3
_BOOTP = struct.Struct("!BBBB4sHH4s4s4s4s16s64s128s")  # the 236-octet fixed header
_BOOTREQUEST, _BOOTREPLY = 1, 2
_HTYPE_ETHERNET = 1
DHCPINFORM, DHCPACK, DHCPNAK = 8, 5, 6
V6_INFORMATION_REQUEST, V6_REPLY = 11, 7
_DUID_LL = 3  # RFC 8415 §11.4


class NotOurs(Exception):
    """A well-formed message that is not the answer to our transaction."""


@dataclass(frozen=True, slots=True)
class V4Request:
    xid: int
    packet: bytes


def build_inform(
    xid: int,
    mac: bytes,
    ciaddr: ipaddress.IPv4Address,
    *,
    extra_codes: Sequence[int] = (),
) -> V4Request:
    """A DHCPINFORM from ``ciaddr``. ``extra_codes`` adds the seed-format option codes the
    operator configured to the Parameter Request List."""
    requested = [
        o.V4_DNS_SERVERS,
        o.V4_DOMAIN_NAME,  # seed §7.1.1: MAY, when 213 is not available
        o.V4_DOTS_RI,  # seed §9.2.3: MUST request both RI ...
        o.V4_DOTS_ADDRESS,  # ... and ADDRESS
        o.V4_ACCESS_DOMAIN,  # seed §7.1.1: MUST request the access network domain
        *extra_codes,
    ]
    prl = bytes(dict.fromkeys(requested))
    header = _BOOTP.pack(
        _BOOTREQUEST, _HTYPE_ETHERNET, len(mac), 0, xid.to_bytes(4, "big"), 0, 0,
        ciaddr.packed, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"), b"", b"",
    )  # fmt: skip
    options = (
        _MAGIC_COOKIE
        + o.encode_v4_option(o.V4_MESSAGE_TYPE, bytes((DHCPINFORM,)))
        + o.encode_v4_option(o.V4_PARAMETER_REQUEST_LIST, prl)
        + bytes((o.V4_END,))
    )
    return V4Request(xid, header + options)


def v4_reply_options(packet: bytes, xid: int) -> tuple[dict[int, bytes], str]:
    """The joined options of a DHCPACK to our DHCPINFORM, and the server's address.

    RFC 3396 §7 order: the options field, then ``file``, then ``sname`` when the overload
    option (52) says they carry options.
    """
    if len(packet) < _BOOTP.size + 4:
        raise MalformedPacket(f"{len(packet)} octets, shorter than a DHCP header")
    fields = _BOOTP.unpack_from(packet)
    op, reply_xid, siaddr = fields[0], fields[4], fields[9]
    sname, file_field = fields[12], fields[13]
    if op != _BOOTREPLY:
        raise NotOurs("not a BOOTREPLY")
    if int.from_bytes(reply_xid, "big") != xid:
        raise NotOurs("another transaction")
    if packet[_BOOTP.size : _BOOTP.size + 4] != _MAGIC_COOKIE:
        raise MalformedPacket("no DHCP magic cookie")
    instances = o.parse_v4_options(packet[_BOOTP.size + 4 :])
    overload = o.join_v4_options(instances).get(o.V4_OVERLOAD, b"")
    if overload:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"option overload value {overload.hex()} is invalid")
        if overload[0] & 1:
            instances += o.parse_v4_options(file_field)
        if overload[0] & 2:
            instances += o.parse_v4_options(sname)
    options = o.join_v4_options(instances)
    message_type = options.get(o.V4_MESSAGE_TYPE, b"")
    if message_type == bytes((DHCPNAK,)):
        raise MalformedPacket("the server answered DHCPNAK")
    if message_type != bytes((DHCPACK,)):
        raise MalformedPacket(f"message type {message_type.hex() or 'missing'}, not DHCPACK")
    return options, str(ipaddress.IPv4Address(siaddr))


def parse_inform_reply(
    packet: bytes,
    xid: int,
    *,
    seed_address_code: int | None = None,
    seed_ri_code: int | None = None,
) -> o.DhcpInfo:
    options, _siaddr = v4_reply_options(packet, xid)
    return o.interpret_v4(
        options, seed_address_code=seed_address_code, seed_ri_code=seed_ri_code
    )


@dataclass(frozen=True, slots=True)
class V6Request:
    transaction_id: int
    packet: bytes


V6_REQUESTED = (
    o.V6_DOTS_RI,
    o.V6_DOTS_ADDRESS,
    o.V6_ACCESS_DOMAIN,  # seed §7.1.1: MUST request it in the ORO
    o.V6_DNS_SERVERS,
    o.V6_DOMAIN_LIST,
    o.V6_INFORMATION_REFRESH_TIME,  # RFC 8415 §18.2.6: SHOULD be in an Information-request
)


def build_information_request(transaction_id: int, mac: bytes) -> V6Request:
    """An Information-request with a DUID-LL client identifier, an ORO and elapsed time 0."""
    if not 0 <= transaction_id < 1 << 24:
        raise ValueError("transaction-id is 24 bits")
    duid = struct.pack("!HH", _DUID_LL, _HTYPE_ETHERNET) + mac
    oro = b"".join(struct.pack("!H", code) for code in V6_REQUESTED)
    packet = (
        bytes((V6_INFORMATION_REQUEST,))
        + transaction_id.to_bytes(3, "big")
        + o.encode_v6_option(o.V6_CLIENTID, duid)
        + o.encode_v6_option(o.V6_ORO, oro)
        + o.encode_v6_option(o.V6_ELAPSED_TIME, b"\0\0")  # RFC 8415 §21.9: MUST be included
    )
    return V6Request(transaction_id, packet)


def parse_information_reply(packet: bytes, transaction_id: int) -> o.DhcpInfo:
    if len(packet) < 4:
        raise MalformedPacket(f"{len(packet)} octets, shorter than a DHCPv6 header")
    if packet[0] != V6_REPLY:
        raise NotOurs(f"message type {packet[0]}, not Reply")
    if int.from_bytes(packet[1:4], "big") != transaction_id:
        raise NotOurs("another transaction")
    options = o.first_v6_options(o.parse_v6_options(packet[4:]))
    status = options.get(o.V6_STATUS_CODE)
    if status is not None and len(status) >= 2 and status[:2] != b"\0\0":
        code = int.from_bytes(status[:2], "big")
        text = status[2:].decode("utf-8", "replace")
        raise MalformedPacket(f"the server answered status {code} {text!r}")
    server_id = options.get(o.V6_SERVERID, b"").hex()
    return o.interpret_v6(options, server_id=server_id)
