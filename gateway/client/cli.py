"""``dots-client``: the command-line DOTS client.

Session commands talk to a DOTS server through ``gateway.client.role.DotsClient``:
``config get|put``, ``mitigate``, ``efficacy``, ``withdraw``, ``get`` (``--observe``),
``hb`` and ``telemetry ...`` (RFC 9244, ``gateway.client.telemetry_cli``). Each request
and its answer are printed as one JSON document in the RFC's notation
(``--cbor`` adds the wire bytes in hex). ``encode``/``decode`` convert between that JSON and
the CBOR wire form without any network, so requests can be fed to other CoAP tools.
``data ...`` speaks the DOTS data channel (RFC 8783, HTTPS): ``gateway.client.data_cli``.

Redirects (RFC 9132 §4.6) are followed: each one is noted on stderr, and the printed
exchange is the one with the server that finally answered.

Exit codes: 0 success, 2 usage error, 3 DOTS error response (4.xx/5.xx; code and diagnostic
on stderr), 4 network failure (handshake refused or timed out, no answer in time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.client.data_cli import add_data_parser
from gateway.client.telemetry_cli import Tools, add_telemetry_parser, scope_telemetry_file
from gateway.config.loading import DEFAULT_STATE_DIR  # the same ./state as dots-gateway
from gateway.dots.codec import cbor_to_json, json_to_cbor
from gateway.dots.errors import DotsProtocolError, DotsUsageError

EXIT_OK, EXIT_DOTS_ERROR, EXIT_USAGE, EXIT_NETWORK = 0, 3, 2, 4
#: Seconds for the handshake and for each answer. Behind a gateway a request may take the
#: gateway's own upstream bound (``gateway.request_timeout``, default 10 s) before its 5.03:
#: the client waits longer, so that answer is what it reports (issue 20 §4).
DEFAULT_TIMEOUT = 15.0
_CONFIG_OPTIONS = (  # (option, SessionParameters field, type)
    ("--heartbeat-interval", "heartbeat_interval", int),
    ("--missing-hb-allowed", "missing_hb_allowed", int),
    ("--probing-rate", "probing_rate", int),
    ("--max-retransmit", "max_retransmit", int),
    ("--ack-timeout", "ack_timeout", Decimal),
    ("--ack-random-factor", "ack_random_factor", Decimal),
)


_TELEMETRY_HELP = ("JSON object of RFC 9244 attack telemetry to carry in the scope "
                   '(e.g. {"ietf-dots-telemetry:total-attack-traffic": [{"unit": '
                   '"megabit-ps", "peak-g": "900"}]}), or - for stdin')


class UsageError(Exception):
    """Bad arguments or local files: exit 2."""


# --- offline commands ------------------------------------------------------------------------


# Their errors are the user's input, not a server's answer: usage errors (exit 2) whose
# message names the input and, for bodies a server would refuse, what it would say.


def _read(source: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"{source}: {exc.strerror or exc}") from None


def _name(source: str) -> str:
    return "stdin" if source == "-" else source


def _encode(args: argparse.Namespace) -> int:
    from gateway.dots.telemetry import body_from_json

    try:
        text = _read(args.input).decode("utf-8")
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None  # json_to_cbor names the JSON error
        if isinstance(obj, dict) and any(str(k).startswith("ietf-dots-telemetry:")
                                         for k in obj):
            data = body_from_json(obj)  # an RFC 9244 /tm-setup or /tm body
        else:
            data = json_to_cbor(text)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{_name(args.input)}: not UTF-8 text (byte {exc.start})") from None
    except DotsProtocolError as exc:
        raise UsageError(f"{_name(args.input)}: {exc.diagnostic}") from None
    if args.output:
        try:
            Path(args.output).write_bytes(data)
        except OSError as exc:
            raise UsageError(f"{args.output}: {exc.strerror or exc}") from None
    else:
        print(data.hex())
    return EXIT_OK


def _decode(args: argparse.Namespace) -> int:
    raw = _read(args.input)
    if args.hex:
        try:
            raw = bytes.fromhex(raw.decode("ascii"))
        except ValueError:  # UnicodeDecodeError included
            raise UsageError(f"{_name(args.input)}: not hex digits") from None
    from gateway.dots.telemetry import body_to_json

    try:
        doc = cbor_to_json(raw)
    except DotsProtocolError as exc:
        try:
            doc = body_to_json(raw)  # an RFC 9244 /tm-setup or /tm body
        except DotsProtocolError:
            raise UsageError(f"{_name(args.input)}: {exc.diagnostic}") from None
    print(json.dumps(doc, indent=2))
    return EXIT_OK


# --- session commands ------------------------------------------------------------------------


def _option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, name, default)


def _credentials(args: argparse.Namespace) -> Any:
    from gateway.transport.tls_context import ClientCredentials

    cert, key, ca = _option(args, "cert"), _option(args, "key"), _option(args, "ca")
    identity, psk = _option(args, "psk_identity"), _option(args, "psk")
    if identity is not None or psk is not None:
        if identity is None or psk is None:
            raise UsageError("--psk-identity and --psk go together")
        if cert is not None or key is not None:
            raise UsageError("use either --cert/--key or --psk-identity/--psk, not both")
        try:
            secret = bytes.fromhex(psk[4:]) if psk.startswith("hex:") else psk.encode("utf-8")
        except ValueError:
            raise UsageError("--psk hex:... must be followed by hex digits") from None
        return ClientCredentials(server_ca=_existing(ca) if ca else None,
                                 psk_identity=identity.encode("utf-8"), psk_key=secret)
    if cert is not None or key is not None:
        if cert is None or key is None or ca is None:
            raise UsageError("--cert needs --key and --ca (the CA that signs the server)")
        return ClientCredentials(_existing(cert), _existing(key), _existing(ca))
    state_dir = Path(_option(args, "state_dir") or DEFAULT_STATE_DIR)
    for directory in (state_dir / "pki", state_dir):
        cert, key, ca = (directory / n for n in ("client.pem", "client.key", "ca.pem"))
        if cert.is_file() and key.is_file() and ca.is_file():
            return ClientCredentials(cert, key, ca)
    raise UsageError(f"no credentials: give --cert/--key/--ca or --psk-identity/--psk, or put "
                     f"a dev PKI (dots-gateway certs init) in {state_dir / 'pki'}")


def _existing(name: str) -> Path:
    path = Path(name)
    if not path.is_file():
        raise UsageError(f"{name}: no such file")
    return path


def _client(args: argparse.Namespace, **options: Any) -> Any:
    from gateway.client.connect import parse_server
    from gateway.client.role import DotsClient

    credentials = _credentials(args)
    server = _option(args, "server")
    try:
        spec = parse_server(server) if server else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if spec is not None and _option(args, "server_name"):
        from dataclasses import replace

        spec = replace(spec, server_name=args.server_name)
    timeout = float(_option(args, "timeout", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT)
    state_dir = Path(_option(args, "state_dir") or DEFAULT_STATE_DIR)
    try:
        return DotsClient(credentials, spec, state_dir=state_dir, handshake_timeout=timeout,
                          request_timeout=timeout, negotiate=False, reconnect=False,
                          on_redirect=_note_redirect, **options)
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _document(reply: Any, *, cbor: bool) -> dict[str, Any]:
    """One exchange (or notification) as printed: request line, options, JSON bodies."""
    from gateway.client.connect import Transport

    request, response = reply.request, reply.response
    uri = f"{reply.endpoint.uri}/{'/'.join(request.path)}"
    if request.query:
        uri += "?" + "&".join(request.query)
    req: dict[str, Any] = {"method": request.method.name, "uri": uri}
    if reply.endpoint.transport is Transport.UDP:
        req["type"] = "CON" if reply.confirmable else "NON"
    if request.observe is not None:
        req["observe"] = request.observe
    if request.if_match:
        req["if-match"] = [v.hex() for v in request.if_match]
    if request.payload:
        req["body"] = _body(request.payload)
        if cbor:
            req["cbor"] = request.payload.hex()
    resp: dict[str, Any] = {"code": reply.dotted}
    if reply.observe is not None:
        resp["observe"] = reply.observe
    if response.max_age is not None:
        resp["max-age"] = response.max_age
    if reply.message is not None or (response.payload and not response.diagnostic):
        resp["body"] = _body(response.payload)  # a DOTS message, or telemetry (RFC 9244)
    elif response.payload:
        resp["diagnostic"] = reply.diagnostic
    if cbor and response.payload:
        resp["cbor"] = response.payload.hex()
    doc: dict[str, Any] = {"request": req, "response": resp}
    if reply.mid is not None and request.path[2:3] == ("mitigate",):
        doc = {"mid": reply.mid, **doc}
    return doc


def _note_redirect(reply: Any) -> None:
    from gateway.client.messages import request_label

    redirect = reply.redirect
    records = ", ".join(str(a) for a in redirect.alt_server_record)
    print(f"dots-client: {reply.endpoint.uri} redirected {request_label(reply.request)} to "
          f"{redirect.alt_server}{f' ({records})' if records else ''}, Max-Age "
          f"{reply.response.max_age}", file=sys.stderr, flush=True)


def _body(payload: bytes) -> Any:
    from gateway.dots.telemetry import body_to_json

    try:
        return cbor_to_json(payload)
    except DotsProtocolError as exc:
        try:
            return body_to_json(payload)
        except DotsProtocolError:
            return {"undecodable": exc.diagnostic, "hex": payload.hex()}


def _print(reply: Any, args: argparse.Namespace) -> None:
    print(json.dumps(_document(reply, cbor=bool(_option(args, "cbor"))), indent=2), flush=True)


def _verdict(reply: Any) -> int:
    if reply.ok:
        return EXIT_OK
    detail = reply.diagnostic
    if reply.conflict is not None:
        detail = f"conflict: {reply.conflict.conflict_cause.label}"
        if reply.conflict.conflict_scope is not None and reply.conflict.conflict_scope.mid:
            detail += f" with mid {reply.conflict.conflict_scope.mid}"
    elif reply.redirect is not None:
        detail = (f"redirected to {reply.redirect.alt_server} (Max-Age "
                  f"{reply.response.max_age}), and the redirect could not be followed "
                  "(see the notes above; -v for details)")
    print(f"dots-client: {reply.dotted} {detail}".rstrip(), file=sys.stderr)
    return EXIT_DOTS_ERROR


async def _config(args: argparse.Namespace) -> int:
    if args.action == "get":
        async with _client(args) as client:
            reply = await client.config_get(args.sid)
            _print(reply, args)
            return _verdict(reply)
    from dataclasses import replace

    from gateway.dots.session_config import SessionParameters

    chosen = {field: getattr(args, field) for _opt, field, _t in _CONFIG_OPTIONS
              if getattr(args, field) is not None}
    preferred = replace(SessionParameters(), **chosen)
    async with _client(args, preferred_idle=preferred, preferred_mitigating=preferred) as client:
        replies = await client.negotiate_config()
        # One document: the PUT, and under "negotiated" the GET of its sid (the values in
        # force and their Max-Age); only the first GET when the limits could not be read.
        cbor = bool(_option(args, "cbor"))
        doc = _document(replies[1] if len(replies) > 1 else replies[0], cbor=cbor)
        if len(replies) > 2:
            doc["negotiated"] = _document(replies[2], cbor=cbor)
        print(json.dumps(doc, indent=2), flush=True)
        return _verdict(replies[-1])


async def _mitigate(args: argparse.Namespace) -> int:
    from gateway.client.messages import make_scope, parse_port_range

    try:
        scope = make_scope(target_prefix=args.target_prefix or (),
                           target_port_range=[parse_port_range(p) for p in args.port or ()],
                           target_protocol=args.protocol or (), target_fqdn=args.fqdn or (),
                           target_uri=args.uri or (), alias_name=args.alias or (),
                           lifetime=args.lifetime,
                           trigger_mitigation=False if args.no_trigger else None,
                           acl_list=args.acl)
    except (DotsProtocolError, DotsUsageError, ValueError) as exc:
        raise UsageError(getattr(exc, "diagnostic", str(exc))) from None
    from dataclasses import replace

    # Telemetry attributes join the scope's other extensions (RFC 9133's acl-list is one).
    scope = replace(scope, extensions=scope.extensions
                    + scope_telemetry_file(args.telemetry, UsageError))
    async with _client(args) as client:
        reply = await client.mitigate(scope, mid=args.mid)
        _print(reply, args)
        return _verdict(reply)


async def _efficacy(args: argparse.Namespace) -> int:
    from gateway.dots.codes import AttackStatus

    status = AttackStatus.from_label(args.attack_status)
    scope_telemetry_file(args.telemetry, UsageError)  # a bad file stops before connecting
    async with _client(args) as client:
        # §4.4.3: the update repeats the original parameters; the server has them.
        current = await client.get(args.mid)
        if not current.ok or len(current.scopes) != 1:
            _print(current, args)
            return _verdict(current)
        reply = await client.efficacy_update(
            args.mid, current.scopes[0], status,
            telemetry=scope_telemetry_file(args.telemetry, UsageError))
        _print(reply, args)
        return _verdict(reply)


async def _withdraw(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        reply = await client.withdraw(args.mid)
        _print(reply, args)
        return _verdict(reply)


async def _get(args: argparse.Namespace) -> int:
    if args.count is not None and not args.observe:
        raise UsageError("--count goes with --observe")
    async with _client(args) as client:
        if not args.observe:
            reply = await client.get(args.mid)
            _print(reply, args)
            return _verdict(reply)
        observation = await client.observe(args.mid)
        _print(observation.first, args)
        if not observation.first.ok:
            return _verdict(observation.first)
        return await _follow(observation, args)


async def _follow(observation: Any, args: argparse.Namespace) -> int:
    """Print notifications until --count of them, the end of the observation, or a signal."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    seen, result = 0, EXIT_OK
    stopper = asyncio.ensure_future(stop.wait())
    try:
        while args.count is None or seen < args.count:
            step = asyncio.ensure_future(observation.__anext__())
            await asyncio.wait({step, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                break
            try:
                reply = step.result()
            except StopAsyncIteration:
                print("dots-client: the observation has ended", file=sys.stderr)
                break
            seen += 1
            _print(reply, args)
            if not reply.ok:
                result = _verdict(reply)
                break
    finally:
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopper
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await observation.cancel()
    return result


async def _hb(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        reply = await client.heartbeat()
        _print(reply, args)
        return _verdict(reply)


def _run(args: argparse.Namespace) -> int:
    from gateway.client.connect import NetworkError
    from gateway.ops.logsetup import configure_logging

    configure_logging("kv", "info" if _option(args, "verbose") else "warning")
    try:
        return int(asyncio.run(args.coroutine(args)))
    except NetworkError as exc:
        print(f"dots-client: network failure: {exc}", file=sys.stderr)
        return EXIT_NETWORK
    finally:
        logging.getLogger().handlers.clear()


# --- arguments -------------------------------------------------------------------------------


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Connection options, accepted before or after the command."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--server", metavar="URI", default=default,
                   help="coaps://HOST[:PORT] (DTLS), coaps+tcp://HOST[:PORT] (TLS) or "
                   "HOST[:PORT] (both, Happy Eyeballs); default: localhost, both, port 4646; "
                   "for data: https://HOST[:PORT], default https://localhost:8443")
    g.add_argument("--server-name", default=default,
                   help="name the server certificate must match (default: the URI's host)")
    g.add_argument("--cert", default=default, help="client certificate chain (PEM)")
    g.add_argument("--key", default=default, help="client private key (PEM)")
    g.add_argument("--ca", default=default, help="CA certificate(s) that sign the server")
    g.add_argument("--psk-identity", default=default, help="PSK identity (instead of --cert)")
    g.add_argument("--psk", default=default, help="PSK as text, or hex:HEXDIGITS")
    g.add_argument("--state-dir", default=default,
                   help="mid counter and dev PKI (DIR/pki) (default: ./state)")
    g.add_argument("--timeout", type=float, default=default, metavar="S",
                   help="seconds for the handshake and for each answer (default: "
                   f"{DEFAULT_TIMEOUT:g}: longer than a gateway's own upstream bound, "
                   "gateway.request_timeout = 10, so its 5.03 arrives first)")
    g.add_argument("--cbor", action="store_true", default=default,
                   help="also print the CBOR bodies in hex")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="log protocol events on stderr")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dots-client", description="DOTS signal-channel client (RFC 9132).",
        parents=[_common(False)],
        epilog="exit codes: 0 success, 2 usage error, 3 DOTS error response, "
        "4 network failure")
    parser.add_argument("--version", action="version", version=f"dots-client {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = [_common(True)]

    p = sub.add_parser("encode", help="RFC-style JSON -> application/dots+cbor")
    p.add_argument("input", nargs="?", default="-", help="JSON file (default: stdin)")
    p.add_argument("-o", "--output", help="write binary CBOR here (default: hex on stdout)")
    p.set_defaults(func=_encode)
    p = sub.add_parser("decode", help="application/dots+cbor -> RFC-style JSON")
    p.add_argument("input", nargs="?", default="-", help="CBOR file (default: stdin)")
    p.add_argument("--hex", action="store_true", help="input is hex text")
    p.set_defaults(func=_decode)

    p = sub.add_parser("config", parents=common, help="session configuration (RFC 9132 §4.5)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("get", parents=common, help="the server's limits, or one sid")
    a.add_argument("--sid", type=int, help="the negotiated values of this sid")
    a = actions.add_parser("put", parents=common,
                           help="negotiate: GET limits, PUT our values (clamped) with a new sid")
    for option, field, kind in _CONFIG_OPTIONS:
        a.add_argument(option, dest=field, type=_decimal if kind is Decimal else int,
                       help="preferred value, for both idle and mitigating sets")
    p.set_defaults(func=_run, coroutine=_config)

    p = sub.add_parser("mitigate", parents=common, help="request a mitigation (PUT)",
                       description="Request a mitigation (RFC 9132 §4.4.1). Give at least "
                       "one target: --target-prefix, --fqdn, --uri or --alias. Each list "
                       "option takes several values and may be repeated. --acl with --mid of "
                       "an active mitigation activates or deactivates filters during it "
                       "(RFC 9133).")
    p.add_argument("--target-prefix", action="extend", nargs="+", metavar="PREFIX",
                   help="attacked prefix, e.g. 192.0.2.0/24 or 2001:db8::/48 (host bits zero)")
    p.add_argument("--port", action="extend", nargs="+", metavar="N|LOW-HIGH",
                   help="attacked port or port range, e.g. 443 or 1024-2047")
    p.add_argument("--protocol", action="extend", nargs="+", type=_protocol,
                   metavar="NAME|N", help="attacked protocol: a name (" +
                   ", ".join(_PROTOCOLS) + ") or an IANA protocol number 0-255")
    p.add_argument("--fqdn", action="extend", nargs="+", metavar="NAME",
                   help="attacked DNS name, e.g. www.example.com")
    p.add_argument("--uri", action="extend", nargs="+", metavar="URI",
                   help="attacked URI, e.g. https://www.example.com/")
    p.add_argument("--alias", action="extend", nargs="+", metavar="NAME",
                   help="target alias created over the data channel (RFC 8783)")
    p.add_argument("--acl", action="extend", nargs="+", metavar="NAME[:TYPE]",
                   help="ACL created over the data channel to control with this request "
                   "(RFC 9133); TYPE is activate-when-mitigating (the default), immediate "
                   "or deactivate")
    p.add_argument("--lifetime", type=int, default=3600, metavar="S",
                   help="seconds, -1 = until withdrawn (default 3600)")
    p.add_argument("--no-trigger", action="store_true",
                   help="trigger-mitigation false: only if the signal channel is lost")
    p.add_argument("--mid", type=int,
                   help="refresh or change this request (default: a new mid, saved in "
                   "the state directory)")
    p.add_argument("--telemetry", metavar="FILE", help=_TELEMETRY_HELP)
    p.set_defaults(func=_run, coroutine=_mitigate)

    p = sub.add_parser("efficacy", parents=common, help="efficacy update of a mitigation")
    p.add_argument("--mid", type=int, required=True)
    p.add_argument("--attack-status", required=True,
                   choices=["under-attack", "attack-successfully-mitigated"])
    p.add_argument("--telemetry", metavar="FILE", help=_TELEMETRY_HELP)
    p.set_defaults(func=_run, coroutine=_efficacy)

    p = sub.add_parser("withdraw", parents=common, help="withdraw a mitigation (DELETE)")
    p.add_argument("--mid", type=int, required=True)
    p.set_defaults(func=_run, coroutine=_withdraw)

    p = sub.add_parser("get", parents=common, help="retrieve mitigations (GET), or observe")
    p.add_argument("--mid", type=int, help="one request (default: all of ours)")
    p.add_argument("--observe", action="store_true", help="keep printing notifications")
    p.add_argument("--count", type=int, metavar="K", help="stop after K notifications")
    p.set_defaults(func=_run, coroutine=_get)

    p = sub.add_parser("hb", parents=common, help="send one heartbeat")
    p.set_defaults(func=_run, coroutine=_hb)

    add_data_parser(sub, common)  # the data channel (RFC 8783): gateway.client.data_cli
    add_telemetry_parser(sub, common, Tools(_client, _print, _verdict, _follow, UsageError,
                                            _run))
    return parser


# IANA protocol numbers of the names an operator is likely to type (no /etc/protocols
# needed: minimal containers lack it).
_PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
              "icmpv6": 58, "sctp": 132}


def _protocol(text: str) -> int:
    if text.lower() in _PROTOCOLS:
        return _PROTOCOLS[text.lower()]
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a protocol name ({', '.join(_PROTOCOLS)}) nor a number 0-255")


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text).quantize(Decimal("0.01"))
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130  # interrupted before anything could be reported
    except UsageError as exc:
        print(f"dots-client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DotsProtocolError as exc:
        print(f"dots-client: {exc.code.dotted} {exc.diagnostic}", file=sys.stderr)
        return EXIT_DOTS_ERROR
    except (OSError, ValueError) as exc:
        print(f"dots-client: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
