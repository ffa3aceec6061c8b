"""``dots-gateway``: the operator's command.

``run`` (terminal or gateway mode) and ``server`` (always terminal) are the daemon;
``check-config FILE`` lists every problem with its key; ``certs init DIR`` makes the dev
PKI; ``show-config`` prints the effective settings; ``status``, ``reload`` and ``reconnect``
(gateway mode) ask a running daemon over its control socket (``gateway.ops.control``);
``drain`` signals one with ``[anycast]`` (``anycast.control``); ``discover`` and
``dhcp-option`` come from ``gateway.discovery``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certs.devpki import DevPkiError, init_dev_pki
from gateway import __version__
from gateway.config import (
    DEFAULT_STATE_DIR,
    ConfigError,
    Mode,
    Settings,
    check_config,
    default_settings,
    load_config,
)
from gateway.core_settings import build_server_core
from gateway.discovery import cli as discovery_cli

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
STATE_DIR_HELP = (f"state directory: dev PKI, database, control socket (wins over "
                  f"general.state_dir; default ./{DEFAULT_STATE_DIR})")


def _check_config(args: argparse.Namespace) -> int:
    """What ``run`` would refuse, without starting: the file's problems, then (if it
    parses) those of every credential file it names; one line each."""
    from gateway.credentials import file_problems

    problems = check_config(Path(args.file))
    if not problems:
        settings = load_config(Path(args.file))
        problems = [str(p) for p in file_problems(settings)]
        try:
            # The core re-checks what it receives; a config it refuses is a config error too.
            build_server_core(settings)
        except ConfigError as exc:
            problems += [str(e) for e in exc.errors]
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    print(f"{args.file}: OK")
    return EXIT_OK


def _show_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(_plain(dataclasses.asdict(settings)), indent=2))
    return EXIT_OK


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "key"}  # never print PSKs
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _certs_init(args: argparse.Namespace) -> int:
    try:
        pki = init_dev_pki(Path(args.directory), hostnames=tuple(args.hostname or ("localhost",)),
                           addresses=tuple(args.address or ("127.0.0.1", "::1")),
                           overwrite=args.force)
    except DevPkiError as exc:
        print(f"certs init: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"dev PKI in {pki.directory}")
    print(f"  CA:     {pki.ca_cert}")
    print(f"  server: {pki.server_cert} {pki.server_key}")
    print(f"  client: {pki.client_cert} {pki.client_key} (cuid {pki.client_cuid})")
    print(f"  PSK:    {pki.psk_file} (identity {pki.psk_identity}, cuid {pki.psk_cuid})")
    return EXIT_OK


def _settings(args: argparse.Namespace) -> Settings:
    """The one rule of every command: ``--state-dir`` wins over ``general.state_dir`` in
    ``--config``, which wins over the default ``./state`` (``DEFAULT_STATE_DIR``)."""
    state_dir = Path(args.state_dir) if getattr(args, "state_dir", None) else None
    if getattr(args, "config", None):
        return load_config(Path(args.config), state_dir=state_dir)
    return default_settings(state_dir)


def _state_dir_origin(args: argparse.Namespace) -> str:
    """Where the state directory came from, for messages that say where a command looked."""
    if getattr(args, "state_dir", None):
        return "--state-dir"
    if getattr(args, "config", None):
        return f"{args.config}: its general.state_dir, else the default ./{DEFAULT_STATE_DIR}"
    return f"the default {DEFAULT_STATE_DIR}/ (give --state-dir or --config)"


def _socket_origin(args: argparse.Namespace, settings: Settings) -> str:
    if getattr(args, "socket", None):
        return f"the control socket {args.socket} (--socket)"
    return (f"the control socket {settings.control.socket} (state directory "
            f"{settings.general.state_dir}, from {_state_dir_origin(args)})")


def _as_commanded(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.command == "server" and settings.general.mode is Mode.GATEWAY:
        # `server` is the DOTS server itself whatever the file says; `run` honours the mode.
        settings = dataclasses.replace(
            settings, general=dataclasses.replace(settings.general, mode=Mode.TERMINAL))
    return settings


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from anycast.errors import AnycastError
    from gateway.credentials import file_problems
    from gateway.daemon import serve
    from gateway.discovery.errors import DiscoveryError
    from gateway.ops.logsetup import configure_logging
    from gateway.relay.startup import NoUpstreamError, UpstreamCredentialError
    from gateway.relay.store import RelayDatabaseError
    from gateway.server.persistence import PersistenceError
    from gateway.transport.openssl_ffi import OpenSSLError
    from gateway.transport.udp import PortInUse

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    problems = file_problems(settings)
    if problems:  # the same lines as check-config, before anything starts
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILURE
    configure_logging(str(settings.logging.format), str(settings.logging.level))
    settings = _as_commanded(args, settings)

    def reread() -> Settings:  # SIGHUP and `reload`: the same file, read the same way
        return _as_commanded(args, _settings(args))

    try:
        asyncio.run(serve(settings, reread=reread))
    except (RelayDatabaseError, UpstreamCredentialError, NoUpstreamError,
            DiscoveryError) as exc:  # DiscoveryError: unusable trust anchors, naming the key
        print(f"dots-gateway: gateway mode: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except PortInUse as exc:
        print(f"dots-gateway: {exc.strerror}; is another instance running?", file=sys.stderr)
        return EXIT_FAILURE
    except AnycastError as exc:
        print(f"dots-gateway: anycast: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except PersistenceError as exc:
        print(f"dots-gateway: saved mitigations: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ConfigError as exc:  # what only start-up finds (the mitigation command, say)
        print(str(exc), file=sys.stderr)
        return EXIT_FAILURE
    except DevPkiError as exc:
        print(f"dots-gateway: dev PKI: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OpenSSLError as exc:
        print(f"dots-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # e.g. the control socket's directory is not writable
        print(f"dots-gateway: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _drain(args: argparse.Namespace) -> int:
    from anycast import control

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"drain: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        pid = control.request_drain(settings.general.state_dir)
    except control.ControlError as exc:
        print(f"drain: {exc}", file=sys.stderr)
        print(f"drain: looked in the state directory {settings.general.state_dir} (from "
              f"{_state_dir_origin(args)})", file=sys.stderr)
        return EXIT_FAILURE
    grace = float(settings.anycast.grace)
    print(f"drain requested (pid {pid}): route withdrawn, serving for {grace:g} s, then stopping")
    if args.wait:
        if not control.wait_for_exit(pid, grace + args.timeout):
            print(f"drain: pid {pid} still runs {grace + args.timeout:g} s later",
                  file=sys.stderr)
            return EXIT_FAILURE
        print(f"pid {pid} stopped")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    """Ask the daemon on its control socket; without an answer, show the anycast state file
    (written by an anycast daemon, possibly older than this command) and say so."""
    from gateway.ops import control

    settings, response = _ask_daemon(args, "status")
    if settings is None:
        return EXIT_FAILURE
    if response is None:
        return _status_from_state_file(args, settings)
    if not response.get("ok"):
        print(f"status: the daemon refused: {response.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    result = response.get("result", {})
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(control.format_status(result), end="")
    return EXIT_OK


def _ask_daemon(args: argparse.Namespace, command: str,
                **fields: object) -> tuple[Settings | None, dict[str, Any] | None]:
    """(the settings used, the daemon's answer to ``command`` on its control socket).
    Settings are None when the configuration is bad, the answer None when no daemon answers;
    either is said on stderr, with where the command looked."""
    from gateway.ops import control

    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None, None
    path = Path(args.socket) if args.socket else settings.control.socket
    try:
        return settings, control.request(path, command, timeout=args.timeout, **fields)
    except control.ControlUnavailable as exc:
        print(f"{command}: no daemon answers on the control socket: {exc}", file=sys.stderr)
        print(f"{command}: looked at {_socket_origin(args, settings)}", file=sys.stderr)
        return settings, None


def _status_from_state_file(args: argparse.Namespace, settings: Settings) -> int:
    from anycast import control

    try:
        state = control.read_state(settings.general.state_dir)
    except control.ControlError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("status: showing the anycast state file instead (it may be stale)", file=sys.stderr)
    try:
        state["pid"] = control.running_pid(settings.general.state_dir)
        state["running"] = True
    except control.ControlError:
        state["running"] = False
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
    else:
        from gateway.ops.control import format_status

        print(format_status({"anycast": state}), end="")
    return EXIT_OK if state["running"] else EXIT_FAILURE


def _reload(args: argparse.Namespace) -> int:
    """``reload`` over the control socket (what SIGHUP does), and what it changed."""
    _, response = _ask_daemon(args, "reload")
    if response is None:
        return EXIT_FAILURE
    if not response.get("ok"):
        print(f"reload: {response.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    result = response.get("result", {})
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"reloaded {result.get('config', '?')}")
    print("changed: " + (", ".join(result.get("changed", [])) or "nothing"))
    print("reloaded: " + ", ".join(result.get("reloaded", [])))
    restart = result.get("needs_restart", [])
    if restart:
        print("needs a restart (kept as running): " + ", ".join(restart))
    withdrawn = result.get("withdrawn", [])
    print(f"sessions closed: {len(withdrawn)}")
    for w in withdrawn:
        print(f"  {w.get('peer')} {w.get('client')}: {w.get('reason')} ({w.get('detail')})")
    return EXIT_OK


def _reconnect(args: argparse.Namespace) -> int:
    """``reconnect [NAME]``: the gateway's upstream attempts now (NAME first), not when its
    back-off says; prints how the attempt went. Exit 0 when connected afterwards."""
    fields = {} if args.upstream is None else {"upstream": args.upstream}
    _, response = _ask_daemon(args, "reconnect", **fields)
    if response is None:
        return EXIT_FAILURE
    if not response.get("ok"):
        print(f"reconnect: {response.get('error')}", file=sys.stderr)
        return EXIT_FAILURE
    result = response.get("result", {})
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif result.get("connected"):
        print(f"reconnect: {result.get('action')}; connected to {result.get('in_use')}")
    else:
        next_in = result.get("next_attempt_in")
        print(f"reconnect: {result.get('action')}; not connected: "
              f"{result.get('last_error') or 'no answer yet'}"
              + ("" if next_in is None else f"; next attempt in {next_in:.0f} s"))
    return EXIT_OK if result.get("connected") else EXIT_FAILURE


def _tls_secrets(args: argparse.Namespace) -> int:
    from gateway.credentials import write_fleet_secrets

    directory = Path(args.directory)
    if args.rotate:
        return _rotate_tls_secrets(directory, args.keep)
    try:
        cookie, tickets = write_fleet_secrets(directory)
    except FileExistsError as exc:
        if Path(exc.filename) == directory:
            print(f"tls-secrets: {directory} exists and is not a directory", file=sys.stderr)
        else:
            print(f"tls-secrets: {exc.filename} exists; `dots-gateway tls-secrets --rotate "
                  f"{directory}` adds a new secret and keeps the previous one",
                  file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"tls-secrets: {exc.filename or directory}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    print(f"cookie secret: {cookie}\nticket keys:   {tickets}")
    print("copy both to every node, then set tls.cookie_secret_file and tls.ticket_key_file")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import run as run_demo

    return run_demo(Path(args.output))


def _rotate_tls_secrets(directory: Path, keep: int) -> int:
    from gateway.credentials import rotate_fleet_secrets

    if keep < 1:
        print("tls-secrets: --keep must be at least 1 (the previous secret stays accepted)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        rotated = rotate_fleet_secrets(directory, keep)
    except FileNotFoundError as exc:
        print(f"tls-secrets: {exc.filename}: no such file to rotate (make the first ones "
              f"with `dots-gateway tls-secrets {directory}`)", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"tls-secrets: {exc.filename or directory}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as exc:  # a file that is not a secret file: names file and line
        print(f"tls-secrets: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for path, dropped in rotated:
        print(f"{path}: new secret first, {keep} previous kept"
              + (f", {dropped} older removed" if dropped else ""))
    print("copy both to every node, then `dots-gateway reload` each: new tickets and cookies "
          "use the new secret, those made with the previous one stay valid")
    return EXIT_OK


def _version(_args: argparse.Namespace) -> int:
    from gateway.transport.openssl_ffi import openssl_version

    print(f"dots-gateway {__version__} ({openssl_version()})")
    return EXIT_OK



def _control_options(p: argparse.ArgumentParser, *, timeout: float) -> None:
    """The options of a command that talks to the running daemon over its control socket."""
    p.add_argument("--config", help="the daemon's configuration file (for its control socket)")
    p.add_argument("--state-dir", help="the daemon's " + STATE_DIR_HELP)
    p.add_argument("--socket", help="the control socket (default: control.socket)")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--timeout", type=float, default=timeout,
                   help=f"seconds to wait for the daemon's answer (default {timeout:g})")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dots-gateway",
        description="Anycast DOTS (RFC 9132) gateway with signal-channel redirect.",
    )
    parser.add_argument("--version", action="version", version=f"dots-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, text in (("run", "run the gateway (terminal mode: it is the DOTS server)"),
                       ("server", "run a DOTS server on DTLS and TLS")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="configuration file (default: embedded defaults)")
        p.add_argument("--state-dir", help=STATE_DIR_HELP)
        p.set_defaults(func=_serve)

    p = sub.add_parser("drain", help="withdraw the anycast route of the running daemon, "
                       "let it serve for anycast.grace seconds, then stop it (SIGUSR2)")
    p.add_argument("--config", help="the daemon's configuration file (for its state directory)")
    p.add_argument("--state-dir", help="the daemon's " + STATE_DIR_HELP)
    p.add_argument("--wait", action="store_true", help="return when the daemon has stopped")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="with --wait: seconds to wait beyond the grace period (default 30)")
    p.set_defaults(func=_drain)

    p = sub.add_parser("status", help="sessions, mitigations, upstreams and anycast state of "
                       "the running daemon (over its control socket)")
    _control_options(p, timeout=5.0)
    p.set_defaults(func=_status)

    p = sub.add_parser("reload", help="make the running daemon re-read its configuration "
                       "(as SIGHUP does) and print what changed")
    _control_options(p, timeout=30.0)
    p.set_defaults(func=_reload)

    p = sub.add_parser("reconnect", help="gateway mode: connect upstream now instead of "
                       "when the back-off allows (NAME first, moving there if connected "
                       "elsewhere)")
    p.add_argument("upstream", nargs="?", metavar="NAME",
                   help="an [[upstream]] name (or host) to try first")
    _control_options(p, timeout=30.0)
    p.set_defaults(func=_reconnect)

    p = sub.add_parser("tls-secrets", help="create (or --rotate) the shared cookie and "
                       "ticket-key files")
    p.add_argument("directory")
    p.add_argument("--rotate", action="store_true",
                   help="put a new secret first in both existing files, keeping the previous")
    p.add_argument("--keep", type=int, default=1,
                   help="with --rotate: previous secrets kept after the new one (default 1)")
    p.set_defaults(func=_tls_secrets)

    p = sub.add_parser("check-config", help="validate a configuration file; list every problem")
    p.add_argument("file")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("show-config", help="print the effective settings as JSON")
    p.add_argument("--config", help="configuration file (default: embedded defaults)")
    p.add_argument("--state-dir", help=STATE_DIR_HELP)
    p.set_defaults(func=_show_config)

    certs = sub.add_parser("certs", help="certificates and keys")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    p = certs_sub.add_parser("init", help="write a development PKI (CA, server, client, PSK)")
    p.add_argument("directory")
    p.add_argument("--hostname", action="append", help="server/client DNS SAN (repeatable)")
    p.add_argument("--address", action="append", help="server/client IP SAN (repeatable)")
    p.add_argument("--force", action="store_true", help="regenerate even if files exist")
    p.set_defaults(func=_certs_init)

    discovery_cli.register(sub)  # discover, dhcp-option

    p = sub.add_parser("demo", help="the whole story in network namespaces (root): anycast "
                       "edges, DHCP discovery, redirect, an edge failure and a drain")
    p.add_argument("--output", default="demo-output", metavar="DIR",
                   help="where timeline.txt, timeline.png and logs/ go (default demo-output)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
