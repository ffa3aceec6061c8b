"""``dots-gateway discover`` and ``dots-gateway dhcp-option``.

``discover`` runs the procedure once with the real I/O (or the one a test injects) and
prints the ordered candidates with the mechanism behind each row, and, per interface x
family, why the earlier mechanisms gave nothing. ``--json`` prints a list of candidate
objects on stdout (the reasons go to stderr). While it runs, stderr shows each mechanism
as it finishes. When ``--timeout`` passes first, the lookups still pending are abandoned and
what the finished mechanisms found is printed. Exit status: 0 with candidates, 1 without,
2 for a usage or configuration error, 3 when cut short by ``--timeout`` (whatever was found).

``dhcp-option`` is for operators: the DOTS option bytes for given names and addresses, as
hex and in dnsmasq and Kea syntax.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only argparse at import time: ``gateway.cli`` imports this module for every command, so
# the discovery stack (dnspython, zeroconf) loads only when one of these commands runs.
if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.discovery.candidates import Candidate
    from gateway.discovery.dhcp_options import EncodedOption
    from gateway.discovery.engine import DiscoveryIO, IoSettings
    from gateway.discovery.interfaces import InterfaceInfo
    from gateway.discovery.procedure import Procedure
    from gateway.discovery.settings import Overrides

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CUT_SHORT = 0, 1, 2, 3
MECHANISM_NAMES = ("manual", "dhcp", "s-naptr", "dns-sd", "mdns", "anycast")

# A test replaces this to run ``discover`` without touching the host's network.
IoFactory = Callable[["dict[str, InterfaceInfo]", "IoSettings"], "DiscoveryIO"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``discover`` and ``dhcp-option`` to the ``dots-gateway`` subcommands."""
    p = sub.add_parser("discover", help="find upstream DOTS servers once and print them")
    p.add_argument("--config", help="configuration file (default: embedded defaults)")
    p.add_argument("--interface", action="append", help="interface to run on (repeatable; "
                   "default: discovery.interfaces, else every interface that is up)")
    p.add_argument("--family", action="append", type=int, choices=(4, 6),
                   help="address family (repeatable; default: discovery.families)")
    p.add_argument("--domain", action="append",
                   help="domain for S-NAPTR / DNS-SD instead of what DHCP gives (repeatable)")
    p.add_argument("--dns-server", action="append", dest="dns_server",
                   help="DNS server instead of what DHCP gives (repeatable)")
    p.add_argument("--mechanism", action="append", choices=MECHANISM_NAMES,
                   help="run only these mechanisms (repeatable; the order stays the seed's)")
    p.add_argument("--collect-all", action="store_true", default=None,
                   help="run every mechanism instead of stopping at the first that finds some")
    p.add_argument("--dnssec", choices=("off", "prefer", "require"),
                   help="DNSSEC for DNS answers instead of discovery.dnssec (seed §11)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="stop after this many seconds and print what was found so far "
                   "(exit 3; default 30)")
    p.add_argument("--json", action="store_true", help="print a JSON list of candidates")
    p.set_defaults(func=run_discover)

    p = sub.add_parser("dhcp-option",
                       help="print DOTS DHCP option bytes for names and addresses")
    p.add_argument("--name", action="append", default=[],
                   help="DOTS server name (reference identifier), e.g. dots.example.net")
    p.add_argument("--address", action="append", default=[],
                   help="DOTS server address, IPv4 or IPv6 (repeatable, in preference order)")
    p.add_argument("--seed-list", action="append", default=[], metavar="A,B,...",
                   help="one server's IPv4 addresses for the seed's multi-list format")
    p.add_argument("--seed-code", type=int, help="DHCPv4 option code for --seed-list")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_dhcp_option)


# --- discover --------------------------------------------------------------------------------


