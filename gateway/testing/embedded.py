"""``EmbeddedServer``: ``dots-gateway server`` in the test's event loop, torn down after it.

What a client test needs and what it costs to get it wrong:

* Ephemeral ports (port 0, one for DTLS, one for TLS) so that tests run in parallel and
  never meet a daemon someone left on 4646.
* Its own dev PKI in a temporary directory, removed on exit. The dev PKI's PSK is replaced
  by a 16-byte one: aiocoap's DTLS is tinydtls, whose keys are at most 16 bytes
  (``DTLS_PSK_MAX_KEY_LEN``; a longer one aborts the handshake and the request hangs until
  its timeout), and which speaks only the non-ECDHE PSK suites, so the server offers them
  (``tls.allow_legacy_psk``, a test-only setting: RFC 9132 §7.1 asks for (EC)DHE).
* The same server the daemon runs (``gateway.daemon.start_server``), with the dev PKI's
  authorization: the client certificate and the PSK may protect any prefix, each with the
  cuid derived from it (RFC 9132 §4.4.1), which ``credentials`` gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import shutil
import string
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from certs.devpki import init_dev_pki
from gateway.config import load_config
from gateway.dots.codec import message_to_json
from gateway.dots.model import MitigationScope

if TYPE_CHECKING:
    import ssl

    from gateway.daemon import RunningServer

#: tinydtls (aiocoap's DTLS) takes PSK keys of at most 16 bytes.
PSK_KEY_LENGTH = 16
PSK_IDENTITY = "dots-testkit-client"
_SCOPE = "ietf-dots-signal-channel:mitigation-scope"


@dataclass(frozen=True)
class KitCredentials:
    """The client credentials an ``EmbeddedServer`` accepts, in the forms clients take."""

    ca: Path
    client_cert: Path
    client_key: Path
    psk_identity: str
    #: Printable ASCII, 16 bytes: usable by tinydtls and as ``coap-client -k``.
    psk_key: str
    #: The cuid a client must use with the certificate / with the PSK (RFC 9132 §4.4.1).
    cert_cuid: str
    psk_cuid: str

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS client context presenting the client certificate and trusting the kit's
        CA (for coaps+tcp; the server certificate names 127.0.0.1, ::1 and localhost)."""
        import ssl

        context = ssl.create_default_context(cafile=str(self.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9132 §7.1
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def aiocoap_psk(self, uri_pattern: str) -> dict[str, Any]:
        """An entry for aiocoap's ``client_credentials.load_from_dict``: the PSK for URIs
        matching ``uri_pattern`` (e.g. ``"coaps://127.0.0.1:PORT/*"``)."""
        return {uri_pattern: {"dtls": {"psk": self.psk_key.encode(),
                                       "client-identity": self.psk_identity.encode()}}}

    def coap_client_args(self, *, psk: bool = False) -> list[str]:
        """libcoap ``coap-client`` options: the client certificate, key and CA, or
        (``psk=True``) the PSK identity and key."""
        if psk:
            return ["-u", self.psk_identity, "-k", self.psk_key]
        return ["-c", str(self.client_cert), "-j", str(self.client_key), "-C", str(self.ca)]


class EmbeddedServer:
    """A terminal-mode DOTS server for one test: ``async with EmbeddedServer() as server``.

    ``host``: the address to listen on (127.0.0.1 or ::1). ``transports``: ``"udp"``
    (coaps, DTLS) and/or ``"tcp"`` (coaps+tcp, TLS). ``config``: extra TOML appended to the
    kit's configuration (e.g. ``[session.idle]`` bounds or ``[mitigation]`` settings; not
    ``[general]``, ``[server]`` or ``[tls]``, which the kit writes). On exit every session is
    closed, the server stopped and its directory removed.
    """

    def __init__(self, *, host: str = "127.0.0.1", transports: Sequence[str] = ("udp", "tcp"),
                 config: str = "") -> None:
        self.host = host
        self.transports = tuple(transports)
        self.extra_config = config
        self.directory: Path | None = None
        self._running: RunningServer | None = None
        self._credentials: KitCredentials | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Write the PKI and configuration, then bind and serve; raises on a bad start
        (with the directory already removed)."""
        from gateway.daemon import start_server

        if self._running is not None:
            raise RuntimeError("this EmbeddedServer is already running")
        self.directory = Path(tempfile.mkdtemp(prefix="dots-testkit-"))
        try:
            self._credentials = _write_pki(self.directory / "state" / "pki")
            path = self.directory / "server.toml"
            path.write_text(_config_text(self.directory / "state", self.host,
                                         self.transports, self.extra_config))
            settings = load_config(path)
            # Port 0: the configuration language refuses it (an operator means a real
            # port); each transport gets its own ephemeral one.
            settings = dataclasses.replace(
                settings, server=dataclasses.replace(settings.server, port=0))
            self._running = await start_server(settings)
        except BaseException:
            self._remove_directory()
            raise

    async def stop(self) -> None:
        """Close every session, stop serving, remove the directory (idempotent)."""
        running, self._running = self._running, None
        try:
            if running is not None:
                await running.stop()
        finally:
            self._remove_directory()

    def _remove_directory(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # --- where and how to connect -----------------------------------------------------------

    @property
    def running(self) -> RunningServer:
        """The daemon's server object (roles, transports, counters) for deeper checks."""
        if self._running is None:
            raise RuntimeError("the EmbeddedServer is not running (use `async with`)")
        return self._running

    @property
    def credentials(self) -> KitCredentials:
        if self._credentials is None or self._running is None:
            raise RuntimeError("the EmbeddedServer is not running (use `async with`)")
        return self._credentials

    @property
    def port_udp(self) -> int:
        dtls = self.running.dtls
        if dtls is None:
            raise RuntimeError("this EmbeddedServer does not serve udp (coaps)")
        return int(dtls.bound[0].port)

    @property
    def port_tcp(self) -> int:
        tls = self.running.tls
        if tls is None:
            raise RuntimeError("this EmbeddedServer does not serve tcp (coaps+tcp)")
        return int(tls.bound[0].port)

    @property
    def coaps_uri(self) -> str:
        """``coaps://HOST:PORT`` (DTLS), without a path."""
        return f"coaps://{self._hostinfo()}:{self.port_udp}"

    @property
    def coaps_tcp_uri(self) -> str:
        """``coaps+tcp://HOST:PORT`` (TLS), without a path."""
        return f"coaps+tcp://{self._hostinfo()}:{self.port_tcp}"

    def uri(self, resource: str, *, tcp: bool = False) -> str:
        """The URI of a DOTS signal-channel resource, e.g. ``uri("hb")`` or
        ``uri(f"mitigate/cuid={cuid}/mid=1", tcp=True)``."""
        base = self.coaps_tcp_uri if tcp else self.coaps_uri
        return f"{base}/.well-known/dots/{resource.lstrip('/')}"

    def _hostinfo(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    # --- what it received ---------------------------------------------------------------------

    @property
    def mitigations(self) -> list[dict[str, Any]]:
        """The mitigation requests the server holds now, oldest first, each as the RFC 9132
        JSON of one ``scope`` a GET would answer (``mid``, ``target-prefix``, ``lifetime``
        left, ``status``...) plus the owner's ``cuid`` first. Reading does not count as a
        status report to the client."""
        role = self.running.role
        store = role.core.store
        now = role.clock()
        out = []
        for record in store.records():
            scope = store.view(record, now, count_report=False)
            body = message_to_json(MitigationScope((scope,)))
            out.append({"cuid": record.cuid, **body[_SCOPE]["scope"][0]})
        return out

    async def wait_for_mitigation(self, match: Callable[[dict[str, Any]], bool] | None = None,
                                  *, timeout: float = 10.0) -> dict[str, Any]:
        """The first held mitigation ``match`` accepts (any, without it), waiting up to
        ``timeout`` seconds; ``TimeoutError`` naming what the server holds otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for mitigation in self.mitigations:
                if match is None or match(mitigation):
                    return mitigation
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no matching mitigation within {timeout} s; the server "
                                   f"holds {json.dumps(self.mitigations)}")
            await asyncio.sleep(0.05)


def _write_pki(directory: Path) -> KitCredentials:
    """The dev PKI with a 16-byte PSK in its ``psk.json`` (the daemon reads it from there)."""
    pki = init_dev_pki(directory)
    alphabet = string.ascii_letters + string.digits
    key = "".join(secrets.choice(alphabet) for _ in range(PSK_KEY_LENGTH))
    pki.psk_file.write_text(json.dumps({"identity": PSK_IDENTITY, "key": key}) + "\n")
    from certs.identity import cuid_from_psk_identity

    return KitCredentials(pki.ca_cert, pki.client_cert, pki.client_key, PSK_IDENTITY, key,
                          pki.client_cuid, cuid_from_psk_identity(PSK_IDENTITY))


def _config_text(state_dir: Path, host: str, transports: Sequence[str], extra: str) -> str:
    return (f"[general]\nstate_dir = {json.dumps(str(state_dir))}\nmode = \"terminal\"\n"
            f"[server]\naddresses = [{json.dumps(host)}]\n"
            f"transports = {json.dumps(list(transports))}\n"
            # No ca/cert/key: the dev PKI in <state_dir>/pki, which _write_pki made.
            "[tls]\nallow_legacy_psk = true\n" + extra)
