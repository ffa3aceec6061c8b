"""RFC 9133 signal-channel filter control: ``acl-list`` in mitigation requests, and the
catalog of a client's ACLs (created over the data channel, RFC 8783) it refers to.

A mitigation request may carry ``ietf-dots-signal-control:acl-list`` (CBOR key 53) in its
scope: entries of ``acl-name`` (key 23) and ``activation-type`` (key 52). The server checks
every name against the client's ACLs (4.04 for an unknown one, RFC 9133 §3.2), records the
new activation type in the catalog (it outlives the mitigation, §3.2) and hands the ACLs
that are active for the mitigation to its mitigator.

The codec keeps key 53 whole, as received (``gateway.dots.keys``), so a gateway relays it
unchanged; this module reads and checks it for a server that acts on it, and writes it.

``AclCatalog`` is the interface to the data channel's store (``lookup``,
``update_activation``); one that can also list a client's ACL names (``ListingAclCatalog``)
lets a mitigation activate the client's 'activate-when-mitigating' ACLs it does not name
(RFC 8783 §7.1). ``MemoryAclCatalog`` holds ACLs in memory (tests, and the store a
data channel can fill); ``NullAclCatalog`` is what a server without a data channel has: no
ACL exists, so an acl-list naming one is refused with 4.04 and a diagnostic that says why.

Pure: no I/O here; the catalog implementation the daemon passes in may do its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from gateway.dots.codec import encode_message
from gateway.dots.errors import (
    DotsProtocolError,
    InvalidValue,
    MalformedPayload,
    MissingAttribute,
    NotFound,
    ServiceUnavailable,
    UnknownRequiredKeys,
)
from gateway.dots.keys import ACTIVATION_TYPE_LABELS, K, is_comprehension_optional
from gateway.dots.message import DotsResponse
from gateway.dots.model import MitigationScope, Scope

ACTIVATE_WHEN_MITIGATING = "activate-when-mitigating"
IMMEDIATE = "immediate"
DEACTIVATE = "deactivate"
#: RFC 9133 §5 Table 1 (the RFC 8783 labels): label -> CBOR value.
ACTIVATION_TYPE_VALUES = {label: value for value, label in ACTIVATION_TYPE_LABELS.items()}
#: RFC 9133 §3.2: "activate-when-mitigating" when a request leaves activation-type out.
DEFAULT_ACTIVATION_TYPE = ACTIVATE_WHEN_MITIGATING


@dataclass(frozen=True, slots=True)
class AclActivation:
    """One entry of a mitigation's acl-list: an ACL name and how it is to be activated."""

    acl_name: str
    activation_type: str = DEFAULT_ACTIVATION_TYPE

    def __post_init__(self) -> None:
        if not self.acl_name:
            raise InvalidValue("acl-list: acl-name is empty")
        if self.activation_type not in ACTIVATION_TYPE_VALUES:
            raise InvalidValue(
                f"acl-list: activation-type {self.activation_type!r} is not one of "
                + ", ".join(ACTIVATION_TYPE_VALUES))

    @property
    def active(self) -> bool:
        """Whether the ACL filters traffic while the mitigation is active (RFC 8783 §4.3:
        'immediate' and 'activate-when-mitigating' do, 'deactivate' does not)."""
        return self.activation_type != DEACTIVATE

    @classmethod
    def parse(cls, text: str) -> AclActivation:
        """``NAME`` or ``NAME:ACTIVATION-TYPE`` (the ``dots-client --acl`` syntax)."""
        name, colon, kind = text.rpartition(":")
        if not colon or kind not in ACTIVATION_TYPE_VALUES:
            return cls(text)
        return cls(name, kind)


@dataclass(frozen=True, slots=True)
class ActiveAcl:
    """An ACL the mitigator applies for a mitigation: its RFC 8783 JSON (``acl``) and the
    activation type the mitigation's acl-list gives it."""

    acl_name: str
    activation_type: str
    acl: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ACL's JSON with ``activation-type`` set to the one in force."""
        out = dict(copy.deepcopy(dict(self.acl)))
        out.setdefault("name", self.acl_name)
        out["activation-type"] = self.activation_type
        return out


class AclActivationFailed(ServiceUnavailable):
    """RFC 9133 §3.2: the server could not apply a filter update: 5.03 whose diagnostic
    payload is the failed update, a mitigation-scope with the mid and that acl-list entry
    (RFC 9133 Figure 1)."""

    def __init__(self, mid: int, acl: AclActivation) -> None:
        super().__init__(f"acl-list: the server failed to apply activation-type "
                         f"{acl.activation_type} to the ACL {acl.acl_name!r}; nothing was "
                         "changed")
        self.mid = mid
        self.acl = acl

    def to_response(self) -> DotsResponse:
        body = MitigationScope((with_acl_list(Scope(mid=self.mid), (self.acl,)),))
        return DotsResponse.with_body(self.code, encode_message(body))


