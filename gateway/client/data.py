"""The DOTS data channel, client side: RESTCONF over HTTPS with a client certificate
(RFC 8783, RFC 8040), on aiohttp with a stdlib ``ssl`` context.

``DataChannelClient`` registers the client, manages its aliases and ACLs and reads the
server's capabilities; each call returns a ``DataAnswer`` (status, JSON document, Location)
whatever the status, so callers decide what a 409 means to them. Network failures (refused,
handshake failed, no answer in time) raise ``NetworkError``. The cuid is the one RFC 9132
App. B derives from the certificate, as on the signal channel, unless the caller names one.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from certs.identity import cuid_from_certificate
from gateway.client.connect import NetworkError

MODULE = "ietf-dots-data-channel"
MEDIA_TYPE = "application/yang-data+json"
DATA_ROOT = f"/restconf/data/{MODULE}:dots-data"
DEFAULT_URL = "https://localhost:8443"


@dataclass(frozen=True, slots=True)
class DataAnswer:
    method: str
    url: str
    status: int
    document: Any = None
    location: str | None = None
    request_document: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """``STATUS error-tag: message (at path)`` of an ``ietf-restconf:errors`` body."""
        try:
            first = self.document["ietf-restconf:errors"]["error"][0]
        except (KeyError, IndexError, TypeError):
            return f"{self.status}"
        where = f" (at {first['error-path']})" if first.get("error-path") else ""
        return f"{self.status} {first.get('error-tag', '')}: {first.get('error-message', '')}" \
               f"{where}"

    def entries(self, kind: str) -> list[dict[str, Any]]:
        """The aliases or ACLs of a GET answer, in RFC 8783's container form or RFC 8040's
        bare list form."""
        doc = self.document if isinstance(self.document, dict) else {}
        list_name = {"aliases": "alias", "acls": "acl"}[kind]
        if f"{MODULE}:{kind}" in doc:
            return list(doc[f"{MODULE}:{kind}"].get(list_name, []))
        return list(doc.get(f"{MODULE}:{list_name}", []))


def client_ssl_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8783 §8
    context.load_cert_chain(cert, key)
    return context


class DataChannelClient:
    """One HTTPS client of a data-channel server at ``url`` (``https://HOST[:PORT]``)."""

    def __init__(self, url: str, cert: Path, key: Path, ca: Path, *,
                 server_name: str | None = None, timeout: float = 10.0,
                 cuid: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{url}: the data channel needs an https://HOST[:PORT] URL")
        self.url = f"https://{parts.netloc}"
        self.context = client_ssl_context(cert, key, ca)
        self.server_name = server_name
        self.timeout = timeout
        self.cuid = cuid or cuid_from_certificate(Path(cert).read_bytes())
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DataChannelClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- resources -----------------------------------------------------------------------------

    def client_path(self, *rest: str) -> str:
        return "/".join([DATA_ROOT, f"dots-client={quote(self.cuid, safe='')}",
                         *(quote(part, safe="=") for part in rest)])

    async def register(self, cdid: str | None = None) -> DataAnswer:
        entry: dict[str, Any] = {"cuid": self.cuid} | ({"cdid": cdid} if cdid else {})
        return await self.request("POST", DATA_ROOT, {f"{MODULE}:dots-client": [entry]})

    async def unregister(self) -> DataAnswer:
        return await self.request("DELETE", self.client_path())

    async def tree(self) -> DataAnswer:
        return await self.request("GET", DATA_ROOT)

    async def capabilities(self) -> DataAnswer:
        return await self.request("GET", f"{DATA_ROOT}/capabilities")

    async def create(self, kind: str, entries: Sequence[Mapping[str, Any]]) -> DataAnswer:
        """POST new aliases or ACLs (``kind``: "aliases" or "acls"); 409 when one exists."""
        list_name = _list_name(kind)
        return await self.request("POST", self.client_path(),
                                  {f"{MODULE}:{kind}": {list_name: list(entries)}})

    async def put(self, kind: str, entry: Mapping[str, Any]) -> DataAnswer:
        """Create or replace (refresh) one alias or ACL."""
        list_name = _list_name(kind)
        path = self.client_path(kind, f"{list_name}={quote(str(entry['name']), safe='')}")
        return await self.request("PUT", path, {f"{MODULE}:{list_name}": [dict(entry)]})

    async def read(self, kind: str, name: str | None = None) -> DataAnswer:
        rest = [kind] if name is None else [kind, f"{_list_name(kind)}={quote(name, safe='')}"]
        return await self.request("GET", self.client_path(*rest))

    async def delete(self, kind: str, name: str) -> DataAnswer:
        return await self.request("DELETE", self.client_path(
            kind, f"{_list_name(kind)}={quote(name, safe='')}"))

    # --- HTTP ----------------------------------------------------------------------------------

    async def request(self, method: str, path: str, document: Any = None) -> DataAnswer:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self.context))
        url = self.url + path
        headers = {"Accept": MEDIA_TYPE}
        data = None
        if document is not None:
            headers["Content-Type"] = MEDIA_TYPE
            data = json.dumps(document).encode()
        options: dict[str, Any] = {}
        if self.server_name:
            options["server_hostname"] = self.server_name
        try:
            async with self._session.request(method, url, data=data, headers=headers,
                                             **options) as response:
                body = await response.read()
                location = response.headers.get("Location")
                status = response.status
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise NetworkError(f"{method} {url}: {exc or type(exc).__name__}") from None
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode("utf-8", "replace")
        return DataAnswer(method, url, status, parsed, location, document)


def _list_name(kind: str) -> str:
    try:
        return {"aliases": "alias", "acls": "acl"}[kind]
    except KeyError:
        raise ValueError(f"kind must be aliases or acls, got {kind!r}") from None
