"""Redirected signaling in the anycast lab (RFC 9132 §4.6, issue 8): real gateways behind
BIRD, a real route move, and clients in the client namespace.

Each edge redirects sessions that arrive on the anycast address to its own unicast name
and addresses (``[redirect]`` name = ``dots-edgeN.example.net``, both families, TTL
``TTL``). The shared dev server certificate names every edge, so the client checks the
alternate server against ``alt-server`` as a DNS-ID. The tests run in file order on one
module-scoped lab (``anycast_lab.py``):

1. interop: libcoap's ``coap-client-openssl`` PUTs a mitigation request to the anycast
   address (DTLS and TLS, IPv4 and IPv6) and gets a well-formed 5.03: Content-Format
   application/dots+cbor, Max-Age = TTL, a CBOR ``redirected-signal`` naming the edge that
   answered.
2. ``DotsClient`` (driven in the client namespace by ``python -m tests.lab.test_redirect_lab``,
   see ``ClientDriver``) asks for a mitigation on the anycast address, follows edge1's
   redirect to edge1's unicast address, where its session and mitigation go on; then
   edge1's health check fails, the router moves the anycast route to edge2 (new sessions on
   anycast now land there and are sent to edge2's unicast address), and the client's
   session to edge1 is untouched: same session, same server, requests answered.
3. A redirect loop: the edges are restarted full (``capacity``) and each sends new sessions
   to the other (``[[redirect.pool]]``). The server only redirects a session that arrived on
   a unicast address when it is over capacity or draining, so a loop between two unicast
   addresses needs one of those; over capacity is the realistic one (two full nodes
   overflowing into each other). A client provisioned with edge1 and a backup server (a
   plain ``dots-gateway run`` in the router namespace) goes edge1 -> edge2 -> "edge1 again":
   the redirect is ignored (contacted within 5 minutes) and the client ends on the backup,
   a provisioned server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certs.identity import cuid_from_certificate
from gateway.dots.codec import cbor_to_json, decode_cbor, decode_message, json_to_cbor
from gateway.dots.model import RedirectedSignal
from tests.lab.anycast_lab import EDGES, REPO, V4, V6, AnycastLab, missing_tools
from tests.lab.netns import Lab, cleanup_stale, require_root

pytestmark = [pytest.mark.root, pytest.mark.lab]

#: Max-Age of the redirects: a day (a 3-byte CoAP uint), so no return to the provisioned
#: (anycast) server happens during a test.
TTL = 86400
PORT = 4646
PREFIX = "203.0.113.0/24"  # what the [[clients]] rule lets the dev client protect
BACKUP_V4, BACKUP_V6 = "10.46.9.1", "fd00:46:9::1"  # the router's client-facing addresses
OPENSSL = "coap-client-openssl"
REDIRECTED = "ietf-dots-signal-channel:redirected-signal"
#: coap-client -v 6 prints each PDU it receives: ``v:1 t:NON c:5.03 i:0641 {01}
#: [ Content-Format:application/dots+cbor, Max-Age:86400 ] :: binary data length 55`` and
#: the payload as ``<<hex>>`` on the next line (-o writes 2.xx payloads only).
RESPONSE_PDU = re.compile(r"v:1 t:(?P<type>CON|NON|ACK|RST) c:(?P<code>[2-5]\.\d\d) "
                          r"i:[0-9a-f]+ \{[0-9a-f]*\} \[ ?(?P<options>.*?) ?\]"
                          r"(?: :: binary data length \d+\n<<(?P<hex>[0-9a-f]*)>>)?")


def name_of(node: str) -> str:
    return f"dots-{node}.example.net"


def unicast(edge: str) -> tuple[str, str]:
    _, e4, _, e6 = EDGES[edge]
    return e4, e6


def target(name: str, addresses: tuple[str, ...]) -> str:
    return f'name = "{name}"\naddresses = [{", ".join(json.dumps(a) for a in addresses)}]\n'


def clients_rule(cuid: str) -> str:
    return f'[[clients]]\nname = "site"\ncuid = "{cuid}"\nprefixes = ["{PREFIX}"]\n'


def anycast_config(edge: str, cuid: str) -> str:
    """Sessions on anycast go to this edge's own unicast name and addresses."""
    return f"[redirect]\n{target(name_of(edge), unicast(edge))}ttl = {TTL}\n" + clients_rule(cuid)


