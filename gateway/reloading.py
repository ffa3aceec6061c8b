"""Reload: re-read the configuration file, check it, apply it, re-check established sessions.

SIGHUP and ``dots-gateway reload`` (the control socket's ``reload``) call ``Reloader.reload``:

1. The file is read and checked as ``check-config`` does. A bad file changes nothing: every
   problem is logged (one line each, as ``check-config`` prints them) and the reload fails
   with all of them.
2. The new credentials are loaded (server certificate, client CAs, CRL, PSKs, ticket and
   cookie secrets; in gateway mode the gateway's own upstream credential). A file that
   cannot be loaded changes nothing either.
3. Everything that can change while running is applied: the credentials for new handshakes,
   ``[[clients]]`` rules and trusted gateways (both roles; the relay reads them from the
   role), session parameters for new sessions, the mitigation policy, redirects, logging,
   and in gateway mode the ``[[upstream]]`` list (unless discovery keeps it).
4. Every established session is re-checked against the new credentials, rules and trusted
   gateways (``gateway.server.standing.recheck``); those no longer allowed are closed.

What needs a restart (addresses, ports, transports, state directory, mode, the control and
metrics sockets, limits, anycast, discovery, the mitigator backend) is kept as it runs and
reported under ``needs_restart``. ``CRL_POLL`` seconds apart, the CRL file is looked at; when
it changed, steps 2 and 4 run with the configuration in force (no re-read of the file).

Imports the roles and the relay's start-up helpers, never the daemon (which owns this).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import ConfigError, Mode, Settings, default_settings, load_config
from gateway.core_settings import (
    build_server_core,
    client_rules,
    config_limits,
    conflict_resolver,
    dev_client_rules,
    mitigation_policy,
    redirect_policy,
)
from gateway.credentials import ServerContexts, Trust, server_contexts
from gateway.dots.authz import Authorizer
from gateway.eventlog import log_event
from gateway.ops.logsetup import configure_logging
from gateway.relay.role import GatewayRole
from gateway.relay.startup import server_spec, upstream_credentials, upstream_names
from gateway.server.standing import recheck

if TYPE_CHECKING:
    from gateway.daemon import RunningServer

log = logging.getLogger(__name__)

#: Seconds between two looks at the CRL file (a stat; the file is read when it changed).
CRL_POLL = 5.0

#: Settings sections applied while running (the others need a restart).
LIVE_SECTIONS = ("logging", "tls", "psk", "session", "mitigation", "clients",
                 "trusted_gateways", "redirect", "gateway", "upstream")
#: Fields of live sections that still need a restart.
RESTART_FIELDS = {
    "mitigation": ("backend", "command"),
    "gateway": ("domain", "insert_cdid", "hop_limit", "identity", "request_timeout",
                "heartbeat_interval", "missing_hb_allowed", "reconnect_interval",
                "reconnect_max_interval"),
}


class ReloadError(Exception):
    """The reload changed nothing; the message says why (every problem of a bad file)."""


def reread_file(settings: Settings) -> Callable[[], Settings]:
    """How to read the configuration again: its file, with the state directory it started
    with as the default (``--state-dir``); the embedded defaults when it had no file."""
    state_dir = settings.general.state_dir
    if settings.source == "<defaults>":
        return lambda: default_settings(state_dir)
    return lambda: load_config(Path(settings.source), default_state_dir=state_dir)


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _failed(reason: str) -> ReloadError:
    """The error a failed reload raises, logged once (config.reload_failed) whichever way
    the reload was asked for (SIGHUP, the control socket)."""
    log_event(log, logging.ERROR, "config.reload_failed", "reload failed", reason=reason)
    return ReloadError(reason)


class Reloader:
    """The daemon's configuration in force, and how it changes (see the module docstring)."""

    def __init__(self, server: RunningServer, settings: Settings, trust: Trust,
                 reread: Callable[[], Settings] | None = None) -> None:
        self.server = server
        self.settings = settings
        self.trust = trust
        self.reread = reread or reread_file(settings)
        self._crl_stamp = _stamp(settings.tls.crl)
        self._task: asyncio.Task[None] | None = None
        server.role.admit = lambda credential: trust.problem(credential, trust, time.time())

    # --- reload ------------------------------------------------------------------------------

    def reload(self) -> dict[str, object]:
        """Steps 1-4 of the module docstring; ReloadError with nothing changed."""
        try:
            new = self.reread()
            build_server_core(new)  # check-config: the core refuses what the file may not say
        except ConfigError as exc:
            problems = [str(e) for e in exc.errors]
            for problem in problems:
                log.error("reload: %s", problem)  # as check-config prints them
            raise _failed("reload failed, keeping the running configuration: "
                          + "; ".join(problems)) from None
        except Exception as exc:
            raise _failed("reload failed, keeping the running configuration: "
                          f"{exc}") from exc
        old = self.settings
        changed, needs_restart = self._differences(old, new)
        contexts, trust, upstream_creds = self._load_credentials(new)
        withdrawn = self._apply(new, changed, contexts, trust, upstream_creds)
        result: dict[str, object] = {
            "config": new.source, "changed": changed, "needs_restart": needs_restart,
            "reloaded": ["credentials"] + (["upstream credentials"]
                                           if upstream_creds is not None else []),
            "withdrawn": [dataclasses.asdict(w) for w in withdrawn]}
        log_event(log, logging.INFO, "config.reloaded", f"configuration reloaded from "
                  f"{new.source}", source=new.source, changed=changed,
                  needs_restart=needs_restart, withdrawn=len(withdrawn))
        return result

    def reload_logged(self) -> None:
        """SIGHUP: ``reload``, a failure logged (the running configuration stays)."""
        try:
            self.reload()
        except ReloadError:
            pass  # logged as config.reload_failed where it was raised

    def _differences(self, old: Settings, new: Settings) -> tuple[list[str], list[str]]:
        """(changed and applied, changed but kept until a restart), as ``section[.field]``."""
        changed: list[str] = []
        restart: list[str] = []
        gateway_mode = self.server.mode is Mode.GATEWAY
        discovered = not old.upstream or old.discovery.collect_all
        for f in dataclasses.fields(Settings):
            name = f.name
            before, after = getattr(old, name), getattr(new, name)
            if name == "source" or before == after:
                continue
            if name == "upstream" and (not gateway_mode or discovered):
                restart.append(name)
            elif name not in LIVE_SECTIONS:
                restart += _field_names(name, before, after)
            elif name in RESTART_FIELDS:
                for key in _field_names(name, before, after):
                    field_name = key.partition(".")[2]
                    (restart if field_name in RESTART_FIELDS[name] else changed).append(key)
            else:
                changed.append(name)
        return changed, restart

    def _load_credentials(self, new: Settings) -> tuple[ServerContexts, Trust, Any]:
        try:
            contexts = server_contexts(new)
            trust = Trust.load(contexts.dtls.credentials)
            upstream = _upstream_client(self.server)
            creds = upstream_credentials(new) if upstream is not None else None
        except Exception as exc:
            raise _failed(f"reload failed, keeping the old credentials: {exc}") from exc
        return contexts, trust, creds

    def _apply(self, new: Settings, changed: list[str], contexts: ServerContexts, trust: Trust,
               upstream_creds: Any) -> list[Any]:
        server, role = self.server, self.server.role
        upstream = _upstream_client(server)
        if upstream is not None and upstream_creds is not None:
            upstream.replace_credentials(upstream_creds)  # loads first: may raise, nothing set
        self._install(contexts, trust)
        self._crl_stamp = _stamp(new.tls.crl)
        if "logging" in changed:
            configure_logging(str(new.logging.format), str(new.logging.level))
        core = role.core
        core.mitigating_limits = config_limits(new.session.mitigating)
        core.idle_limits = config_limits(new.session.idle)
        core.config_max_age = new.session.max_age
        role.max_observations = new.session.max_observations  # new registrations only
        core.store.policy = mitigation_policy(new)
        core.store.resolver = conflict_resolver(new)
        role.redirect = redirect_policy(new)
        if "upstream" in changed and upstream is not None:
            upstream.set_servers([server_spec(u) for u in new.upstream])
            relay = getattr(role, "relay", None)
            if relay is not None:
                relay.upstream_names = upstream_names(new)
        authorizer = Authorizer([*client_rules(new), *dev_client_rules(contexts.dev_pki)])
        before = self.trust
        self.trust = trust
        self.settings = dataclasses.replace(
            self.settings, **{name: getattr(new, name) for name in changed
                              if "." not in name},
            **_live_fields(self.settings, new, changed))
        return recheck(role, lambda c: trust.problem(c, before, time.time()),
                       trusted_gateways=frozenset(new.trusted_gateways.identities),
                       authorizer=authorizer)

    def _install(self, contexts: ServerContexts, trust: Trust) -> None:
        server = self.server
        if server.dtls is not None:
            server.dtls.replace_context(contexts.dtls)
        if server.tls is not None:
            server.tls.context = contexts.tls
        if server.data is not None:  # the data channel's HTTPS (stdlib ssl)
            try:
                server.data.reload_credentials(contexts.tls.credentials)
            except (OSError, ValueError) as exc:
                log.error("data channel: the new credentials could not be loaded (%s); it "
                          "keeps the previous ones", exc)
        server.role.admit = lambda credential: trust.problem(credential, trust, time.time())

    # --- the CRL file ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch_crl())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _watch_crl(self) -> None:
        while True:
            await asyncio.sleep(CRL_POLL)
            try:
                self.check_crl()
            except Exception:
                log.exception("CRL check failed")

    def check_crl(self) -> list[Any] | None:
        """When the CRL file changed: load it with the credentials in force and re-check the
        sessions (the sessions withdrawn); None when it did not change or cannot be loaded
        yet (a file being written: tried again at the next look)."""
        path = self.settings.tls.crl
        stamp = _stamp(path)
        if stamp is None or stamp == self._crl_stamp:
            return None
        try:
            contexts = server_contexts(self.settings)
            trust = Trust.load(contexts.dtls.credentials)
        except Exception as exc:
            log.warning("CRL %s changed but cannot be loaded (tried again in %g s): %s",
                        path, CRL_POLL, exc)
            return None
        self._crl_stamp = stamp
        log.info("CRL %s changed: loaded; re-checking the sessions", path)
        before = self.trust
        self.trust = trust
        self._install(contexts, trust)
        role = self.server.role
        return recheck(role, lambda c: trust.problem(c, before, time.time()),
                       trusted_gateways=role.trusted_gateways, authorizer=role.core.authorizer)


def _field_names(section: str, before: object, after: object) -> list[str]:
    if dataclasses.is_dataclass(before) and dataclasses.is_dataclass(after):
        return [f"{section}.{f.name}" for f in dataclasses.fields(before)
                if getattr(before, f.name) != getattr(after, f.name)]
    return [section]


def _live_fields(running: Settings, new: Settings, changed: list[str]) -> dict[str, Any]:
    """Sections of which only some fields were applied: those fields, the rest as running."""
    out: dict[str, Any] = {}
    for key in changed:
        section, _, name = key.partition(".")
        if name:
            current = out.get(section, getattr(running, section))
            out[section] = dataclasses.replace(current, **{name: getattr(getattr(new, section),
                                                                         name)})
    return out


def _upstream_client(server: RunningServer) -> Any:
    return server.role.relay.upstream if isinstance(server.role, GatewayRole) else None
