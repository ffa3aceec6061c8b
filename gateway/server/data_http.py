"""The DOTS data channel over HTTPS: aiohttp in front of ``DataChannelCore`` (RFC 8783).

Owns the listener: a stdlib ``ssl`` server context with the signal channel's credentials
(TLS 1.2 or 1.3, a client certificate required and verified against the same CAs and CRL,
RFC 8783 §8), one aiohttp site per address, and the translation of an HTTP request into a
``DataRequest``: the requester is known by the cuid derived from its certificate (RFC 9132
App. B, as on the signal channel), its subject and whether it is a trusted gateway. Bodies
over ``[data_channel] max_body`` are 413, bodies that are not ``application/yang-data+json``
415; a failed save is 503 and anything unexpected 500, each with an ``ietf-restconf:errors``
body and a log line, never a dropped connection. ``/.well-known/host-meta`` names the
RESTCONF root (RFC 8040 §3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gateway.config import Settings
from gateway.credentials import certificate_subject, peer_identity
from gateway.dots.authz import Authorizer
from gateway.dots.data_channel import DataChannelCore, DataLimits, DataRequest, DataResponse
from gateway.dots.data_nodes import MEDIA_TYPE, RestconfError
from gateway.dots.message import Requester
from gateway.server.data_store import DataStoreDatabase
from gateway.server.persistence import PersistenceError
from gateway.transport.secure_session import PeerCredential
from gateway.transport.tls_context import ServerCredentials
from gateway.transport.udp import PortInUse

log = logging.getLogger(__name__)

_JSON_TYPES = (MEDIA_TYPE, "application/json")
#: Seconds between two sweeps of expired aliases and ACLs (RFC 8783 pending-lifetime).
SWEEP_INTERVAL = 60.0
_HOST_META = ("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n"
              "    <Link rel='restconf' href='/restconf'/>\n</XRD>\n")


def server_ssl_context(credentials: ServerCredentials) -> ssl.SSLContext:
    """TLS 1.2+ with a verified client certificate, from the signal channel's files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8783 §8 (RFC 7525)
    assert credentials.cert_chain is not None and credentials.private_key is not None
    context.load_cert_chain(credentials.cert_chain, credentials.private_key)
    if credentials.client_ca is not None:
        context.load_verify_locations(cafile=credentials.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED  # RFC 8783 §8: mutual authentication
    if credentials.crl is not None:
        context.load_verify_locations(cafile=credentials.crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    context.set_alpn_protocols(["http/1.1"])
    return context


class Upstream(Protocol):
    """Gateway mode: where accepted requests go (``gateway.relay.data_upstream``)."""

    async def forward(self, method: str, path: str, query: str,
                      body: bytes) -> DataResponse: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DataChannelOptions:
    hosts: Sequence[tuple[str, int]]
    limits: DataLimits
    max_body: int


class DataChannelServer:
    """The running HTTPS listener. ``authorizer`` and ``trusted_gateways`` are read per
    request, so a reload of the configuration applies to the next request."""

    def __init__(self, store: DataStoreDatabase, context: ssl.SSLContext,
                 options: DataChannelOptions, authorizer: Callable[[], Authorizer],
                 trusted_gateways: Callable[[], frozenset[str]], *,
                 upstream: Upstream | None = None,
                 cdid: Callable[[str], str | None] = lambda _: None) -> None:
        self.store = store
        #: The context new handshakes use (replaced by ``reload_credentials``).
        self.current = context
        context.sni_callback = self._hand_over
        #: Gateway mode: requests are checked here and relayed there; nothing is stored.
        self.upstream = upstream
        self._cdid = cdid
        self.context = context
        self.options = options
        self.core = DataChannelCore(store, authorizer(), options.limits)
        self._authorizer = authorizer
        self._trusted = trusted_gateways
        self.failures = 0
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.bound: list[str] = []

    def reload_credentials(self, credentials: ServerCredentials) -> None:
        """A reload or a changed CRL: new connections get a context built from
        ``credentials`` (certificate, CAs, CRL); connections already open keep the identity
        they were admitted with. The listener's own context only hands each handshake over
        to the current one (its SNI callback), since asyncio binds a listener to one
        context object for good."""
        self.current = server_ssl_context(credentials)

    def _hand_over(self, ssl_object: ssl.SSLObject, _name: str | None,
                   _context: ssl.SSLContext) -> None:
        if self.current is not self.context:
            ssl_object.context = self.current

    @property
    def urls(self) -> list[str]:
        return [f"https://{address}" for address in self.bound]

    async def start(self) -> None:
        app = web.Application(client_max_size=self.options.max_body)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            for host, port in self.options.hosts:
                site = web.TCPSite(self._runner, host, port, ssl_context=self.context,
                                   reuse_address=True)
                await site.start()
                server = site._server  # aiohttp keeps the asyncio server there
                for sock in getattr(server, "sockets", ()) or ():
                    bound = sock.getsockname()
                    self.bound.append(f"[{bound[0]}]:{bound[1]}" if ":" in bound[0]
                                      else f"{bound[0]}:{bound[1]}")
        except BaseException:
            await self.stop()
            raise
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """Expired aliases and ACLs of every client go once a minute (each request also
        expires its own client's at once)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.upstream is not None:
                continue
            try:
                self.core.expire(time.time())
            except PersistenceError as exc:  # counted by the store; tried again next time
                log.error("data channel: expired entries not removed: %s", exc)

    async def stop(self) -> None:
        """Close the listeners and connections (the store stays open: ``close``)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def aclose(self) -> None:
        await self.stop()
        if self.upstream is not None:
            await self.upstream.aclose()
        self.store.close()

    # --- one request ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == "/.well-known/host-meta":
            return web.Response(text=_HOST_META, content_type="application/xrd+xml")
        requester = self._requester(request)
        if requester is None:  # cannot happen with CERT_REQUIRED; refuse rather than guess
            return _error(RestconfError(403, "access-denied", "no client certificate"))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(RestconfError(413, "too-big", f"the body is larger than the "
                                        f"{self.options.max_body} bytes this server accepts"))
        if body and request.method in ("POST", "PUT"):
            media = request.content_type
            if media not in _JSON_TYPES:
                return _error(RestconfError(415, "invalid-value", f"Content-Type {media} is "
                                            f"not supported; send {MEDIA_TYPE}"))
        accept = request.headers.get("Accept", "")
        if accept and not any(kind in accept for kind in ("json", "*/*", "application/*")):
            return _error(RestconfError(406, "invalid-value",
                                        f"this server answers {MEDIA_TYPE} only"))
        self.core.authorizer = self._authorizer()
        data_request = DataRequest(request.method, request.raw_path.partition("?")[0],
                                   request.query_string, body, requester)
        try:
            if self.upstream is not None:
                answer = await self._relay(data_request)
            else:
                answer = self.core.handle(data_request, time.time())
        except PersistenceError as exc:
            self.failures += 1
            self.core.answered[503] = self.core.answered.get(503, 0) + 1
            log.error("data channel %s %s not saved: %s", request.method, request.path, exc)
            return _error(RestconfError(503, "operation-failed", "the change could not be "
                                        "saved; nothing was changed, try again later"))
        except Exception:
            self.failures += 1
            self.core.answered[500] = self.core.answered.get(500, 0) + 1
            log.exception("data channel %s %s failed", request.method, request.path)
            return _error(RestconfError(500, "operation-failed", "internal error"))
        if request.method != "GET" or answer.status >= 400:
            log.info("data channel %s %s status=%d cuid=%s peer=%s", request.method,
                     request.path, answer.status, requester.credential_id, request.remote)
        headers = dict(answer.headers)
        if answer.document is None:
            return web.Response(status=answer.status, headers=headers)
        return web.json_response(answer.document, status=answer.status, headers=headers,
                                 content_type=MEDIA_TYPE, dumps=_dumps)

    async def _relay(self, request: DataRequest) -> DataResponse:
        assert self.upstream is not None
        try:
            body = self.core.vet(request, time.time(),
                                 cdid=self._cdid(request.requester.credential_id))
            answer = await self.upstream.forward(request.method, request.raw_path,
                                                 request.query, body)
        except RestconfError as exc:
            answer = DataResponse(exc.status, exc.body())
        self.core.answered[answer.status] = self.core.answered.get(answer.status, 0) + 1
        return answer

    def _requester(self, request: web.Request) -> Requester | None:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        identity = peer_identity(PeerCredential(certificate=der))
        return Requester(identity.cuid, trusted_gateway=identity.cuid in self._trusted(),
                         subject=certificate_subject(der))


def _dumps(document: Any) -> str:
    return json.dumps(document, indent=2)


def _error(error: RestconfError) -> web.Response:
    return web.json_response(error.body(), status=error.status, content_type=MEDIA_TYPE,
                             dumps=_dumps)


async def start_data_channel(settings: Settings, credentials: ServerCredentials,
                             authorizer: Callable[[], Authorizer],
                             trusted_gateways: Callable[[], frozenset[str]], *,
                             upstream: Upstream | None = None,
                             cdid: Callable[[str], str | None] = lambda _: None,
                             store: DataStoreDatabase | None = None,
                             ) -> DataChannelServer:
    """Open the data-channel store (``dots.sqlite`` of the state directory) and listen on
    ``[data_channel]``'s addresses; raises ``OSError`` (port in use), ``ssl.SSLError`` or
    ``PersistenceError`` with nothing left open. ``upstream`` (gateway mode): relay what
    passes the checks there instead of storing it, with ``cdid`` for registrations.
    ``store``: one the caller opened (and closes if this fails); else opened here."""
    d = settings.data_channel
    owned = store is None
    if store is None:
        store = DataStoreDatabase.in_state_dir(settings.general.state_dir)
    try:
        options = DataChannelOptions(
            hosts=[(str(a), d.port) for a in d.listen_addresses(settings.server)],
            limits=DataLimits(max_clients=d.max_clients, max_aliases=d.max_aliases,
                              max_acls=d.max_acls, max_aces=d.max_aces, lifetime=d.lifetime),
            max_body=d.max_body)
        server = DataChannelServer(store, server_ssl_context(credentials), options, authorizer,
                                   trusted_gateways, upstream=upstream, cdid=cdid)
        await server.start()
    except OSError as exc:
        if owned:
            store.close()
        if upstream is not None:
            await upstream.aclose()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, f"data_channel.port {d.port} is already in use") \
                from None
        raise
    except BaseException:
        if owned:
            store.close()
        if upstream is not None:
            await upstream.aclose()
        raise
    return server