def overflow_config(edge: str, cuid: str) -> str:
    """Full at one session: every further session is sent to the other edge."""
    other = "edge2" if edge == "edge1" else "edge1"
    return (f"[redirect]\n{target(name_of(edge), unicast(edge))}ttl = {TTL}\ncapacity = 1\n"
            f"[[redirect.pool]]\n{target(name_of(other), unicast(other))}"
            + clients_rule(cuid))


@pytest.fixture(scope="module")
def alab() -> Iterator[AnycastLab]:
    why = require_root() or missing_tools()
    if why:
        pytest.skip(why)
    cleanup_stale()
    lab = Lab()
    anycast = AnycastLab(lab, server_names=[name_of(n) for n in (*EDGES, "backup")],
                         server_addresses=[*unicast("edge1"), *unicast("edge2"),
                                           BACKUP_V4, BACKUP_V6])
    try:
        anycast.init_pki()
        cuid = client_cuid(anycast)
        yield anycast.up({edge: anycast_config(edge, cuid) for edge in EDGES})
    finally:
        anycast.stop_gateways()
        lab.close()


def client_cuid(alab: AnycastLab) -> str:
    return cuid_from_certificate((alab.pki / "client.pem").read_bytes())


def logged(log: str, *parts: str) -> bool:
    """Whether one line of ``log`` holds all of ``parts``."""
    return any(all(part in line for part in parts) for line in log.splitlines())


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


# --- the DOTS client in the client namespace -------------------------------------------------


class ClientDriver:
    """A ``DotsClient`` in the lab's client namespace, one JSON command per stdin line (the
    ``__main__`` block at the end of this file); its log (stderr) is ``NAME.log`` in the lab
    directory. Every answer is waited for at most ``timeout`` seconds."""

    def __init__(self, alab: AnycastLab, name: str) -> None:
        self.lab = alab.lab
        self.log_name = f"{name}.log"
        state = alab.lab.dir / name
        state.mkdir()
        with open(alab.lab.dir / self.log_name, "wb") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", alab.ns["client"], sys.executable, "-m",
                 "tests.lab.test_redirect_lab", str(alab.pki), str(state)],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)
        alab.lab.processes.append(self.process)  # stopped by lab.close() at the latest

    def ask(self, timeout: float = 20.0, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else b""
        if not line:
            raise AssertionError(f"client gave no answer to {command} within {timeout} s:\n"
                                 + self.log())
        answer = dict(json.loads(line))
        if not answer["ok"]:
            raise AssertionError(f"client failed on {command}: {answer}\n{self.log()}")
        return answer

    def log(self) -> str:
        return self.lab.log(self.log_name)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.ask(op="stop", timeout=5.0)
            except (AssertionError, OSError):
                pass
        self.lab.stop(self.process)


def start_client(alab: AnycastLab, name: str, servers: list[dict[str, Any]]) -> ClientDriver:
    """A client provisioned with ``servers`` (``spec()``), connected to the first that
    answers."""
    driver = ClientDriver(alab, name)
    try:
        driver.ask(op="start", servers=servers)
    except BaseException:
        driver.close()
        raise
    return driver


def spec(name: str, addresses: tuple[str, ...]) -> dict[str, Any]:
    return {"host": name, "addresses": list(addresses)}


# --- 1. interop: libcoap gets the redirect ---------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize(("scheme", "family"), [("coaps", 4), ("coaps", 6),
                                                ("coaps+tcp", 4), ("coaps+tcp", 6)],
                         ids=["dtls-v4", "dtls-v6", "tls-v4", "tls-v6"])