# --- the acl-list in a scope ------------------------------------------------------------------


def acl_list_of(scope: Scope) -> tuple[AclActivation, ...] | None:
    """The scope's acl-list, checked; None when the scope has none (an empty list is ``()``).

    Raises the 4.00 family for a malformed list: an entry that is not a map, a missing or
    empty acl-name, an activation-type outside Table 1, a name listed twice (the YANG list
    key), an unknown comprehension-required key inside an entry.
    """
    raw = _raw_acl_list(scope)
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise MalformedPayload("acl-list: expected an array")
    entries: list[AclActivation] = []
    seen: set[str] = set()
    unknown: list[int] = []
    for i, entry in enumerate(raw):
        where = f"acl-list[{i}]"
        if not isinstance(entry, dict):
            raise MalformedPayload(f"{where}: expected a map")
        for key in entry:
            if key in (K.ACL_NAME, K.ACTIVATION_TYPE):
                continue
            if type(key) is not int:
                raise MalformedPayload(f"{where}: map keys must be integers")
            if not is_comprehension_optional(key):
                unknown.append(key)
        name = entry.get(K.ACL_NAME)
        if name is None:
            raise MissingAttribute(f"{where}: acl-name is mandatory (RFC 9133 §3.2)")
        if not isinstance(name, str) or not name:
            raise InvalidValue(f"{where}: acl-name must be a non-empty text string")
        value = entry.get(K.ACTIVATION_TYPE)
        if value is None:
            kind = DEFAULT_ACTIVATION_TYPE
        elif type(value) is int and value in ACTIVATION_TYPE_LABELS:
            kind = ACTIVATION_TYPE_LABELS[value]
        else:
            raise InvalidValue(f"{where}: activation-type {value!r} is not 1 "
                               "(activate-when-mitigating), 2 (immediate) or 3 (deactivate)")
        if name in seen:
            raise InvalidValue(f"acl-list names the ACL {name!r} twice")
        seen.add(name)
        entries.append(AclActivation(name, kind))
    if unknown:
        raise UnknownRequiredKeys(unknown)
    return tuple(entries)


def _raw_acl_list(scope: Scope) -> Any:
    for key, value in scope.extensions:
        if key == K.CONTROL_ACL_LIST:
            return value
    return None


def encode_acl_list(acls: Iterable[AclActivation]) -> list[dict[int, Any]]:
    """The CBOR value of key 53, every activation-type spelled out."""
    return [{int(K.ACL_NAME): a.acl_name,
             int(K.ACTIVATION_TYPE): ACTIVATION_TYPE_VALUES[a.activation_type]} for a in acls]


def with_acl_list(scope: Scope, acls: Iterable[AclActivation] | None) -> Scope:
    """``scope`` with its acl-list replaced (None: removed); other extensions kept."""
    kept = tuple((k, v) for k, v in scope.extensions if k != K.CONTROL_ACL_LIST)
    if acls is None:
        return replace(scope, extensions=kept)
    return replace(scope, extensions=(*kept, (int(K.CONTROL_ACL_LIST), encode_acl_list(acls))))


def merge_acl_lists(current: tuple[AclActivation, ...] | None,
                    update: tuple[AclActivation, ...]) -> tuple[AclActivation, ...]:
    """A mitigation's acl-list after a PUT that carries ``update``: the entries it names take
    their new activation type, the others stay as they were (RFC 9133 §3.2: the request
    controls the filters it names; an ACL is removed from a mitigation by deactivating it)."""
    named = {a.acl_name: a for a in update}
    kept = [named.pop(a.acl_name, a) for a in current or ()]
    return (*kept, *named.values())


def carry_acl_list(new: Scope, previous: Scope | None) -> Scope:
    """``new`` (a request accepted for a mitigation that had ``previous``) with the acl-list
    the mitigation has now: what a client or gateway keeps to send the request again on
    another server (a refresh without acl-list left the server's as it was)."""
    try:
        before = acl_list_of(previous) if previous is not None else None
        if before is None:
            return new
        return with_acl_list(new, merge_acl_lists(before, acl_list_of(new) or ()))
    except DotsProtocolError:  # a list the server accepted but we cannot read: as sent
        return new


# --- the catalog of ACLs ----------------------------------------------------------------------


