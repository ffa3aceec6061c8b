"""``dots-client data ...``: the DOTS data channel from the command line (RFC 8783).

``register``, ``unregister``, ``get`` (the whole tree of this client), ``capabilities``,
``alias create|list|delete`` and ``acl create|list|delete``. Aliases and ACLs come from
options for the common cases or, with ``--json FILE`` (``-`` for stdin), as one RFC 8783
entry (``{"name": ..., ...}``) or a whole ``ietf-dots-data-channel:aliases``/``acls`` body.
Each exchange is printed as one JSON document (request and response); exit codes as the
rest of dots-client: 0 success, 2 usage error, 3 error response (its status, error-tag and
message on stderr), 4 network failure.

Credentials: ``--cert/--key/--ca``, else the dev PKI in ``--state-dir`` (``./state/pki``),
as the signal-channel commands. Server: ``--server https://HOST[:PORT]`` (default
``https://localhost:8443``, the embedded defaults' data channel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_DOTS_ERROR, EXIT_USAGE, EXIT_NETWORK = 0, 3, 2, 4
_STATE_DIR = Path("state")  # gateway.config.loading.DEFAULT_STATE_DIR


class DataUsageError(Exception):
    """Bad arguments or input files: exit 2."""


def add_data_parser(sub: Any, common: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("data", parents=common,
                       help="the DOTS data channel: registration, aliases, ACLs (RFC 8783)")
    commands = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    commands.add_parser("register", parents=common, help="register this DOTS client (POST)")
    commands.add_parser("unregister", parents=common,
                        help="unregister (DELETE): its aliases and ACLs go too")
    commands.add_parser("get", parents=common, help="everything the server holds for us")
    commands.add_parser("capabilities", parents=common, help="the server's filtering "
                        "capabilities")
    for kind, noun in (("alias", "aliases"), ("acl", "acls")):
        k = commands.add_parser(kind, parents=common, help=f"{noun}: create, list, delete")
        actions = k.add_subparsers(dest="data_action", metavar="ACTION", required=True)
        c = actions.add_parser("create", parents=common, help=f"create one {kind} (POST; "
                               "--replace: PUT, which also refreshes its lifetime)")
        c.add_argument("name", nargs="?", help=f"{kind} name (or give --json)")
        c.add_argument("--json", metavar="FILE", help="the entry as RFC 8783 JSON ('-': stdin)")
        c.add_argument("--replace", action="store_true", help="create or replace (PUT)")
        if kind == "alias":
            _alias_options(c)
        else:
            _acl_options(c)
        lister = actions.add_parser("list", parents=common, help=f"our {noun} (GET)")
        lister.add_argument("name", nargs="?", help=f"just this {kind}")
        d = actions.add_parser("delete", parents=common, help=f"delete one {kind}")
        d.add_argument("name")
    p.set_defaults(func=run_data)


def _alias_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--target-prefix", action="extend", nargs="+", default=[], metavar="PREFIX")
    c.add_argument("--port", action="extend", nargs="+", default=[], metavar="N|LOW-HIGH")
    c.add_argument("--protocol", action="extend", nargs="+", default=[], type=int, metavar="N")
    c.add_argument("--fqdn", action="extend", nargs="+", default=[], metavar="NAME")
    c.add_argument("--uri", action="extend", nargs="+", default=[], metavar="URI")


def _acl_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--activation-type", choices=("activate-when-mitigating", "immediate",
                                                  "deactivate"))
    c.add_argument("--destination", metavar="PREFIX", help="destination network of the rule")
    c.add_argument("--source", metavar="PREFIX", help="source network of the rule")
    c.add_argument("--protocol", type=int, metavar="N", help="IP protocol (6 tcp, 17 udp)")
    c.add_argument("--destination-port", metavar="N|LOW-HIGH")
    c.add_argument("--source-port", metavar="N|LOW-HIGH")
    c.add_argument("--action", choices=("drop", "accept"), default="drop")
    c.add_argument("--rate-limit", metavar="BYTES/S", help="with --action accept")


def run_data(args: argparse.Namespace) -> int:
    from gateway.client.connect import NetworkError

    try:
        return asyncio.run(_run(args))
    except DataUsageError as exc:
        print(f"dots-client: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NetworkError as exc:
        print(f"dots-client: network failure: {exc}", file=sys.stderr)
        return EXIT_NETWORK


async def _run(args: argparse.Namespace) -> int:
    from gateway.client.data import DEFAULT_URL, DataChannelClient

    cert, key, ca = _credentials(args)
    url = getattr(args, "server", None) or DEFAULT_URL
    timeout = float(getattr(args, "timeout", None) or 10.0)
    try:
        client = DataChannelClient(url, cert, key, ca, timeout=timeout,
                                   server_name=getattr(args, "server_name", None))
    except (OSError, ValueError) as exc:
        raise DataUsageError(str(exc)) from None
    async with client:
        command = args.data_command
        if command == "register":
            answer = await client.register()
        elif command == "unregister":
            answer = await client.unregister()
        elif command == "get":
            answer = await client.tree()
        elif command == "capabilities":
            answer = await client.capabilities()
        else:
            kind = "aliases" if command == "alias" else "acls"
            action = args.data_action
            if action == "list":
                answer = await client.read(kind, args.name)
            elif action == "delete":
                answer = await client.delete(kind, args.name)
            else:
                entries = _entries(args, kind)
                if args.replace:
                    if len(entries) != 1:
                        raise DataUsageError("--replace takes exactly one entry")
                    answer = await client.put(kind, entries[0])
                else:
                    answer = await client.create(kind, entries)
    document: dict[str, Any] = {"request": {"method": answer.method, "uri": answer.url}}
    if answer.request_document is not None:
        document["request"]["body"] = answer.request_document
    document["response"] = {"status": answer.status}
    if answer.location:
        document["response"]["location"] = answer.location
    if answer.document is not None:
        document["response"]["body"] = answer.document
    print(json.dumps(document, indent=2), flush=True)
    if not answer.ok:
        print(f"dots-client: {answer.error}", file=sys.stderr)
        return EXIT_DOTS_ERROR
    return EXIT_OK


def _credentials(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    if getattr(args, "psk_identity", None) or getattr(args, "psk", None):
        raise DataUsageError("the data channel authenticates with a certificate "
                             "(--cert/--key/--ca), not a PSK")
    cert, key, ca = (getattr(args, name, None) for name in ("cert", "key", "ca"))
    if cert or key:
        if not (cert and key and ca):
            raise DataUsageError("--cert needs --key and --ca (the CA that signs the server)")
        paths = (Path(cert), Path(key), Path(ca))
        for path in paths:
            if not path.is_file():
                raise DataUsageError(f"{path}: no such file")
        return paths
    state_dir = Path(getattr(args, "state_dir", None) or _STATE_DIR)
    for directory in (state_dir / "pki", state_dir):
        files = tuple(directory / n for n in ("client.pem", "client.key", "ca.pem"))
        if all(f.is_file() for f in files):
            return files  # type: ignore[return-value]
    raise DataUsageError(f"no credentials: give --cert/--key/--ca, or put a dev PKI "
                         f"(dots-gateway certs init) in {state_dir / 'pki'}")


def _entries(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    list_name = "alias" if kind == "aliases" else "acl"
    if args.json:
        try:
            text = sys.stdin.read() if args.json == "-" else Path(args.json).read_text()
            document = json.loads(text)
        except OSError as exc:
            raise DataUsageError(f"{args.json}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise DataUsageError(f"{args.json}: not JSON: {exc}") from None
        if isinstance(document, dict) and f"ietf-dots-data-channel:{kind}" in document:
            entries = document[f"ietf-dots-data-channel:{kind}"].get(list_name)
        else:
            entries = [document]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DataUsageError(f"{args.json}: expected one {list_name} object or an "
                                 f"ietf-dots-data-channel:{kind} body")
        if args.name:
            for entry in entries:
                entry.setdefault("name", args.name)
        return entries
    if not args.name:
        raise DataUsageError(f"give the {list_name} name, or --json FILE")
    return [_alias(args) if kind == "aliases" else _acl(args)]


def _port_range(text: str, what: str) -> dict[str, Any]:
    low, _, high = text.partition("-")
    try:
        out = {"lower-port": int(low)}
        if high:
            out["upper-port"] = int(high)
    except ValueError:
        raise DataUsageError(f"{what} {text!r}: expected N or LOW-HIGH") from None
    return out


def _alias(args: argparse.Namespace) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": args.name}
    for option, leaf in (("target_prefix", "target-prefix"), ("fqdn", "target-fqdn"),
                         ("uri", "target-uri"), ("protocol", "target-protocol")):
        if getattr(args, option):
            entry[leaf] = list(getattr(args, option))
    if args.port:
        entry["target-port-range"] = [_port_range(p, "--port") for p in args.port]
    if not any(k in entry for k in ("target-prefix", "target-fqdn", "target-uri")):
        raise DataUsageError("an alias needs --target-prefix, --fqdn or --uri")
    return entry


def _acl(args: argparse.Namespace) -> dict[str, Any]:
    import ipaddress

    matches: dict[str, Any] = {}
    family = None
    for option, side in ((args.destination, "destination"), (args.source, "source")):
        if option:
            try:
                version = ipaddress.ip_network(option, strict=False).version
            except ValueError:
                raise DataUsageError(f"--{side} {option!r}: not an IP prefix") from None
            if family not in (None, version):
                raise DataUsageError("--destination and --source must be the same family")
            family = version
            matches.setdefault(f"ipv{version}", {})[f"{side}-ipv{version}-network"] = option
    if args.protocol is not None:
        matches.setdefault(f"ipv{family or 4}", {})["protocol"] = args.protocol
    for option, side in ((args.destination_port, "destination"), (args.source_port, "source")):
        if option:
            if args.protocol not in (6, 17):
                raise DataUsageError("port matches need --protocol 6 (tcp) or 17 (udp)")
            ports = _port_range(option, f"--{side}-port")
            if "upper-port" not in ports:
                ports = {"operator": "eq", "port": ports["lower-port"]}
            layer = "tcp" if args.protocol == 6 else "udp"
            matches.setdefault(layer, {})[f"{side}-port-range-or-operator"] = ports
    actions: dict[str, Any] = {"forwarding": args.action}
    if args.rate_limit is not None:
        actions["rate-limit"] = args.rate_limit
    ace: dict[str, Any] = {"name": f"{args.name}-rule"}
    if matches:
        ace["matches"] = matches
    ace["actions"] = actions
    entry: dict[str, Any] = {"name": args.name}
    if family:
        entry["type"] = f"ipv{family}-acl-type"
    if args.activation_type:
        entry["activation-type"] = args.activation_type
    entry["aces"] = {"ace": [ace]}
    return entry