def test_coap_client_openssl_gets_a_well_formed_redirect_on_anycast(
        alab: AnycastLab, scheme: str, family: int) -> None:
    if shutil.which(OPENSSL) is None:
        pytest.skip(f"{OPENSSL} is not installed (Debian: libcoap3-bin)")
    alab.wait_next_hop("edge1", timeout=15.0)  # a test before may have moved the route
    cuid = client_cuid(alab)
    body = alab.lab.dir / "mitigation.cbor"
    body.write_bytes(json_to_cbor({"ietf-dots-signal-channel:mitigation-scope": {"scope": [
        {"target-prefix": [PREFIX], "lifetime": 3600}]}}))
    host = V4 if family == 4 else f"[{V6}]"
    pki = alab.pki
    argv = [OPENSSL, "-v", "6", "-B", "5", "-m", "put", "-t", "271", "-f", str(body),
            "-c", str(pki / "client.pem"), "-j", str(pki / "client.key"),
            "-C", str(pki / "ca.pem"),
            *(["-N"] if scheme == "coaps" else []),  # NON, as RFC 9132 §4.4 asks
            f"{scheme}://{host}:{PORT}/.well-known/dots/mitigate/cuid={cuid}/mid=7"]
    local = V4 if family == 4 else f"[{V6}]"
    logged = (f"cuid={cuid} local={local}:{PORT} target={name_of('edge1')} ttl={TTL} "
              "reason=anycast")
    before = alab.gateway_log("edge1").count(logged)
    run = alab.lab.run(alab.ns["client"], *argv, check=False, timeout=15)
    output = run.stdout + run.stderr
    responses = list(RESPONSE_PDU.finditer(output))
    assert len(responses) == 1, output
    pdu = responses[0]
    options = dict(o.split(":", 1) for o in pdu["options"].split(", ") if o)

    assert pdu["code"] == "5.03", output
    if scheme == "coaps":
        assert pdu["type"] == "NON", output  # the answer to a NON request is NON
    assert options == {"Content-Format": "application/dots+cbor", "Max-Age": str(TTL)}, output
    payload = bytes.fromhex(pdu["hex"] or "")
    expected = {"alt-server": name_of("edge1"), "alt-server-record": list(unicast("edge1"))}
    # The wire keys of RFC 9132 §6: 46 redirected-signal {47 alt-server, 48 alt-server-record}.
    assert decode_cbor(payload) == {46: {47: expected["alt-server"],
                                         48: expected["alt-server-record"]}}
    assert cbor_to_json(payload) == {REDIRECTED: expected}
    message = decode_message(payload)
    assert isinstance(message, RedirectedSignal)
    assert message.alt_server == name_of("edge1")
    assert [str(a) for a in message.alt_server_record] == list(unicast("edge1"))
    # edge1 answered, on the anycast address, and logged why.
    assert alab.gateway_log("edge1").count(logged) == before + 1


# --- 2. session and mitigations continue at the unicast address; the route moves ------------


def test_redirected_client_keeps_its_session_when_the_anycast_route_moves(
        alab: AnycastLab) -> None:
    alab.wait_next_hop("edge1", timeout=15.0)
    cuid = client_cuid(alab)
    edge1 = unicast("edge1")
    client = start_client(alab, "client-moves", [spec(V4, ())])
    try:
        before = client.ask(op="state")["state"]
        assert before["endpoint"]["address"] == V4  # on the anycast address, at edge1
        assert f"peer={before['local']} local={V4}:{PORT}" in alab.gateway_log("edge1")

        # The mitigation request is redirected and sent again at edge1's unicast address.
        created = client.ask(op="mitigate", prefix=PREFIX, lifetime=3600)
        reply, state = created["reply"], created["state"]
        assert reply["code"] == "2.01", created
        assert reply["endpoint"]["server_name"] == name_of("edge1")
        assert reply["endpoint"]["address"] in edge1
        assert state["alternate"] == name_of("edge1")
        assert state["stats"]["redirects_followed"] == 1
        assert state["stats"]["redirect_loops"] == state["stats"]["redirects_failed"] == 0
        assert state["sid"] is not None  # the session configuration negotiated there
        mid = reply["mid"]
        log1 = alab.gateway_log("edge1")
        assert (f"cuid={cuid} local={V4}:{PORT} target={name_of('edge1')} ttl={TTL} "
                "reason=anycast") in log1
        address = reply["endpoint"]["address"]
        bracketed = f"[{address}]" if ":" in address else address
        assert f"peer={state['local']} local={bracketed}:{PORT}" in log1
        assert state["local"] not in alab.gateway_log("edge2")
        wait_until(lambda: alab.status("edge1").get("sessions") == {"anycast": 0,
                                                                     "unicast": 1},
                   3.0, "edge1 counting one unicast session and none on anycast")

        got = client.ask(op="get", mid=mid)["reply"]
        assert got["code"] == "2.05" and got["endpoint"] == reply["endpoint"], got
        assert got["scopes"] == [{"mid": mid, "status": "attack-mitigation-in-progress"}]

        # The anycast route moves to edge2: new sessions on anycast land there and are sent
        # to edge2's unicast address ...
        alab.fail_flag("edge1").touch()
        took = alab.wait_next_hop("edge2", timeout=3.0)
        print(f"\nanycast route on edge2 {1000 * took:.0f} ms after edge1's check failed")
        newcomer = alab.hb("udp", 4)  # the lab's probe: one heartbeat, no following
        assert newcomer.get("code") == "5.03", newcomer
        assert alab.served_by(newcomer["local"]) == "edge2"
        assert logged(alab.gateway_log("edge2"), "event=redirect.sent",
                      f"local={V4}:{PORT} target={name_of('edge2')} ttl={TTL} reason=anycast")

        # ... while the redirected client's session to edge1 goes on, untouched.
        beat = client.ask(op="hb")
        assert beat["reply"]["code"] == "2.04"
        assert beat["reply"]["endpoint"] == reply["endpoint"]
        again = client.ask(op="get", mid=mid)
        assert again["reply"]["code"] == "2.05" and again["reply"]["endpoint"] == reply["endpoint"]
        assert again["reply"]["scopes"] == got["scopes"]
        after = again["state"]
        assert after["session"] == state["session"] and after["local"] == state["local"]
        # No new session, no loss, no redirect met or followed since.
        unchanged = ("sessions", "resumed_sessions", "signal_losses", "redirects",
                     "redirects_followed", "redirects_failed", "redirect_loops",
                     "redirect_returns")
        assert {k: after["stats"][k] for k in unchanged} == {k: state["stats"][k]
                                                             for k in unchanged}
        assert after["alternate"] == name_of("edge1")
        assert not logged(alab.gateway_log("edge1"), "event=session.closed",
                          f" peer={state['local']} ")
        assert alab.status("edge1")["sessions"] == {"anycast": 0, "unicast": 1}
    finally:
        client.close()
        alab.fail_flag("edge1").unlink(missing_ok=True)