def run_discover(args: argparse.Namespace, io_factory: IoFactory | None = None,
                 interfaces: dict[str, InterfaceInfo] | None = None) -> int:
    from gateway.config import ConfigError, default_settings, load_config
    from gateway.discovery.errors import DiscoveryError
    from gateway.discovery.settings import Overrides

    try:
        settings = load_config(Path(args.config)) if args.config else default_settings()
        dns_servers = tuple(ipaddress.ip_address(a) for a in args.dns_server or ())
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"discover: --dns-server: {exc}", file=sys.stderr)
        return EXIT_USAGE
    overrides = Overrides(
        interfaces=tuple(args.interface or ()),
        families=tuple(dict.fromkeys(args.family or ())),
        domains=tuple(d.rstrip(".") for d in args.domain or ()),
        dns_servers=dns_servers,
        mechanisms=tuple(args.mechanism or ()),
        collect_all=args.collect_all,
        dnssec=getattr(args, "dnssec", None),
    )
    try:
        return asyncio.run(_discover(settings, overrides, args, io_factory, interfaces))
    except DiscoveryError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _discover(settings: Settings, overrides: Overrides, args: argparse.Namespace,
                    io_factory: IoFactory | None,
                    interfaces: dict[str, InterfaceInfo] | None) -> int:
    from gateway.discovery.engine import DiscoveryEngine, SystemIO, io_settings
    from gateway.discovery.interfaces import list_interfaces, slots_for
    from gateway.discovery.procedure import Procedure
    from gateway.discovery.settings import (
        procedure_settings,
        selected_families,
        selected_interfaces,
    )

    known = interfaces if interfaces is not None else list_interfaces()
    slots, skipped = slots_for(known, selected_interfaces(settings, overrides),
                               selected_families(settings, overrides))
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not slots:
        print("discover: no interface x family to run on", file=sys.stderr)
        return EXIT_FAILURE
    psettings = procedure_settings(settings, overrides)
    io_config = io_settings(settings, psettings)
    io = io_factory(known, io_config) if io_factory else SystemIO(known, io_config)
    try:
        if isinstance(io, SystemIO):
            await io.start_mdns(sorted({s.interface for s in slots}))
        started = time.monotonic()
        procedure = Procedure(psettings, slots, started)
        engine = DiscoveryEngine(procedure, io, on_event=_progress(started))
        candidates = await engine.run_once(time.monotonic() + args.timeout)
    finally:
        await io.close()
    _print(procedure, candidates, args.json, engine.cut_short, args.timeout)
    if engine.cut_short:
        return EXIT_CUT_SHORT
    return EXIT_OK if candidates else EXIT_FAILURE


def _progress(started: float) -> Callable[[object], None]:
    """Progress on stderr: one line per mechanism as it finishes, with the time taken."""
    from gateway.discovery.procedure import MechanismFinished

    def show(event: object) -> None:
        if isinstance(event, MechanismFinished):
            o = event.outcome
            found = f"{o.found} candidate(s)" if o.found else "nothing"
            why = f" - {o.reason}" if o.reason and not o.found else ""
            print(f"discover: {event.slot} {o.mechanism.value}: {found}{why} "
                  f"({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)

    return show


def _dnssec_summary(procedure: Procedure) -> list[str]:
    """Seed §11: what DNSSEC let through and refused in this run."""
    mode = procedure.settings.dnssec.value
    if mode == "off":
        return []
    stats = procedure.dnssec_stats
    used = sum(stats.unvalidated_used.values())
    rejected = sum(stats.rejected.values())
    detail = ", ".join(f"{m} {s}: {n}" for (m, s), n in sorted(stats.unvalidated_used.items()))
    return [f"dnssec {mode}: {used} candidate(s) used from answers DNSSEC did not validate"
            + (f" ({detail})" if detail else "")
            + f"; {rejected} answer(s) refused"]


def _print(procedure: Procedure, candidates: list[Candidate], as_json: bool,
           cut_short: Sequence[Any] = (), timeout: float = 0.0) -> None:
    now = time.monotonic()
    offset = time.time() - now
    reasons = _reasons(procedure, cut_short, timeout) + _dnssec_summary(procedure)
    if cut_short:
        reasons.append(f"cut short: --timeout {timeout:g} s passed with lookups pending on "
                       f"{', '.join(str(s) for s in cut_short)}; "
                       f"{len(candidates)} candidate(s) from the mechanisms that finished")
    if as_json:
        print(json.dumps([c.to_json(now, offset) for c in candidates], indent=2))
        for line in reasons:
            print(line, file=sys.stderr)
        return
    for line in reasons:
        print(line)
    if not candidates:
        print("no candidates")
        return
    header = ("#", "mechanism", "interface", "family", "transport", "address", "port",
              "reference identifier", "expires in", "dnssec", "source")
    rows = [header] + [
        (str(i), c.mechanism.value, c.interface, f"ipv{c.family.value}", c.transport.value,
         str(c.address), str(c.port), c.reference_identifier,
         "-" if c.expires_at is None else f"{c.expires_at - now:.0f} s",
         "-" if c.dnssec is None else c.dnssec.value, c.source)
        for i, c in enumerate(candidates, 1)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    print()
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=False)) + "  " + row[-1])


