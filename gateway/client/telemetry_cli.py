"""``dots-client telemetry ...``: RFC 9244 telemetry from the command line.

``setup`` (PUT /tm-setup), ``get-setup``, ``delete-setup``; ``put`` (PUT /tm), ``get``
(``--observe``), ``delete``. Bodies are JSON in the RFC's notation (a file, or stdin with
``-``), or built from a few options for the common cases. The command-line plumbing
(connection, printing, exit codes) is ``gateway.client.cli``'s, handed in as ``Tools`` so
that this module does not import it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway.dots.errors import DotsProtocolError

_SETUP = "ietf-dots-telemetry:telemetry-setup"
_TELEMETRY = "ietf-dots-telemetry:telemetry"


@dataclass(frozen=True)
class Tools:
    """What ``gateway.client.cli`` lends: its client factory, printer, verdict, follower."""

    client: Callable[..., Any]
    print: Callable[[Any, argparse.Namespace], None]
    verdict: Callable[[Any], int]
    follow: Callable[[Any, argparse.Namespace], Awaitable[int]]
    usage_error: type[Exception]
    run: Callable[[argparse.Namespace], int]


def add_telemetry_parser(sub: Any, common: list[argparse.ArgumentParser], tools: Tools) -> None:
    p = sub.add_parser("telemetry", parents=common,
                       help="signal-channel telemetry (RFC 9244): setup and pre-mitigation",
                       description="Telemetry setup (tm-setup: configuration, pipe capacity, "
                       "baselines) and pre-or-ongoing-mitigation telemetry (tm). Bodies are "
                       "JSON in the RFC's notation, from FILE (or - for stdin), or built "
                       "from the options.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("setup", parents=common, help="PUT a telemetry setup (tm-setup)")
    a.add_argument("input", nargs="?", help="JSON body file, - for stdin")
    a.add_argument("--tsid", type=int, help="default: a new tsid, saved in the state directory")
    a.add_argument("--percentiles", metavar="LOW,MID,HIGH",
                   help="current-config percentiles, e.g. 10,50,90 (0 disables low)")
    a.add_argument("--notify-interval", type=int, metavar="S",
                   help="current-config telemetry-notify-interval")
    a.add_argument("--pipe", action="append", metavar="LINK=CAPACITY:UNIT",
                   help="total-pipe-capacity of a link, e.g. link1=10:gigabit-ps (repeatable)")
    a = actions.add_parser("get-setup", parents=common,
                           help="GET the server's limits and our setups, or one tsid")
    a.add_argument("--tsid", type=int)
    a = actions.add_parser("delete-setup", parents=common,
                           help="DELETE one tsid, or all our setups without --tsid")
    a.add_argument("--tsid", type=int)
    a = actions.add_parser("put", parents=common,
                           help="PUT pre-or-ongoing-mitigation telemetry (tm)")
    a.add_argument("input", nargs="?", help="JSON body file, - for stdin")
    a.add_argument("--tmid", type=int, help="default: a new tmid, saved in the state directory")
    a.add_argument("--target-prefix", action="extend", nargs="+", metavar="PREFIX",
                   help="the target, e.g. 192.0.2.0/24")
    a.add_argument("--total-traffic", metavar="PEAK:UNIT",
                   help="peak of total traffic, e.g. 1200:megabit-ps")
    a.add_argument("--total-attack-traffic", metavar="PEAK:UNIT",
                   help="peak of attack traffic, e.g. 900:megabit-ps")
    a = actions.add_parser("get", parents=common, help="GET our telemetry, or observe it")
    a.add_argument("--tmid", type=int, help="one tmid (default: all of ours)")
    a.add_argument("--observe", action="store_true", help="keep printing notifications")
    a.add_argument("--count", type=int, metavar="K", help="stop after K notifications")
    a = actions.add_parser("delete", parents=common,
                           help="DELETE one tmid, or all of ours without --tmid")
    a.add_argument("--tmid", type=int)

    async def coroutine(args: argparse.Namespace) -> int:
        return await _telemetry(args, tools)

    p.set_defaults(func=tools.run, coroutine=coroutine)


async def _telemetry(args: argparse.Namespace, tools: Tools) -> int:
    action = args.action
    body = _body_for(args, tools) if action in ("setup", "put") else None
    if getattr(args, "count", None) is not None and not getattr(args, "observe", False):
        raise tools.usage_error("--count goes with --observe")
    async with tools.client(args) as client:
        if action == "setup":
            reply = await client.telemetry_setup(body, tsid=args.tsid)
        elif action == "get-setup":
            reply = await client.telemetry_setup_get(args.tsid)
        elif action == "delete-setup":
            reply = await client.telemetry_setup_delete(args.tsid)
        elif action == "put":
            reply = await client.telemetry(body, tmid=args.tmid)
        elif action == "delete":
            reply = await client.telemetry_delete(args.tmid)
        elif not args.observe:
            reply = await client.telemetry_get(args.tmid)
        else:
            observation = await client.telemetry_observe(args.tmid)
            tools.print(observation.first, args)
            if not observation.first.ok:
                return tools.verdict(observation.first)
            return await tools.follow(observation, args)
        tools.print(reply, args)
        return tools.verdict(reply)


def scope_telemetry_file(source: str | None,
                         usage_error: type[Exception]) -> tuple[tuple[int, Any], ...]:
    """``--telemetry FILE`` of ``mitigate``/``efficacy``: §8.1 attributes for the scope."""
    from gateway.dots.telemetry import scope_telemetry_from_json

    if source is None:
        return ()
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        return scope_telemetry_from_json(json.loads(text))
    except OSError as exc:
        raise usage_error(f"{source}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise usage_error(f"{source}: not JSON: {exc}") from None
    except DotsProtocolError as exc:
        raise usage_error(f"{source}: {exc.diagnostic}") from None


def _body_for(args: argparse.Namespace, tools: Tools) -> bytes:
    """The CBOR body: the JSON input, or one built from the options (not both)."""
    from gateway.dots.telemetry import body_from_json

    built = _from_options(args, tools)
    if args.input is not None and built is not None:
        raise tools.usage_error("give a JSON body or the body options, not both")
    if args.input is None and built is None:
        raise tools.usage_error(f"telemetry {args.action} needs a JSON body (FILE or -) or "
                                "body options (see --help)")
    if built is None:
        try:
            text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
            built = json.loads(text)
        except OSError as exc:
            raise tools.usage_error(f"{args.input}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise tools.usage_error(f"{args.input}: not JSON: {exc}") from None
    try:
        return body_from_json(built)
    except DotsProtocolError as exc:
        raise tools.usage_error(f"the body is not a telemetry message: {exc.diagnostic}"
                                ) from None


def _from_options(args: argparse.Namespace, tools: Tools) -> dict[str, Any] | None:
    if args.action == "setup":
        config: dict[str, Any] = {}
        if args.percentiles is not None:
            parts = args.percentiles.split(",")
            if len(parts) != 3:
                raise tools.usage_error("--percentiles takes LOW,MID,HIGH")
            for name, text in zip(("low", "mid", "high"), parts, strict=True):
                config[f"{name}-percentile"] = str(_percent(text, tools))
        if args.notify_interval is not None:
            config["telemetry-notify-interval"] = args.notify_interval
        entries: list[dict[str, Any]] = []
        if config:
            entries.append({"current-config": config})
        if args.pipe:
            entries.append({"total-pipe-capacity": [_link(text, tools) for text in args.pipe]})
        if len(entries) > 1:
            raise tools.usage_error("one setup type per tsid: configuration (--percentiles, "
                                    "--notify-interval) or --pipe (RFC 9244 §7)")
        return {_SETUP: {"telemetry": entries}} if entries else None
    entry: dict[str, Any] = {}
    if args.target_prefix:
        entry["target"] = {"target-prefix": args.target_prefix}
    for option, name in (("total_traffic", "total-traffic"),
                         ("total_attack_traffic", "total-attack-traffic")):
        value = getattr(args, option)
        if value is not None:
            peak, unit = _rate(value, tools)
            entry[name] = [{"unit": unit, "peak-g": str(peak)}]
    return {_TELEMETRY: {"pre-or-ongoing-mitigation": [entry]}} if entry else None


def _percent(text: str, tools: Tools) -> Decimal:
    try:
        return Decimal(text).quantize(Decimal("0.01"))
    except InvalidOperation:
        raise tools.usage_error(f"not a percentile: {text!r}") from None


def _rate(text: str, tools: Tools) -> tuple[int, str]:
    peak, _, unit = text.partition(":")
    if not peak.isdigit() or not unit:
        raise tools.usage_error(f"{text!r}: expected PEAK:UNIT, e.g. 900:megabit-ps")
    return int(peak), unit


def _link(text: str, tools: Tools) -> dict[str, Any]:
    link, _, rest = text.partition("=")
    capacity, unit = _rate(rest, tools)
    if not link:
        raise tools.usage_error(f"{text!r}: expected LINK=CAPACITY:UNIT")
    return {"link-id": link, "capacity": str(capacity), "unit": unit}