# --- 3. a redirect loop between the two edges ------------------------------------------------


def backup_config(alab: AnycastLab, cuid: str) -> Path:
    """A plain unicast DOTS server (no anycast, no redirect) in the router namespace."""
    directory = alab.lab.dir / "backup"
    shutil.copytree(alab.pki, directory / "tls", dirs_exist_ok=True)
    tls = directory / "tls"
    config = directory / "gateway.toml"
    config.write_text(f"""\
[general]
state_dir = "{directory / 'state'}"
node_name = "backup"
[server]
addresses = ["{BACKUP_V4}", "{BACKUP_V6}"]
port = {PORT}
[tls]
ca = "{tls}/ca.pem"
cert = "{tls}/server.pem"
key = "{tls}/server.key"
""" + clients_rule(cuid))
    return config


def test_redirect_loop_between_two_edges_leaves_the_client_on_a_provisioned_server(
        alab: AnycastLab) -> None:
    cuid = client_cuid(alab)
    alab.stop_gateways()
    for edge in EDGES:  # a fresh start: no mitigations, sessions or logs of earlier tests
        shutil.rmtree(alab.state_dir(edge), ignore_errors=True)
    alab.start_gateways({edge: overflow_config(edge, cuid) for edge in EDGES})
    alab.lab.popen(alab.ns["router"], [sys.executable, "-m", "gateway.cli", "run", "--config",
                                       str(backup_config(alab, cuid))], "gateway-backup.log")
    for log_name in ("gateway-edge1.log", "gateway-edge2.log", "gateway-backup.log"):
        alab.wait_serving(log_name)
    # One session on each edge fills it: the client's own session is one too many.
    held = [alab.ask(op="open", transport="udp", host=unicast(edge)[0]) for edge in EDGES]
    assert all(h["ok"] for h in held), held
    backup = (BACKUP_V4, BACKUP_V6)
    client = start_client(alab, "client-loop", [spec(name_of("edge1"), unicast("edge1")),
                                                spec(name_of("backup"), backup)])
    try:
        assert client.ask(op="state")["state"]["endpoint"]["server_name"] == name_of("edge1")
        created = client.ask(op="mitigate", prefix=PREFIX, lifetime=3600)
        reply, state = created["reply"], created["state"]
        # edge1 -> edge2 -> edge1: ignored as a loop; the backup (provisioned) answers.
        assert reply["code"] == "2.01", created
        assert reply["endpoint"]["server_name"] == name_of("backup")
        assert reply["endpoint"]["address"] in backup
        assert state["alternate"] is None  # on a provisioned server, no redirect in force
        stats = state["stats"]
        assert (stats["redirects_followed"], stats["redirect_loops"]) == (1, 1), stats
        for edge, other in (("edge1", "edge2"), ("edge2", "edge1")):
            assert logged(alab.gateway_log(edge), "event=redirect.sent", f"cuid={cuid} local=",
                          f"target={name_of(other)} ttl={TTL} reason=capacity"), edge
        warning = [line for line in client.log().splitlines() if "redirect loop" in line]
        assert warning and "WARNING" in warning[0] and f"to={name_of('edge1')}" in warning[0]
        assert f"trying {name_of('backup')}" in warning[0]
        # It stays there.
        beat = client.ask(op="hb")["reply"]
        assert beat["code"] == "2.04" and beat["endpoint"] == reply["endpoint"]
        got = client.ask(op="get", mid=reply["mid"])
        assert got["reply"]["code"] == "2.05" and got["reply"]["endpoint"] == reply["endpoint"]
        assert got["state"]["stats"]["redirect_loops"] == 1
    finally:
        client.close()
        for h in held:
            if h.get("ok"):
                alab.ask(op="close", id=h["id"])


