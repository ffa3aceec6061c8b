"""Log events: one line per event, with a stable name and its facts as fields.

``log_event(log, logging.INFO, "session.established", "signal session opened", peer=...,
cuid=...)`` hands the fields to ``logging`` as ``extra``; the formatters of
``gateway.ops.logsetup`` render them as ``key=value`` pairs or JSON members, so an operator
filters on ``event=handshake.failed`` or ``cuid=...`` instead of parsing message text.

``EVENTS`` is the catalogue: every event name the code emits and the fields it carries (a
unit test checks that each ``log_event`` call names a catalogued event, and that the README
table lists them all). Fields use the YANG leaf names where there is one (``cuid``, ``mid``,
``cdid``), ``peer`` and ``local`` for addresses, ``code`` for a CoAP response code in dotted
form.

This module sits below every layer (the pure core logs through it too): it imports only
``logging``.
"""

from __future__ import annotations

import logging

#: Attributes of a ``LogRecord``: a field with one of these names would clash (``logging``
#: raises on it), so such a field is emitted with a trailing ``_`` instead.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

#: Event name -> the fields it carries (besides ts, level, logger, event, msg).
EVENTS: dict[str, tuple[str, ...]] = {
    # transports and sessions (server side)
    "handshake.failed": ("transport", "peer", "local", "reason", "suppressed"),
    "handshake.refused": ("transport", "peer", "reason", "suppressed"),
    "session.established": ("transport", "peer", "local", "client", "cuid", "cipher",
                            "resumed"),
    "session.closed": ("transport", "peer", "cuid", "reason"),
    "session.withdrawn": ("transport", "peer", "client", "cuid", "reason", "detail"),
    "signal.lost": ("session", "cuids"),
    # requests
    "request.answered": ("peer", "cuid", "mid", "method", "path", "code", "diagnostic"),
    "request.failed": ("peer", "method", "path"),
    "redirect.sent": ("peer", "cuid", "local", "target", "ttl", "reason"),
    # mitigations and the mitigator
    "mitigation.installed": ("cuid", "mid", "state", "lifetime"),
    "mitigation.state_changed": ("cuid", "mid", "old", "new", "reason"),
    "mitigation.efficacy": ("cuid", "mid", "attack_status"),
    "mitigation.refused": ("cuid", "held", "cap"),
    "mitigator.command": ("action", "cuid", "mid", "reason", "seconds"),
    "mitigator.failed": ("action", "cuid", "mid", "exit_status", "reason", "pid"),
    # gateway mode: the relay and the upstream side
    "mitigation.relayed": ("peer", "cuid", "mid", "method", "code", "upstream"),
    "relay.hop_limit": ("peer", "cuid"),
    "relay.no_answer": ("upstream", "method", "path", "reason"),
    "upstream.connected": ("upstream", "cuid", "resumed"),
    "upstream.lost": ("upstream", "reason"),
    "upstream.unreachable": ("reason", "retry_in"),
    "upstream.failover": ("upstream", "next", "reason"),
    "upstream.servers": ("servers",),
    "upstream.parallel_opening": ("upstream", "unanswered"),
    "upstream.parallel_established": ("upstream", "resumed"),
    "upstream.parallel_failed": ("upstream", "reason", "retry_in"),
    "upstream.parallel_promoted": ("upstream", "replaced"),
    "upstream.parallel_dropped": ("upstream", "reason"),
    "mitigation.reinstalled": ("upstream", "cuid", "mid"),
    "relay.reconciled": ("upstream", "clients", "records", "reinstalled", "seconds"),
    # client side redirects (dots-client and the gateway's upstream side)
    "redirect.followed": ("cuid", "origin", "target", "endpoint", "ttl", "reason"),
    "redirect.not_followed": ("cuid", "origin", "target", "ttl", "reason", "error"),
    # anycast
    "anycast.health": ("old", "new", "cause", "penalty", "hold_down"),
    "anycast.route": ("action", "reason"),
    "anycast.route_failed": ("action", "reason", "error"),
    "anycast.check_failed": ("checks",),
    "anycast.checks_passed": (),
    "anycast.drain": ("grace",),
    # operations
    "daemon.serving": ("addresses", "mode", "openssl"),
    "daemon.stopping": (),
    "config.reloaded": ("source", "changed", "needs_restart", "withdrawn"),
    "config.reload_failed": ("reason",),
    "discovery.candidates": ("slot", "count"),
    "discovery.failed": ("reason",),
    "gc.audit": ("examined", "collected", "uncollectable", "seconds", "trigger"),
}


def log_event(logger: logging.Logger, level: int, event: str, msg: str, /, *,
              exc_info: object = None, **fields: object) -> None:
    """Log ``msg`` (human text, without the fields) as ``event`` with ``fields``; fields
    whose value is None are left out (not known for this occurrence)."""
    if not logger.isEnabledFor(level):
        return
    extra: dict[str, object] = {"event": event}
    for key, value in fields.items():
        if value is None:
            continue
        extra[key + "_" if key in _RECORD_ATTRIBUTES else key] = value
    # stacklevel 2: the record names the caller's line, not this helper
    logger.log(level, msg, extra=extra, exc_info=exc_info, stacklevel=2)  # type: ignore[arg-type]