class AclCatalog(Protocol):
    """A client's ACLs as the data channel holds them (RFC 8783 §7)."""

    def lookup(self, cuid: str, acl_name: str) -> Mapping[str, Any] | None:
        """The ACL as RFC 8783 JSON (``name``, ``type``, ``activation-type``, ``aces``...),
        or None when the client has no ACL of that name."""
        ...

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        """Record the activation type a signal-channel request set (RFC 9133 §3.2: it stays
        after the mitigation ends). May raise: the server then answers 5.03."""
        ...


@runtime_checkable
class ListingAclCatalog(AclCatalog, Protocol):
    """A catalog that can also list a client's ACL names. With it, a mitigation also
    activates the client's ACLs of type 'activate-when-mitigating' that its acl-list does
    not name (RFC 8783 §7.1: while a mitigation is in progress the server activates the
    'activate-when-mitigating' filters of the client that triggered it)."""

    def acl_names(self, cuid: str) -> Iterable[str]:
        ...


class NullAclCatalog:
    """No data channel: no client has any ACL."""

    #: Says so in the 4.04 diagnostic.
    has_data_channel = False

    def lookup(self, cuid: str, acl_name: str) -> Mapping[str, Any] | None:
        return None

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        raise LookupError(f"no ACL {acl_name!r}: this server has no data channel")


class MemoryAclCatalog:
    """ACLs in memory, by cuid then name. ``add`` takes RFC 8783 JSON (one ``acl`` entry)."""

    has_data_channel = True

    def __init__(self) -> None:
        self._acls: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, cuid: str, acl: Mapping[str, Any]) -> None:
        name = acl.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("an ACL needs a non-empty 'name'")
        entry = copy.deepcopy(dict(acl))
        entry.setdefault("activation-type", DEFAULT_ACTIVATION_TYPE)
        self._acls.setdefault(cuid, {})[name] = entry

    def remove(self, cuid: str, acl_name: str) -> None:
        self._acls.get(cuid, {}).pop(acl_name, None)

    def acl_names(self, cuid: str) -> Iterable[str]:
        return tuple(self._acls.get(cuid, {}))

    def lookup(self, cuid: str, acl_name: str) -> Mapping[str, Any] | None:
        acl = self._acls.get(cuid, {}).get(acl_name)
        return None if acl is None else copy.deepcopy(acl)

    def update_activation(self, cuid: str, acl_name: str, activation_type: str) -> None:
        acl = self._acls.get(cuid, {}).get(acl_name)
        if acl is None:
            raise LookupError(f"client {cuid} has no ACL {acl_name!r}")
        acl["activation-type"] = activation_type


def check_known(catalog: AclCatalog, cuid: str, acls: Iterable[AclActivation]) -> None:
    """4.04 naming the first ACL the client does not have (RFC 9133 §3.2)."""
    for acl in acls:
        if catalog.lookup(cuid, acl.acl_name) is None:
            if not getattr(catalog, "has_data_channel", True):
                raise NotFound(
                    f"acl-list: no ACL named {acl.acl_name!r}: this server has no data channel "
                    "(RFC 8783), where ACLs are created before a mitigation request can "
                    "activate them (RFC 9133 §3.2)")
            raise NotFound(f"acl-list: this client has no ACL named {acl.acl_name!r}; create "
                           "it over the data channel first (RFC 9133 §3.2)")


def active_acls(catalog: AclCatalog, cuid: str,
                acls: Iterable[AclActivation] | None) -> tuple[ActiveAcl, ...]:
    """The ACLs the mitigator applies for a mitigation whose acl-list is ``acls``: the
    active entries whose ACL the catalog still has (one deleted over the data channel since
    is left out); then, from a catalog that can list them, the client's other ACLs whose
    activation type is 'activate-when-mitigating' (RFC 8783 §7.1)."""
    out: list[ActiveAcl] = []
    named: set[str] = set()
    for entry in acls or ():
        named.add(entry.acl_name)
        if not entry.active:
            continue
        acl = catalog.lookup(cuid, entry.acl_name)
        if acl is not None:
            out.append(ActiveAcl(entry.acl_name, entry.activation_type, acl))
    if isinstance(catalog, ListingAclCatalog):
        for name in catalog.acl_names(cuid):
            if name in named:
                continue
            acl = catalog.lookup(cuid, name)
            kind = (acl or {}).get("activation-type", DEFAULT_ACTIVATION_TYPE)
            if acl is not None and kind == ACTIVATE_WHEN_MITIGATING:
                out.append(ActiveAcl(name, kind, acl))
    return tuple(out)