# --- the client driver's own side (runs in the client namespace) -----------------------------


def _reply(reply: Any) -> dict[str, Any]:
    endpoint = reply.endpoint
    return {
        "code": reply.dotted, "mid": reply.mid,
        "endpoint": {"transport": endpoint.transport.value, "address": endpoint.address,
                     "port": endpoint.port, "server_name": endpoint.server_name},
        "scopes": [{"mid": s.mid, "status": s.status.label if s.status else None}
                   for s in reply.scopes],
        "redirect": None if reply.redirect is None else reply.redirect.alt_server,
    }


def _state(client: Any) -> dict[str, Any]:
    session, endpoint = client.session, client.endpoint
    local = None
    if session is not None and session.connection is not None:
        host, port = session.connection.transport.get_extra_info("sockname")[:2]
        local = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    stats = {k: v for k, v in vars(client.stats).items() if k != "attempts"}
    return {
        "endpoint": None if endpoint is None else {
            "transport": endpoint.transport.value, "address": endpoint.address,
            "server_name": endpoint.server_name},
        "alternate": None if client.alternate is None else client.alternate.host,
        "session": None if session is None else id(session), "local": local,
        "sid": client.sid, "stats": stats,
    }


async def _drive(pki: Path, state_dir: Path) -> None:
    from gateway.client.connect import ServerSpec
    from gateway.client.role import DotsClient, make_scope
    from gateway.transport.tls_context import ClientCredentials

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    credentials = ClientCredentials(pki / "client.pem", pki / "client.key", pki / "ca.pem")
    client: DotsClient | None = None
    while line := await reader.readline():
        cmd = json.loads(line)
        answer: dict[str, Any] = {"ok": True}
        try:
            op = cmd["op"]
            if op == "start":
                servers = [ServerSpec(s["host"], PORT, addresses=tuple(s["addresses"]))
                           for s in cmd["servers"]]
                client = DotsClient(credentials, servers, state_dir=state_dir,
                                    handshake_timeout=3.0, request_timeout=5.0,
                                    attempt_delay=0.05)
                await client.connect()
            elif op == "stop":
                if client is not None:
                    await client.close()
                client = None
            else:
                assert client is not None, "start first"
                if op == "mitigate":
                    reply = await client.mitigate(make_scope(target_prefix=[cmd["prefix"]],
                                                             lifetime=cmd["lifetime"]))
                elif op == "get":
                    reply = await client.get(cmd["mid"])
                elif op == "hb":
                    reply = await client.heartbeat()
                elif op != "state":
                    raise ValueError(f"unknown op {op!r}")
                if op != "state":
                    answer["reply"] = _reply(reply)
            if client is not None:
                answer["state"] = _state(client)
        except Exception as exc:  # every failure is an answer; the test shows the log
            logging.getLogger(__name__).exception("command %s failed", cmd)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if client is not None:
        await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_drive(Path(sys.argv[1]), Path(sys.argv[2])))
