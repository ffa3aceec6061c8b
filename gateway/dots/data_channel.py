"""The DOTS data channel's resources (RFC 8783 §6-7 over RESTCONF, RFC 8040), sans-I/O.

``DataChannelCore.handle(request, now)`` takes one HTTP request as a ``DataRequest`` (method,
the raw path and query, the body, who sent it) and returns a ``DataResponse`` (status, JSON
document, headers): client registration (``dots-client=CUID``), aliases, ACLs and the
capabilities. Every refusal is a ``RestconfError`` rendered as an ``ietf-restconf:errors``
body naming the node: 400 for bad JSON, unknown nodes and wrong values, 403 for a client
outside its domain, 404 for what does not exist, 409 for what POST would create twice, 413
for more than the limits allow.

State lives in a ``DataStore`` (the server role's SQLite store implements it): every write
method returns only once the change is durable, so the success status that follows is never
for something a restart would lose. ``now`` is wall-clock epoch seconds: pending lifetimes
(RFC 8783 §6.1, §7.3) keep running across restarts. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, unquote

from gateway.dots.authz import Authorizer, ClientRule
from gateway.dots.data_acls import CAPABILITIES, MAX_ACES, destination_networks, read_acl
from gateway.dots.data_nodes import (
    MEDIA_TYPE,
    MODULE,
    ROOT_PATH,
    Node,
    RestconfError,
    bad,
    check_string,
    decode_json,
    read_alias,
)
from gateway.dots.errors import DotsProtocolError, NotAuthorized
from gateway.dots.message import Requester
from gateway.dots.model import Scope

DATA_ROOT = "/restconf/data"
#: The two lists a client owns: RESTCONF container -> list name.
KINDS = {"aliases": "alias", "acls": "acl"}
#: Minutes an alias or ACL lives without a refresh (RFC 8783 §6.1, §7.3: one week).
DEFAULT_LIFETIME = 10080


@dataclass(frozen=True, slots=True)
class Entry:
    """An alias or an ACL as its normalized JSON, and when it expires (epoch, None: never)."""

    body: Mapping[str, Any]
    expires_at: float | None


@dataclass(slots=True)
class DataClient:
    cuid: str
    cdid: str | None = None
    aliases: dict[str, Entry] = field(default_factory=dict)
    acls: dict[str, Entry] = field(default_factory=dict)

    def entries(self, kind: str) -> dict[str, Entry]:
        return self.aliases if kind == "aliases" else self.acls


class DataStore(Protocol):
    """Durable state of the data channel; each write returns once it is on disk (or raises
    with nothing written)."""

    def clients(self) -> Mapping[str, DataClient]: ...

    def register(self, cuid: str, cdid: str | None) -> None: ...

    def unregister(self, cuid: str) -> None: ...

    def put_entries(self, cuid: str, kind: str, entries: Iterable[Entry]) -> None: ...

    def delete_entries(self, cuid: str, kind: str, names: Iterable[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class DataLimits:
    max_clients: int = 10_000
    max_aliases: int = 256  # per client
    max_acls: int = 256  # per client
    max_aces: int = 64  # per ACL
    lifetime: int = DEFAULT_LIFETIME  # minutes; 0: entries never expire


@dataclass(frozen=True, slots=True)
class DataRequest:
    method: str
    raw_path: str  # percent-encoded, without the query
    query: str
    body: bytes
    requester: Requester


@dataclass(frozen=True, slots=True)
class DataResponse:
    status: int
    document: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def media_type(self) -> str:
        return MEDIA_TYPE


@dataclass(frozen=True, slots=True)
class _Target:
    """A parsed RESTCONF data path."""

    cuid: str | None = None
    capabilities: bool = False
    kind: str | None = None  # "aliases" or "acls"
    name: str | None = None

    @property
    def path(self) -> str:
        out = ROOT_PATH
        if self.capabilities:
            return out + "/capabilities"
        if self.cuid is not None:
            out += f"/dots-client={self.cuid}"
        if self.kind is not None:
            out += f"/{self.kind}"
        if self.name is not None:
            out += f"/{KINDS[self.kind or '']}={self.name}"
        return out


def parse_path(raw_path: str) -> _Target:
    """``/restconf/data/ietf-dots-data-channel:dots-data/...`` -> what it names (404 else).
    Segments are split before percent-decoding (RFC 8040 §3.5.3)."""
    if not raw_path.startswith(DATA_ROOT + "/"):
        raise RestconfError(404, "invalid-value", f"no resource at {raw_path}; the data "
                            f"channel lives under {DATA_ROOT}{ROOT_PATH}")
    segments = [unquote(s) for s in raw_path[len(DATA_ROOT) + 1:].rstrip("/").split("/")]
    if segments[0] != f"{MODULE}:dots-data":
        raise RestconfError(404, "invalid-value", f"unknown top-level node /{segments[0]}; "
                            f"this server has {ROOT_PATH}")
    rest = segments[1:]
    if not rest:
        return _Target()
    if rest == ["capabilities"]:
        return _Target(capabilities=True)
    head, _, cuid = rest[0].partition("=")
    if head != "dots-client" or not cuid:
        raise RestconfError(404, "invalid-value", f"no resource {rest[0]!r} under {ROOT_PATH} "
                            "(dots-client=CUID or capabilities)")
    if len(rest) == 1:
        return _Target(cuid=cuid)
    kind = rest[1]
    if kind not in KINDS or len(rest) > 3:
        raise RestconfError(404, "invalid-value", f"no resource {'/'.join(rest[1:])!r} under "
                            "dots-client (aliases, aliases/alias=NAME, acls, acls/acl=NAME)")
    if len(rest) == 2:
        return _Target(cuid=cuid, kind=kind)
    head, _, name = rest[2].partition("=")
    if head != KINDS[kind] or not name:
        raise RestconfError(404, "invalid-value", f"no resource {rest[2]!r} under {kind} "
                            f"({KINDS[kind]}=NAME)")
    return _Target(cuid=cuid, kind=kind, name=name)


class DataChannelCore:
    """Answers data-channel requests against a ``DataStore``; see the module docstring.

    Counters for metrics: ``answered`` (HTTP status -> count)."""

    def __init__(self, store: DataStore, authorizer: Authorizer,
                 limits: DataLimits = DataLimits()) -> None:
        self.store = store
        self.authorizer = authorizer
        self.limits = limits
        self.answered: dict[int, int] = {}

    def handle(self, request: DataRequest, now: float) -> DataResponse:
        try:
            response = self._handle(request, now)
        except RestconfError as exc:
            headers: tuple[tuple[str, str], ...] = ()
            if exc.status == 405:
                headers = (("Allow", "GET, POST, PUT, DELETE"),)
            response = DataResponse(exc.status, exc.body(), headers)
        self.answered[response.status] = self.answered.get(response.status, 0) + 1
        return response

    def vet(self, request: DataRequest, now: float, *, cdid: str | None = None) -> bytes:
        """Gateway mode (RFC 8783 §3, RFC 8811): check a request as this server would
        (path, query, the client's cuid and domain, every node of the body) without acting
        on it, and return the body to relay upstream. ``cdid`` (a server-domain gateway's)
        goes into a registration unless a trusted gateway below us supplied one. Raises
        ``RestconfError``; nothing is stored."""
        target = parse_path(request.raw_path)
        method = request.method.upper()
        _query(request.query, method)
        try:
            rule = self.authorizer.rule_for(request.requester)
        except NotAuthorized as exc:
            raise RestconfError(403, "access-denied", str(exc)) from None
        if target.cuid is not None:
            self._check_cuid(request.requester, rule, target)
        if method not in ("POST", "PUT"):
            if method not in ("GET", "DELETE"):
                raise RestconfError(405, "operation-not-supported",
                                    f"method {method} is not supported (GET, POST, PUT, DELETE)")
            return request.body
        document = decode_json(request.body)
        if (target.cuid is None and method == "POST") or (target.kind is None
                                                          and method == "PUT"):
            if target.cuid is None and method == "PUT":
                raise RestconfError(405, "operation-not-supported", "PUT dots-client=CUID",
                                    target.path)
            cuid, own_cdid = self._read_registration(request.requester, document,
                                                     target.path if target.cuid else ROOT_PATH)
            self._check_cuid(request.requester, rule, _Target(cuid=cuid))
            entry: dict[str, Any] = {"cuid": cuid}
            if own_cdid or cdid:
                entry["cdid"] = own_cdid or cdid  # RFC 8783 §6.1: one cdid, the first one
            return json.dumps({f"{MODULE}:dots-client": [entry]}).encode()
        if target.kind is None:  # aliases or ACLs POSTed to dots-client=CUID
            node = Node(document, target.path)
            kinds = [k for k in KINDS if node.has(f"{MODULE}:{k}")]
            if len(kinds) != 1:
                node.finish()
                raise bad(target.path, f"the body must hold exactly one of {MODULE}:aliases "
                          f"or {MODULE}:acls", "missing-element" if not kinds else
                          "invalid-value")
            container = Node(node.raw(f"{MODULE}:{kinds[0]}"), f"{target.path}/{kinds[0]}")
            node.finish()
            self._read_entries(rule, container, kinds[0], now)
            return request.body
        if target.name is None:
            raise RestconfError(405, "operation-not-supported", "POST aliases and ACLs to "
                                "dots-client=CUID; PUT one entry", target.path)
        kind, list_name = target.kind, KINDS[target.kind]
        node = Node(document, target.path)
        inner = node.child(f"{MODULE}:{kind}") if node.has(f"{MODULE}:{kind}") else None
        items = (inner.array(list_name, max_items=1, required=True) if inner is not None
                 else node.array(f"{MODULE}:{list_name}", max_items=1, required=True))
        if inner is not None:
            inner.finish()
        node.finish()
        entry_body = self._read_entries(rule, Node({list_name: items}, target.path), kind,
                                        now)[0].body
        if entry_body["name"] != target.name:
            raise bad(f"{target.path}/name", f"must be the name of the URI ({target.name})")
        return request.body

    # --- dispatch ------------------------------------------------------------------------------

    def _handle(self, request: DataRequest, now: float) -> DataResponse:
        target = parse_path(request.raw_path)
        method = request.method.upper()
        query = _query(request.query, method)
        try:
            rule = self.authorizer.rule_for(request.requester)
        except NotAuthorized as exc:
            raise RestconfError(403, "access-denied", str(exc)) from None
        if target.capabilities:
            if method != "GET":
                raise RestconfError(405, "operation-not-supported",
                                    "capabilities are read-only", target.path)
            return DataResponse(200, {f"{MODULE}:capabilities": CAPABILITIES})
        if target.cuid is not None:
            self._check_cuid(request.requester, rule, target)
        # The requester's own entries first (a sweep of everyone runs on the adapter's
        # timer): a request costs what its client holds, not what all clients hold.
        self.expire(now, [target.cuid or request.requester.credential_id])
        if method == "GET":
            return self._get(request.requester, rule, target, query, now)
        if method == "DELETE":
            return self._delete(target)
        if method in ("POST", "PUT"):
            document = decode_json(request.body)
            if method == "POST":
                return self._post(request.requester, rule, target, document, now)
            return self._put(request.requester, rule, target, document, now)
        raise RestconfError(405, "operation-not-supported",
                            f"method {method} is not supported (GET, POST, PUT, DELETE)")

    def _check_cuid(self, requester: Requester, rule: ClientRule, target: _Target) -> None:
        if target.cuid != requester.credential_id and not rule.allow_any_cuid:
            # RFC 8783 §6.1: the cuid is the one the signal channel derives (RFC 9132 §4.4.1).
            raise RestconfError(403, "access-denied", f"cuid {target.cuid} is not the one "
                                f"derived from your credential ({requester.credential_id})",
                                target.path)

    def _client(self, target: _Target) -> DataClient:
        client = self.store.clients().get(target.cuid or "")
        if client is None:
            raise RestconfError(404, "invalid-value", f"DOTS client {target.cuid} is not "
                                "registered (POST it to dots-data first, RFC 8783 §6.1)",
                                ROOT_PATH + f"/dots-client={target.cuid}")
        return client

    # --- GET ---------------------------------------------------------------------------------

    def _get(self, requester: Requester, rule: ClientRule, target: _Target, content: str,
             now: float) -> DataResponse:
        if target.cuid is None:
            visible = [c for c in self.store.clients().values()
                       if rule.allow_any_cuid or c.cuid == requester.credential_id]
            tree: dict[str, Any] = {}
            if visible:
                tree["dots-client"] = [self._client_json(c, content, now) for c in visible]
            if content != "config":
                tree["capabilities"] = CAPABILITIES
            return DataResponse(200, {f"{MODULE}:dots-data": tree})
        client = self._client(target)
        if target.kind is None:
            return DataResponse(200, {f"{MODULE}:dots-client":
                                      [self._client_json(client, content, now)]})
        entries = client.entries(target.kind)
        list_name = KINDS[target.kind]
        if target.name is None:
            return DataResponse(200, {f"{MODULE}:{target.kind}": {list_name: [
                _entry_json(e, content, now) for e in entries.values()]}})
        entry = entries.get(target.name)
        if entry is None:
            raise RestconfError(404, "invalid-value", f"no {list_name} named {target.name}",
                                target.path)
        # One entry in its container, as RFC 8783's examples answer (§6.3 Figure 13, §7.3):
        # go-dots does the same; our client reads this and RFC 8040's bare list form.
        return DataResponse(200, {f"{MODULE}:{target.kind}": {list_name: [
            _entry_json(entry, content, now)]}})

    def _client_json(self, client: DataClient, content: str, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"cuid": client.cuid}
        if client.cdid is not None and content != "nonconfig":
            out["cdid"] = client.cdid
        for kind, list_name in KINDS.items():
            entries = client.entries(kind)
            if entries:
                out[kind] = {list_name: [_entry_json(e, content, now) for e in entries.values()]}
        return out

    # --- DELETE ------------------------------------------------------------------------------

    def _delete(self, target: _Target) -> DataResponse:
        if target.cuid is None:
            raise RestconfError(405, "operation-not-supported", "the dots-data root cannot be "
                                "deleted; DELETE dots-client=CUID to unregister", ROOT_PATH)
        client = self._client(target)
        if target.kind is None:
            self.store.unregister(client.cuid)  # RFC 8783 §6.1: its aliases and ACLs too
            return DataResponse(204)
        entries = client.entries(target.kind)
        if target.name is None:
            names = list(entries)
        elif target.name in entries:
            names = [target.name]
        else:
            raise RestconfError(404, "invalid-value", f"no {KINDS[target.kind]} named "
                                f"{target.name}", target.path)
        if names:
            self.store.delete_entries(client.cuid, target.kind, names)
        return DataResponse(204)

    # --- POST and PUT ------------------------------------------------------------------------

    def _post(self, requester: Requester, rule: ClientRule, target: _Target, document: Any,
              now: float) -> DataResponse:
        if target.cuid is None:  # register (RFC 8783 §6.1)
            cuid, cdid = self._read_registration(requester, document, ROOT_PATH)
            self._check_cuid(requester, rule, _Target(cuid=cuid))
            if cuid in self.store.clients():
                raise RestconfError(409, "data-exists", f"DOTS client {cuid} is registered "
                                    "already (PUT dots-client=CUID to update it)",
                                    f"{ROOT_PATH}/dots-client={cuid}")
            self._check_room_for_client()
            self.store.register(cuid, cdid)
            return DataResponse(201, None, (("Location", _location(_Target(cuid=cuid))),))
        if target.kind is not None:
            raise RestconfError(405, "operation-not-supported", "POST aliases and ACLs to "
                                "dots-client=CUID (RFC 8783 §6.2, §7.3)", target.path)
        client = self._client(target)
        node = Node(document, target.path)
        kinds = [k for k in KINDS if node.has(f"{MODULE}:{k}")]
        if len(kinds) != 1:
            node.finish()  # names an unknown member first, if there is one
            raise bad(target.path, f"the body must hold exactly one of {MODULE}:aliases or "
                      f"{MODULE}:acls", "missing-element" if not kinds else "invalid-value")
        kind = kinds[0]
        container = Node(node.raw(f"{MODULE}:{kind}"), f"{target.path}/{kind}")
        node.finish()
        entries = self._read_entries(rule, container, kind, now)
        taken = [e.body["name"] for e in entries if e.body["name"] in client.entries(kind)]
        if taken:  # RFC 8040 §4.4.1: POST never replaces
            raise RestconfError(409, "data-exists", f"{KINDS[kind]} {taken[0]} exists already "
                                "(PUT it to replace it)",
                                f"{target.path}/{kind}/{KINDS[kind]}={taken[0]}")
        self._check_room(client, kind, len(entries))
        self.store.put_entries(client.cuid, kind, entries)
        first = _Target(cuid=client.cuid, kind=kind, name=str(entries[0].body["name"]))
        return DataResponse(201, None, (("Location", _location(first)),))

    def _put(self, requester: Requester, rule: ClientRule, target: _Target, document: Any,
             now: float) -> DataResponse:
        if target.cuid is None or (target.kind is not None and target.name is None):
            raise RestconfError(405, "operation-not-supported", "PUT dots-client=CUID, "
                                "aliases/alias=NAME or acls/acl=NAME", target.path)
        if target.kind is None:
            cuid, cdid = self._read_registration(requester, document, target.path)
            if cuid != target.cuid:
                raise bad(f"{target.path}/cuid", f"must be the cuid of the URI ({target.cuid})")
            existed = cuid in self.store.clients()
            if not existed:
                self._check_room_for_client()
            self.store.register(cuid, cdid)
            return DataResponse(204 if existed else 201)
        client = self._client(target)
        kind, list_name = target.kind, KINDS[target.kind]
        node = Node(document, target.path)
        if node.has(f"{MODULE}:{kind}"):  # the RFC 8783 examples' container form
            inner = node.child(f"{MODULE}:{kind}")
            assert inner is not None
            items = inner.array(list_name, max_items=1, required=True)
            inner.finish()
        else:  # RFC 8040 §4.5: the target resource itself
            items = node.array(f"{MODULE}:{list_name}", max_items=1, required=True)
        node.finish()
        container = Node({list_name: items}, f"{target.path.rpartition('/')[0]}")
        entry = self._read_entries(rule, container, kind, now)[0]
        if entry.body["name"] != target.name:
            raise bad(f"{target.path}/name", f"must be the name of the URI ({target.name})")
        existed = target.name in client.entries(kind)
        if not existed:
            self._check_room(client, kind, 1)
        self.store.put_entries(client.cuid, kind, [entry])
        return DataResponse(204 if existed else 201)

    def _read_registration(self, requester: Requester, document: Any,
                           path: str) -> tuple[str, str | None]:
        node = Node(document, path)
        items = node.array(f"{MODULE}:dots-client", max_items=1, required=True)
        node.finish()
        entry = Node(items[0], f"{ROOT_PATH}/dots-client")
        cuid = check_string(entry.required("cuid"), entry.at("cuid"), 64)
        cdid = entry.string("cdid", max_length=255)
        entry.forbid("aliases", "acls")  # created on their own resources (RFC 8783 §6.2, §7.3)
        entry.finish()
        # RFC 8783 §6.1 (as RFC 9132 §4.4.1.2): only a server-domain gateway supplies a cdid.
        return cuid, cdid if requester.trusted_gateway else None

    def _read_entries(self, rule: ClientRule, container: Node, kind: str,
                      now: float) -> list[Entry]:
        list_name = KINDS[kind]
        cap = self.limits.max_aliases if kind == "aliases" else self.limits.max_acls
        items = container.array(list_name, max_items=cap, required=True)
        container.finish()
        list_path = container.at(list_name)
        expires_at = now + self.limits.lifetime * 60 if self.limits.lifetime else None
        out: list[Entry] = []
        for item in items:
            if kind == "aliases":
                body = read_alias(item, list_path)
                self._check_alias_domain(rule, body, f"{list_path}={body['name']}")
            else:
                body = read_acl(item, list_path, max_aces=min(self.limits.max_aces, MAX_ACES))
                self._check_acl_domain(rule, body, f"{list_path}={body['name']}")
            if any(e.body["name"] == body["name"] for e in out):
                raise bad(f"{list_path}={body['name']}", "repeats the key name")
            out.append(Entry(body, expires_at))
        return out

    @staticmethod
    def _check_alias_domain(rule: ClientRule, alias: Mapping[str, Any], path: str) -> None:
        try:
            scope = Scope(target_prefix=tuple(ipaddress.ip_network(p)
                                              for p in alias.get("target-prefix", ())),
                          target_fqdn=tuple(alias.get("target-fqdn", ())),
                          target_uri=tuple(alias.get("target-uri", ())))
            Authorizer.check_targets(rule, scope)
        except NotAuthorized as exc:  # RFC 8783 §6.1: targets within the client's domain
            raise RestconfError(403, "access-denied", str(exc), path) from None
        except DotsProtocolError as exc:
            raise bad(path, exc.diagnostic) from None

    @staticmethod
    def _check_acl_domain(rule: ClientRule, acl: dict[str, Any], path: str) -> None:
        for network in destination_networks(acl):
            if not any(network.version == own.version and network.subnet_of(own)  # type: ignore[arg-type]
                       for own in rule.prefixes):
                raise RestconfError(403, "access-denied", f"destination {network} is outside "
                                    f"the prefixes configured for client {rule.name}", path)

    def _check_room(self, client: DataClient, kind: str, adding: int) -> None:
        cap = self.limits.max_aliases if kind == "aliases" else self.limits.max_acls
        if len(client.entries(kind)) + adding > cap:
            raise RestconfError(409, "resource-denied", f"client {client.cuid} would have more "
                                f"than {cap} {kind} (the server's limit); delete some first",
                                f"{ROOT_PATH}/dots-client={client.cuid}/{kind}")

    def _check_room_for_client(self) -> None:
        if len(self.store.clients()) >= self.limits.max_clients:
            raise RestconfError(409, "resource-denied", f"the server holds its limit of "
                                f"{self.limits.max_clients} registered DOTS clients", ROOT_PATH)

    def expire(self, now: float, cuids: Iterable[str] | None = None) -> None:
        """Drop aliases and ACLs whose pending lifetime ran out (RFC 8783 §6.1, §7.3), of
        ``cuids`` or of every client (None)."""
        clients = self.store.clients()
        chosen = (list(clients.values()) if cuids is None
                  else [clients[c] for c in cuids if c in clients])
        for client in chosen:
            for kind in KINDS:
                gone = [name for name, e in client.entries(kind).items()
                        if e.expires_at is not None and e.expires_at <= now]
                if gone:
                    self.store.delete_entries(client.cuid, kind, gone)


def _query(text: str, method: str) -> str:
    """The ``content`` query parameter (RFC 8040 §4.8.1); any other parameter is 400."""
    params = parse_qs(text, keep_blank_values=True)
    unknown = sorted(set(params) - {"content"})
    if unknown:
        raise RestconfError(400, "invalid-value", f"query parameter {unknown[0]} is not "
                            "supported (only content)")
    values = params.get("content", ["all"])
    if len(values) > 1 or values[0] not in ("config", "nonconfig", "all"):
        raise RestconfError(400, "invalid-value", "content must be config, nonconfig or all")
    if "content" in params and method != "GET":
        raise RestconfError(400, "invalid-value", "content is for GET only (RFC 8040 §4.8.1)")
    return values[0]


def _entry_json(entry: Entry, content: str, now: float) -> dict[str, Any]:
    if content == "nonconfig":
        out: dict[str, Any] = {"name": entry.body["name"]}
    else:
        out = dict(entry.body)
    if content != "config":
        out["pending-lifetime"] = pending_lifetime(entry, now)
    return out


def pending_lifetime(entry: Entry, now: float) -> int:
    """Minutes left (RFC 8783 §6.1), -1 for an entry that never expires."""
    if entry.expires_at is None:
        return -1
    return max(0, math.ceil((entry.expires_at - now) / 60))


def _location(target: _Target) -> str:
    segments = target.path.strip("/").split("/")
    encoded = "/".join(quote(s, safe=":=") for s in segments)
    return f"{DATA_ROOT}/{encoded}"
