"""Gateway mode for the DOTS data channel: requests the gateway accepted are relayed to the
upstream data-channel server (RFC 8783 §3, RFC 8811 §2.2.1).

The gateway terminates the client's HTTPS and checks the request itself first
(``DataChannelCore.vet``: the client's cuid and domain, every node of the body; a
server-domain gateway inserts the cdid into registrations); then ``DataUpstream.forward``
sends it with the gateway's own certificate (``[gateway]`` cert/key/ca, as its signal-channel
sessions) to the upstream server: ``[data_channel] upstream`` when configured, else the
first ``data.tcp`` candidate of the discovery engine (S-NAPTR, DNS-SD ``_dots-data._tcp``,
RFC 8973). The upstream's status, body and Location come back unchanged. When there is no
upstream the client gets 503, an unreachable or silent one 502 or 504, each with an
``ietf-restconf:errors`` body saying so.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from gateway.config import Settings
from gateway.dots.data_channel import DataResponse
from gateway.dots.data_nodes import MEDIA_TYPE, RestconfError, decode_json
from gateway.relay.startup import UpstreamDiscovery, upstream_credentials

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DataUpstreamServer:
    url: str  # https://HOST:PORT
    server_name: str | None = None


class DataUpstream:
    """The upstream data-channel server and one HTTPS client pool towards it."""

    def __init__(self, servers: Callable[[], list[DataUpstreamServer]],
                 context: ssl.SSLContext | None, *, timeout: float = 10.0,
                 problem: str | None = None) -> None:
        self.servers = servers
        self.context = context
        self.timeout = timeout
        #: Why nothing can be relayed (no certificate for HTTPS), or None.
        self.problem = problem
        self.relayed = 0
        self.failures = 0
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, method: str, path: str, query: str, body: bytes) -> DataResponse:
        if self.problem is not None:
            raise RestconfError(503, "operation-failed", self.problem)
        servers = self.servers()
        if not servers:
            raise RestconfError(503, "operation-failed", "no upstream data-channel server: "
                                "none configured ([data_channel] upstream) and none "
                                "discovered (data.tcp); `dots-gateway discover` shows why")
        server = servers[0]
        if self._session is None:
            assert self.context is not None
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.context, limit=64))
        url = server.url + path + (f"?{query}" if query else "")
        headers = {"Accept": MEDIA_TYPE}
        if body:
            headers["Content-Type"] = MEDIA_TYPE
        try:
            async with self._session.request(method, url, data=body or None, headers=headers,
                                             server_hostname=server.server_name) as answer:
                data = await answer.read()
                status = answer.status
                location = answer.headers.get("Location")
        except TimeoutError:
            self.failures += 1
            raise RestconfError(504, "operation-failed", f"the upstream data-channel server "
                                f"{server.url} did not answer within {self.timeout:g} s") \
                from None
        except (aiohttp.ClientError, OSError) as exc:
            self.failures += 1
            log.warning("data channel upstream %s: %s", server.url, exc)
            raise RestconfError(502, "operation-failed", f"the upstream data-channel server "
                                f"{server.url} cannot be reached: {exc}") from None
        self.relayed += 1
        document = None
        if data:
            try:
                document = decode_json(data)
            except RestconfError:
                self.failures += 1
                raise RestconfError(502, "operation-failed", f"the upstream data-channel "
                                    f"server {server.url} answered {status} with a body that "
                                    "is not JSON") from None
        return DataResponse(status, document, (("Location", location),) if location else ())

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def build_data_upstream(settings: Settings,
                        discovery: UpstreamDiscovery | None) -> DataUpstream:
    """The upstream side of the gateway's data channel, from ``[data_channel] upstream`` or
    the discovery engine, with the gateway's own certificate."""
    d = settings.data_channel
    configured = ([DataUpstreamServer(d.upstream, d.upstream_server_name)]
                  if d.upstream else [])

    def servers() -> list[DataUpstreamServer]:
        if configured or discovery is None:
            return configured
        return discovered(discovery)

    credentials = upstream_credentials(settings)
    if credentials.cert_chain is None or credentials.private_key is None:
        return DataUpstream(servers, None, problem="the gateway's upstream credential is a "
                            "PSK; the data channel (HTTPS) needs [gateway] cert and key")
    context = ssl.create_default_context(
        cafile=str(credentials.server_ca) if credentials.server_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(credentials.cert_chain, credentials.private_key)
    return DataUpstream(servers, context, timeout=float(settings.gateway.request_timeout))


def discovered(discovery: UpstreamDiscovery) -> list[DataUpstreamServer]:
    """The discovery engine's ``data.tcp`` candidates, in the procedure's order."""
    from gateway.discovery.candidates import Transport as Discovered

    out: list[DataUpstreamServer] = []
    for candidate in discovery.procedure.candidates():
        if candidate.transport is not Discovered.DATA_TCP:
            continue
        address = str(candidate.address)
        host = f"[{address}]" if ":" in address else address
        server = DataUpstreamServer(f"https://{host}:{candidate.port}",
                                    candidate.reference_identifier)
        if server not in out:
            out.append(server)
    return out


def data_cdid(settings: Settings) -> Callable[[str], str | None]:
    """cuid -> the cdid a server-domain gateway inserts into registrations (the hash of the
    client's credential, as on the signal channel, RFC 9132 §4.4.1.2), None otherwise."""
    from gateway.config import GatewayDomain

    g = settings.gateway
    if g.domain is not GatewayDomain.SERVER or not g.insert_cdid:
        return lambda _credential_id: None
    return lambda credential_id: credential_id
