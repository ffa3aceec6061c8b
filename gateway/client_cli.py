"""``dots-client``: the command-line DOTS client.

Today it converts between the RFC's JSON notation and the CBOR wire form, so requests can
be written by hand and fed to any CoAP tool (e.g. ``coap-client -f``). Session commands
(mitigate, withdraw, get/observe, config, hb) arrive with the client role.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.dots.codec import cbor_to_json, json_to_cbor
from gateway.dots.errors import DotsProtocolError

EXIT_OK, EXIT_DOTS_ERROR, EXIT_USAGE = 0, 3, 2


def _read(source: str) -> bytes:
    return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()


def _encode(args: argparse.Namespace) -> int:
    data = json_to_cbor(_read(args.input).decode("utf-8"))
    if args.output:
        Path(args.output).write_bytes(data)
    else:
        print(data.hex())
    return EXIT_OK


def _decode(args: argparse.Namespace) -> int:
    raw = _read(args.input)
    if args.hex:
        raw = bytes.fromhex(raw.decode("ascii"))
    print(json.dumps(cbor_to_json(raw), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dots-client", description="DOTS signal-channel client.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("encode", help="RFC-style JSON -> application/dots+cbor")
    p.add_argument("input", nargs="?", default="-", help="JSON file (default: stdin)")
    p.add_argument("-o", "--output", help="write binary CBOR here (default: hex on stdout)")
    p.set_defaults(func=_encode)
    p = sub.add_parser("decode", help="application/dots+cbor -> RFC-style JSON")
    p.add_argument("input", nargs="?", default="-", help="CBOR file (default: stdin)")
    p.add_argument("--hex", action="store_true", help="input is hex text")
    p.set_defaults(func=_decode)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DotsProtocolError as exc:
        print(f"dots-client: {exc.code.dotted} {exc.diagnostic}", file=sys.stderr)
        return EXIT_DOTS_ERROR
    except (OSError, ValueError) as exc:
        print(f"dots-client: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