def _reasons(procedure: Procedure, cut_short: Sequence[Any] = (),
             timeout: float = 0.0) -> list[str]:
    from gateway.discovery.candidates import MECHANISM_ORDER

    lines = []
    for slot in procedure.slots:
        lines.append(f"{slot}:")
        outcomes = (procedure.progress(slot)[1] if slot in cut_short
                    else procedure.outcomes(slot))
        for outcome in outcomes:
            found = f"{outcome.found} candidate(s)" if outcome.found else "nothing"
            why = f" - {outcome.reason}" if outcome.reason else ""
            lines.append(f"  {outcome.mechanism.value:8} {found}{why}")
        if slot in cut_short:
            done = {o.mechanism for o in outcomes}
            pending = [m for m in MECHANISM_ORDER
                       if m in procedure.settings.mechanisms and m not in done]
            for number, mechanism in enumerate(pending):
                why = (f"no answer within --timeout {timeout:g} s" if number == 0
                       else "not tried: cut short")
                lines.append(f"  {mechanism.value:8} cut short - {why}")
    return lines


# --- dhcp-option -----------------------------------------------------------------------------


def run_dhcp_option(args: argparse.Namespace) -> int:
    from gateway.discovery.dhcp_options import encode_for_servers
    from gateway.discovery.errors import DiscoveryError

    try:
        addresses = [ipaddress.ip_address(a) for a in args.address]
        seed_lists = [[ipaddress.IPv4Address(a.strip()) for a in item.split(",") if a.strip()]
                      for item in args.seed_list]
    except ValueError as exc:
        print(f"dhcp-option: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.name and not addresses and not seed_lists:
        print("dhcp-option: give at least one --name, --address or --seed-list", file=sys.stderr)
        return EXIT_USAGE
    if seed_lists and not (args.seed_code and 1 <= args.seed_code <= 254):
        print("dhcp-option: --seed-list needs --seed-code (1-254)", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = encode_for_servers(args.name, addresses, seed_lists=seed_lists,
                                     seed_address_code=args.seed_code)
    except DiscoveryError as exc:
        print(f"dhcp-option: {exc}", file=sys.stderr)
        return EXIT_USAGE
    described = [_describe(option) for option in options]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    for item in described:
        print(f"DHCPv{item['family']} option {item['code']} ({item['name']}), "
              f"{item['length']} octets")
        print(f"  value: {item['value_hex']}")
        print(f"  wire:  {item['wire_hex']}")
        print(f"  dnsmasq: {item['dnsmasq']}")
        print(f"  kea:     {json.dumps(item['kea'])}")
        if item.get("note"):
            print(f"  note: {item['note']}")
    return EXIT_OK


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _describe(option: EncodedOption) -> dict[str, Any]:
    v6 = option.family == 6
    prefix = "option6:" if v6 else ""
    if option.name.endswith("DOTS_ADDRESS") and v6:
        # dnsmasq writes IPv6 addresses in brackets; IPv4-mapped ones as ::ffff:a.b.c.d.
        addrs = [ipaddress.IPv6Address(option.value[i:i + 16])
                 for i in range(0, len(option.value), 16)]
        dnsmasq = f"dhcp-option={prefix}{option.code}," + ",".join(f"[{a}]" for a in addrs)
    elif option.name.endswith("DOTS_ADDRESS"):
        addrs4 = [ipaddress.IPv4Address(option.value[i:i + 4])
                  for i in range(0, len(option.value), 4)]
        dnsmasq = f"dhcp-option={option.code}," + ",".join(str(a) for a in addrs4)
    else:
        dnsmasq = f"dhcp-option={prefix}{option.code},{_colon_hex(option.value)}"
    item: dict[str, Any] = {
        "family": option.family,
        "code": option.code,
        "name": option.name,
        "length": len(option.value),
        "value_hex": option.value.hex(),
        "wire_hex": option.wire.hex(),
        "dnsmasq": dnsmasq,
        # Kea accepts options it has no definition for in binary form (csv-format false).
        "kea": {"code": option.code, "space": "dhcp6" if v6 else "dhcp4",
                "csv-format": False, "data": option.value.hex().upper()},
    }
    if not v6 and len(option.value) > 255:
        item["note"] = ("longer than 255 octets: sent as several instances (RFC 3396); "
                        "dnsmasq 2.90 refuses such options ('dhcp-option too long')")
    return item


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.discovery.cli discover ...``: the same commands on their own."""
    parser = argparse.ArgumentParser(prog="dots-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
