"""Peers we did not write, through the gateway and straight to a DOTS server: same answers.

libcoap's ``coap-client-openssl`` (X.509 over DTLS) and aiocoap (X.509 over TLS, PSK over
DTLS with tinydtls) each run one request sequence twice, step by step in lockstep: once
against ``dots-gateway server`` directly and once through ``dots-gateway run`` in gateway
mode in front of another ``dots-gateway server`` (the processes and their configuration are
in ``gateway_topology``). The direct server and the gateway's client side are configured
alike, so the peer sends the same bytes with the same credentials and only the port
differs; the answers must then be the same, except where a difference is what a gateway
is for. Those legitimate differences, each checked or explained where it arises:

* The gateway's own refusals (a request it checks before relaying: 4.00 for a body without
  lifetime, 4.01 for a target outside the client's prefixes) carry the same diagnostic as
  the server's, prefixed with ``gateway: `` so that an operator can tell who refused.
  Errors the upstream server produced (4.04) come back with their code, their diagnostic
  prefixed with ``upstream <name> (<uri>): `` (issue 20 §2: the hop that produced it).
* Hop-Limit (RFC 8768): the DOTS server is no proxy and ignores it (2.05); the gateway
  decrements it, so Hop-Limit 1 is answered 5.08 naming the gateway, and Hop-Limit 2 goes
  through (upstream with 1) with the same answer as the server's.
* Time: ``mitigation-start`` (when each server installed the request) and the remaining
  ``lifetime`` of a GET differ by when each server received the request; they are
  compared by presence only.
* CoAP message layer: a CON mitigation request is answered piggybacked by the server but
  acknowledged at once by the gateway and answered separately (RFC 7252 §5.2.2) once the
  upstream answer is in. The results compared here (code, options, body) are the same.
* GET ``config`` is answered per hop by the gateway itself (RFC 9132 §4.5.1). The upstream
  server's ``max_age`` is different on purpose (900 vs 600), so a relayed config would
  show up as a Max-Age mismatch.

A run is a handful of short-lived processes: each coap-client run has ``-B`` and a
subprocess timeout, each aiocoap request a ``wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.dots.codec import cbor_to_json, json_to_cbor
from tests.interop.conftest import require
from tests.interop.gateway_topology import CLIENT_MAX_AGE, TINYDTLS_PSK, Topology, topology
from tests.interop.peers import (
    DOTS_CBOR,
    HB_BODY,
    aiocoap_dtls_client,
    aiocoap_tls_client,
    client_ssl_context,
    coap_client,
    coaps_uri,
    run_peer,
)

pytestmark = pytest.mark.interop

OPENSSL = "coap-client-openssl"
TEXT = 0  # text/plain;charset=utf-8
PATHS = ("direct", "gateway")
SCOPE = "ietf-dots-signal-channel:mitigation-scope"
#: Set by each server at installation time or counting down: compared by presence only.
CLOCK_FIELDS = ("mitigation-start", "lifetime")
#: libcoap prints each PDU it receives at ``-v 6``:
#: ``v:1 t:ACK c:2.05 i:8937 {01} [ Content-Format:application/dots+cbor, Max-Age:600 ]
#: :: binary data length 210`` and then ``<<hex>>`` on the next line, or ``:: 'text'``.
#: Requests show their method instead of a code, so only responses match.
RESPONSE_PDU = re.compile(r"v:1 t:(?:CON|NON|ACK|RST) c:(?P<code>[2-5]\.\d\d) i:[0-9a-f]+ "
                          r"\{[0-9a-f]*\} \[ ?(?P<options>.*?) ?\](?: :: (?P<data>.*))?")
LIBCOAP_FORMATS = {"application/dots+cbor": DOTS_CBOR, "text/plain": TEXT}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with topology(tmp_path_factory.mktemp("gateway-interop")) as processes:
        yield processes


# --- what is sent and what came back ---------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    method: str  # "get", "put", "delete"
    path: str
    body: bytes | None = None
    hop_limit: int | None = None
    #: NON in RFC 9132 (mitigation requests and heartbeats; §4.4, §4.7), else CON (§4.5).
    non: bool = True
    #: The direct server's answer, and the gateway's when it must differ.
    code: str = "2.05"
    via_gateway: str | None = None
    #: The gateway answers itself (diagnostic prefixed with "gateway: ").
    gateway_refuses: bool = False


@dataclass(frozen=True)
class Outcome:
    code: str  # dotted, "2.01"
    content_format: int | None
    max_age: int | None
    body: Any  # CBOR bodies in their JSON form, diagnostics as text, None when empty

    def comparable(self) -> Outcome:
        """Without the clock-dependent values (see the module docstring)."""
        if not isinstance(self.body, dict) or SCOPE not in self.body or self.code != "2.05":
            return self
        scopes = [{k: ("<present>" if k in CLOCK_FIELDS else v) for k, v in s.items()}
                  for s in self.body[SCOPE]["scope"]]
        return Outcome(self.code, self.content_format, self.max_age,
                       {**self.body, SCOPE: {**self.body[SCOPE], "scope": scopes}})


def decode(content_format: int | None, payload: bytes) -> Any:
    if not payload:
        return None
    if content_format == DOTS_CBOR:
        return cbor_to_json(payload)
    return payload.decode("utf-8", "replace")


def mitigation_body(prefix: str, lifetime: int | None = 3600) -> bytes:
    scope: dict[str, Any] = {"target-prefix": [prefix], "target-protocol": [6]}
    if lifetime is not None:
        scope["lifetime"] = lifetime
    return json_to_cbor(json.dumps({SCOPE: {"scope": [scope]}}))


def sequence(cuid: str, mid: int, prefix: str) -> list[Step]:
    """The steps every peer runs, on both paths. ``prefix`` is inside the client's allowed
    prefixes and distinct per test, so that runs sharing the servers never overlap."""
    mitigate = f".well-known/dots/mitigate/cuid={cuid}"
    this = f"{mitigate}/mid={mid}"
    return [
        Step("put-mitigation", "put", this, mitigation_body(prefix), code="2.01"),
        Step("get-mitigation", "get", this),
        Step("get-config", "get", ".well-known/dots/config", non=False),
        Step("put-hb", "put", ".well-known/dots/hb", HB_BODY, code="2.04"),
        # Refused by the gateway itself. The upstream server lets the gateway protect any
        # prefix, so only the gateway's own check of the client's prefixes yields 4.01.
        Step("put-without-lifetime", "put", f"{mitigate}/mid={mid + 1}",
             mitigation_body(prefix, lifetime=None), code="4.00", gateway_refuses=True),
        Step("put-outside-prefixes", "put", f"{mitigate}/mid={mid + 2}",
             mitigation_body("203.0.113.0/24"), code="4.01", gateway_refuses=True),
        # Relayed: the upstream server's answer, diagnostic unchanged.
        Step("get-unknown-mid", "get", f"{mitigate}/mid={mid + 50}", code="4.04"),
        Step("get-hop-limit-2", "get", this, hop_limit=2),
        Step("get-hop-limit-1", "get", this, hop_limit=1, via_gateway="5.08"),
        Step("delete-mitigation", "delete", this, code="2.02"),
        Step("get-after-delete", "get", this),  # active-but-terminating (§4.4.4)
    ]


#: The prefix of a relayed upstream error: ``upstream <name> (<uri>): `` or ``upstream <uri>: ``.
UPSTREAM_HOP = re.compile(r"^upstream (\S+ \([^)]*\)|\S+): ")


class Peer(Protocol):
    async def send(self, path: str, port: int, step: Step) -> Outcome: ...


async def run_sequence(peer: Peer, net: Topology, steps: list[Step]
                       ) -> list[tuple[Step, dict[str, Outcome]]]:
    """Each step on both paths before the next one, so both see the same history and
    about the same clock."""
    results = []
    for step in steps:
        results.append((step, {p: await peer.send(p, net.port(p), step) for p in PATHS}))
    return results


def differences(results: list[tuple[Step, dict[str, Outcome]]]) -> list[str]:
    """Every way the two paths disagree beyond the legitimate differences; [] when none."""
    problems = []
    for step, got in results:
        direct, through = got["direct"], got["gateway"]
        if direct.code != step.code:
            problems.append(f"{step.name}: the server answered {direct.code}, not {step.code}: "
                            f"{direct.body!r}")
        if step.via_gateway is not None:
            if through.code != step.via_gateway:
                problems.append(f"{step.name}: the gateway answered {through.code}, not "
                                f"{step.via_gateway}: {through.body!r}")
            continue
        if step.gateway_refuses:
            if not (isinstance(through.body, str) and through.body.startswith("gateway: ")):
                problems.append(f"{step.name}: the gateway's own answer does not say so: "
                                f"{through.body!r}")
            else:
                through = Outcome(through.code, through.content_format, through.max_age,
                                  through.body.removeprefix("gateway: "))
        elif isinstance(through.body, str) and UPSTREAM_HOP.match(through.body):
            # A relayed error names the hop that produced it (issue 20 §2); compare what
            # the server said (an empty diagnostic becomes the code).
            said = UPSTREAM_HOP.sub("", through.body, count=1)
            through = Outcome(through.code, through.content_format, through.max_age,
                              None if said == through.code else said)
        if direct.comparable() != through.comparable():
            problems.append(f"{step.name}: direct {direct} != through the gateway {through}")
    return problems


def check(net: Topology, results: list[tuple[Step, dict[str, Outcome]]], cuid: str,
          mid: int) -> None:
    problems = differences(results)
    assert not problems, "\n".join(problems)
    # The gateway path really went upstream (a gateway answering as the DOTS server itself
    # would pass the comparison): the upstream server got the request from the gateway,
    # with the cdid naming the credential the direct server saw (RFC 9132 §4.4.1.2).
    [(credential, cdid)] = net.direct.saved(cuid, mid)
    assert cdid is None
    assert net.upstream.saved(cuid, mid) == [(net.pkis.gateway_cuid, credential)]
    got = {step.name: outcomes for step, outcomes in results}
    for path in PATHS:
        created = got["put-mitigation"][path].body
        assert created[SCOPE]["scope"] == [{"mid": mid, "lifetime": 3600}], (path, created)
        for name, status in (("get-mitigation", "attack-mitigation-in-progress"),
                             ("get-after-delete", "dots-client-withdrawn-mitigation")):
            [scope] = got[name][path].body[SCOPE]["scope"]
            assert scope["status"] == status, (path, name, scope)
            assert set(CLOCK_FIELDS) <= set(scope), (path, name, scope)
        config = got["get-config"][path]
        assert config.max_age == CLIENT_MAX_AGE, (path, config)  # not upstream's (900)
        assert "ietf-dots-signal-channel:signal-config" in config.body
        assert got["put-hb"][path].body is None
    loop = got["get-hop-limit-1"]["gateway"]
    assert (loop.content_format, loop.body) == (TEXT, "hop limit reached: gw")
    assert got["get-hop-limit-1"]["direct"].comparable() == got["get-mitigation"][
        "direct"].comparable()  # the server is no proxy: Hop-Limit means nothing to it


# --- libcoap: coap-client-openssl, X.509 over DTLS -------------------------------------------


@dataclass
class Libcoap:
    net: Topology
    workdir: Path
    all_con: bool
    runs: list[str] = field(default_factory=list)  # every run's output, for failures

    async def send(self, path: str, port: int, step: Step) -> Outcome:
        pki = self.net.pkis.down
        body = None
        if step.body is not None:
            body = self.workdir / f"{step.name}.cbor"
            body.write_bytes(step.body)
        extra = [] if self.all_con or not step.non else ["-N"]
        if step.hop_limit is not None:
            extra += ["-H", str(step.hop_limit)]
        argv = coap_client(OPENSSL, coaps_uri("coaps", "127.0.0.1", port, step.path),
                           method=step.method, body=body, cert=pki / "client.pem",
                           key=pki / "client.key", ca=pki / "ca.pem", wait=5, extra=extra)
        run = await run_peer(argv, timeout=15)
        self.runs.append(f"[{path} {step.name}] {run}")
        outcome = parse_libcoap(run.output)
        assert outcome is not None, f"no response from the {path} path:\n{run}"
        return outcome


def parse_libcoap(output: str) -> Outcome | None:
    """The last response PDU coap-client printed (-v 6). An empty ACK before a separate
    response has code 0.00 and does not match."""
    found = list(RESPONSE_PDU.finditer(output))
    if not found:
        return None
    pdu = found[-1]
    options = dict(item.split(":", 1) for item in pdu["options"].split(", ") if item)
    fmt = options.get("Content-Format")
    content_format = LIBCOAP_FORMATS[fmt] if fmt is not None else None
    max_age = int(options["Max-Age"]) if "Max-Age" in options else None
    data = pdu["data"] or ""
    if data.startswith("binary data length"):
        hexed = re.match(r"\s*<<([0-9a-f]*)>>", output[pdu.end():])
        payload = bytes.fromhex(hexed[1]) if hexed else b""
    elif data.startswith("'") and data.endswith("'"):
        payload = data[1:-1].encode()
    else:
        payload = b""
    return Outcome(pdu["code"], content_format, max_age, decode(content_format, payload))


@pytest.mark.parametrize("types", ["rfc9132", "all-con"])
async def test_coap_client_openssl_same_answers_through_the_gateway(
        net: Topology, tmp_path: Path, types: str) -> None:
    """``rfc9132``: NON for mitigation requests and heartbeats, CON for config (RFC 9132
    §4.4, §4.5, §4.7). ``all-con``: every request CON, which makes the gateway acknowledge
    relayed requests at once and answer separately (the server piggybacks)."""
    require(OPENSSL)
    mid = {"rfc9132": 100, "all-con": 200}[types]
    prefix = {"rfc9132": "2001:db8:6401::/64", "all-con": "2001:db8:6402::/64"}[types]
    peer = Libcoap(net, tmp_path, all_con=types == "all-con")
    results = await run_sequence(peer, net, sequence(net.pkis.client_cuid, mid, prefix))
    try:
        check(net, results, net.pkis.client_cuid, mid)
    except AssertionError:
        print("\n\n".join(peer.runs))  # shown by pytest for the failed test
        raise


# --- aiocoap: X.509 over TLS (coaps+tcp), PSK over DTLS (tinydtls) ---------------------------


@dataclass
class Aiocoap:
    """One aiocoap client context talking to both paths, as one client to two servers."""

    scheme: str  # "coaps+tcp" or "coaps"
    ctx: Any
    #: Every connection used, held until ``Context.shutdown()`` (see ``send``).
    remotes: set[Any] = field(default_factory=set)

    async def send(self, path: str, port: int, step: Step) -> Outcome:
        import aiocoap

        options: dict[str, Any] = {}
        if self.scheme == "coaps" and step.non:
            options["transport_tuning"] = aiocoap.Unreliable  # NON
        message = aiocoap.Message(code=getattr(aiocoap, step.method.upper()),
                                  uri=f"{self.scheme}://127.0.0.1:{port}/{step.path}",
                                  payload=step.body or b"", **options)
        if step.body is not None:
            message.opt.content_format = DOTS_CBOR
        if step.hop_limit is not None:
            message.opt.hop_limit = step.hop_limit
        response = await asyncio.wait_for(self.ctx.request(message).response, 10)
        # aiocoap's tinydtls pool holds its connections weakly: the one to one path, unused
        # while the other path is talked to, may be taken by the cyclic GC, whose finalizer
        # then runs with the connection's callbacks (weak references) already dead: a
        # warning, a SystemError out of DTLSSocket and a UDP socket left open. Held here,
        # each one is shut down by Context.shutdown(), and each path keeps one session.
        self.remotes.add(response.remote)
        fmt = response.opt.content_format
        content_format = int(fmt) if fmt is not None else None
        return Outcome(response.code.dotted, content_format, response.opt.max_age,
                       decode(content_format, response.payload))


@contextlib.asynccontextmanager
async def aiocoap_peer(net: Topology, scheme: str) -> AsyncIterator[Aiocoap]:
    """The context is shut down once, here (a second ``shutdown()`` raises in 0.4.17)."""
    if scheme == "coaps+tcp":
        pki = net.pkis.down
        ctx = await aiocoap_tls_client(client_ssl_context(pki / "client.pem",
                                                          pki / "client.key", pki / "ca.pem"))
    else:
        identity, key = TINYDTLS_PSK
        ctx = await aiocoap_dtls_client(f"coaps://127.0.0.1:{net.port('direct')}/*",
                                        identity, key)
        ctx.client_credentials.load_from_dict({f"coaps://127.0.0.1:{net.port('gateway')}/*": {
            "dtls": {"psk": key.encode(), "client-identity": identity.encode()}}})
    peer = Aiocoap(scheme, ctx)
    try:
        yield peer
    finally:
        await ctx.shutdown()
        await closed_by_the_server(peer.remotes)


async def closed_by_the_server(remotes: set[Any], timeout: float = 5.0) -> None:
    """aiocoap 0.4.17's coaps+tcp shutdown sends Release and leaves closing to the server
    (RFC 8323 §5.5) without waiting for it; wait until each socket is closed, or the test's
    event loop may close first and leave it open (a ResourceWarning, hence an error, at
    interpreter exit). Past ``timeout`` the connection is aborted here. ``_transport`` is
    private to aiocoap, as the hook in ``peers.aiocoap_tls_client`` is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for remote in remotes:
        transport = getattr(remote, "_transport", None)
        if transport is None:
            continue
        sock = transport.get_extra_info("socket")
        while sock is not None and sock.fileno() != -1:
            if loop.time() > deadline:
                transport.abort()
                break
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("scheme", ["coaps+tcp", "coaps"])
async def test_aiocoap_same_answers_through_the_gateway(net: Topology, scheme: str) -> None:
    """coaps+tcp: the client certificate (aiocoap's private hook, see ``peers``);
    coaps: tinydtls with the 16-byte PSK both client-facing servers accept."""
    pytest.importorskip("aiocoap")
    if scheme == "coaps":
        pytest.importorskip("DTLSSocket", reason="aiocoap's tinydtls transport needs DTLSSocket")
    mid = {"coaps+tcp": 300, "coaps": 400}[scheme]
    prefix = {"coaps+tcp": "2001:db8:6403::/64", "coaps": "2001:db8:6404::/64"}[scheme]
    cuid = net.pkis.client_cuid if scheme == "coaps+tcp" else net.pkis.psk_cuid
    async with aiocoap_peer(net, scheme) as peer:
        results = await run_sequence(peer, net, sequence(cuid, mid, prefix))
    check(net, results, cuid, mid)
