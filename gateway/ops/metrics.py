"""Prometheus metrics: a registry of counters and gauges, and the ``/metrics`` endpoint.

Modules that count things hold a metric family and update it with one dict operation
(``counter.inc("2.01")``): no locks (everything runs on the event loop), no per-request
allocation beyond the label tuple. Numbers that another object already keeps (the
transports' counters, the session table, the mitigation store) are read at scrape time
through a *source*, a callable returning ``{label values: value}``; a family may have stored
values and sources at once and they add up, so the relay can count upstream heartbeats into
the same family the server role feeds from its own counts.

The endpoint is a tiny HTTP/1.1 server (text exposition format 0.0.4): GET ``/metrics``,
one response per connection, requests bounded in size and time.

This module knows nothing of the roles or transports; ``gateway.daemon`` wires them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.ops.stream_clients import ClientTasks, close_writer

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Request head bytes we read at most: a scraper's GET is a few hundred bytes.
MAX_REQUEST = 8192
#: Seconds a client has to send its request (and receive the answer).
REQUEST_TIMEOUT = 5.0
#: Concurrent scrape connections; more are closed at once (a scraper needs one).
MAX_CLIENTS = 16

Labels = tuple[str, ...]
Source = Callable[[], Mapping[Labels, float]]

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


class Family:
    """One metric name: its help text, type, label names and samples."""

    kind = "untyped"
    __slots__ = ("help", "labels", "name", "sources", "values", "_warned")

    def __init__(self, name: str, help: str, labels: Labels = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} is not a valid metric name")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"{name}: {label!r} is not a valid label name")
        if len(set(labels)) != len(labels):
            raise ValueError(f"{name}: repeated label name in {labels}")
        self.name = name
        self.help = help
        self.labels = labels
        #: Stored values by label values (in ``labels`` order); update through the methods.
        self.values: dict[Labels, float] = {}
        self.sources: list[Source] = []
        self._warned = False

    def add_source(self, source: Source) -> None:
        """Read ``source()`` at every scrape: ``{label values: value}``, added to the stored
        values. A source that raises is logged and left out of that scrape."""
        self.sources.append(source)

    def samples(self) -> dict[Labels, float]:
        out = dict(self.values)
        for source in self.sources:
            try:
                produced = source()
                for key, value in produced.items():
                    key = tuple(str(v) for v in key)
                    out[key] = out.get(key, 0.0) + float(value)
            except Exception:
                log.exception("metric %s: a source failed; its samples are left out",
                              self.name)
        return out

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}\n")
        out.append(f"# TYPE {self.name} {self.kind}\n")
        for key, value in sorted(self.samples().items()):
            if len(key) != len(self.labels):
                # Updates are not checked (they must stay cheap); a wrong call shows here.
                if not self._warned:
                    self._warned = True
                    log.error("metric %s: sample %r does not match labels %r; left out",
                              self.name, key, self.labels)
                continue
            if key:
                pairs = ",".join(f'{n}="{escape_label(str(v))}"'
                                 for n, v in zip(self.labels, key, strict=True))
                out.append(f"{self.name}{{{pairs}}} {format_value(value)}\n")
            else:
                out.append(f"{self.name} {format_value(value)}\n")


class Counter(Family):
    """Only goes up (per label values); the name ends in ``_total`` by convention."""

    kind = "counter"
    __slots__ = ()

    def inc(self, *labels: str, by: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + by


class Gauge(Family):
    kind = "gauge"
    __slots__ = ()

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def inc(self, *labels: str, by: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + by

    def dec(self, *labels: str, by: float = 1.0) -> None:
        self.inc(*labels, by=-by)

    def remove(self, *labels: str) -> None:
        """Forget one series (e.g. an upstream server no longer in the list)."""
        self.values.pop(labels, None)


class Histogram(Family):
    """Observations counted into fixed buckets (``le``, cumulative when rendered), with
    their ``_sum`` and ``_count``. ``observe`` is one bisect and two dict updates."""

    kind = "histogram"
    __slots__ = ("buckets", "counts", "sums")

    def __init__(self, name: str, help: str, labels: Labels = (),
                 buckets: tuple[float, ...] = ()) -> None:
        super().__init__(name, help, labels)
        if "le" in labels:
            raise ValueError(f"{name}: 'le' is the histogram's own label")
        if not buckets or list(buckets) != sorted(set(buckets)) or not all(
                math.isfinite(b) for b in buckets):
            raise ValueError(f"{name}: buckets must be finite and strictly increasing")
        self.buckets = tuple(float(b) for b in buckets)
        #: Per label values: observations per bucket (not cumulative), the last one +Inf.
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1  # le: value <= bound
        self.sums[labels] = self.sums.get(labels, 0.0) + value

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}\n")
        out.append(f"# TYPE {self.name} {self.kind}\n")
        bounds = [format_value(b) for b in self.buckets] + ["+Inf"]
        for key in sorted(self.counts):
            if len(key) != len(self.labels):
                if not self._warned:
                    self._warned = True
                    log.error("metric %s: sample %r does not match labels %r; left out",
                              self.name, key, self.labels)
                continue
            pairs = "".join(f'{n}="{escape_label(str(v))}",'
                            for n, v in zip(self.labels, key, strict=True))
            total = 0
            for bound, count in zip(bounds, self.counts[key], strict=True):
                total += count
                out.append(f'{self.name}_bucket{{{pairs}le="{bound}"}} {total}\n')
            suffix = f"{{{pairs[:-1]}}}" if pairs else ""
            out.append(f"{self.name}_sum{suffix} {format_value(self.sums[key])}\n")
            out.append(f"{self.name}_count{suffix} {total}\n")


#: Seconds; request handling on the loop is sub-millisecond unless a save waits for the disk.
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0)
#: Seconds from a client's first handshake message to the session: a few ms on a LAN, more
#: across the Internet, and up to the handshake deadline for a lossy path.
HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0)
#: Seconds from a relayed request to the upstream answer (bounded by gateway.request_timeout).
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)


class Registry:
    """The metric families of one daemon, rendered in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def counter(self, name: str, help: str, labels: Labels = ()) -> Counter:
        family = self._register(Counter, name, help, labels)
        assert isinstance(family, Counter)
        return family

    def gauge(self, name: str, help: str, labels: Labels = ()) -> Gauge:
        family = self._register(Gauge, name, help, labels)
        assert isinstance(family, Gauge)
        return family

    def histogram(self, name: str, help: str, labels: Labels = (), *,
                  buckets: tuple[float, ...]) -> Histogram:
        family = self._register(Histogram, name, help, labels, buckets=buckets)
        assert isinstance(family, Histogram)
        return family

    def names(self) -> list[str]:
        """The registered family names, in registration order."""
        return list(self._families)

    def get(self, name: str) -> Family | None:
        return self._families.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._families

    def render(self) -> str:
        out: list[str] = []
        for family in list(self._families.values()):
            family.render(out)
        return "".join(out)

    def _register(self, cls: type[Family], name: str, help: str, labels: Labels,
                  **options: tuple[float, ...]) -> Family:
        """A second registration of the same name, type and labels returns the first one,
        so independent modules can declare a family they share."""
        labels = tuple(labels)
        existing = self._families.get(name)
        if existing is not None:
            if type(existing) is not cls or existing.labels != labels:
                raise ValueError(f"metric {name} is already registered as {existing.kind} "
                                 f"with labels {existing.labels}")
            return existing
        family = cls(name, help, labels, **options)
        self._families[name] = family
        return family


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


# --- the daemon's families ---------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonMetrics:
    """The families every dots-gateway exports, whatever its mode. ``daemon_metrics`` declares
    them; calling it again on the same registry returns the same families, so the relay gets
    them with ``daemon_metrics(registry)`` and increments or adds sources."""

    sessions: Gauge  # side, transport
    handshakes: Counter  # side, transport, result
    heartbeats: Counter  # side, event
    requests: Counter  # code
    relayed_requests: Counter  # code
    upstream_health: Gauge  # upstream
    redirects: Counter  # reason
    mitigations: Gauge  # status
    mitigations_active: Gauge
    save_failures: Counter  # database
    unsaved_requests: Counter  # database
    saves: Counter  # database
    fsyncs: Counter  # database
    request_duration: Histogram  # resource
    handshake_duration: Histogram  # side, transport
    relay_duration: Histogram  # upstream


def daemon_metrics(registry: Registry) -> DaemonMetrics:
    r = registry
    return DaemonMetrics(
        sessions=r.gauge("dots_gateway_sessions",
                         "Established DOTS signal-channel sessions, by side (downstream: "
                         "clients of this node; upstream: its own sessions to servers) and "
                         "transport (dtls, tls).", ("side", "transport")),
        handshakes=r.counter("dots_gateway_handshakes_total",
                             "(D)TLS handshakes by side, transport and result (completed, "
                             "failed, timed_out).", ("side", "transport", "result")),
        heartbeats=r.counter("dots_gateway_heartbeats_total",
                             "DOTS heartbeats (RFC 9132 section 4.7) by side and event: sent, "
                             "answered (the peer's 2.04 to ours), missed (ours unanswered), "
                             "received (the peer's, answered by us).", ("side", "event")),
        requests=r.counter("dots_gateway_requests_total",
                           "Requests this node answered itself (server role: config, hb, "
                           "mitigate in terminal mode, redirects), by CoAP response code.",
                           ("code",)),
        relayed_requests=r.counter("dots_gateway_relayed_requests_total",
                                   "Requests relayed to an upstream server, by the response "
                                   "code the client got.", ("code",)),
        upstream_health=r.gauge("dots_gateway_upstream_health",
                                "1 if the upstream DOTS server is usable, 0 if not.",
                                ("upstream",)),
        redirects=r.counter("dots_gateway_redirects_total",
                            "Signal-channel redirects sent (5.03 + redirected-signal), by "
                            "reason (anycast, capacity, drain).", ("reason",)),
        mitigations=r.gauge("dots_gateway_mitigations",
                            "Mitigation requests held, by status (RFC 9132 Table 3 label).",
                            ("status",)),
        mitigations_active=r.gauge("dots_gateway_mitigations_active",
                                   "Mitigation requests the mitigator is acting on (mitigating "
                                   "or active-but-terminating)."),
        save_failures=r.counter("dots_gateway_state_save_failures_total",
                                "Writes of the saved state that failed (disk full, read-only "
                                "file system, file locked), by database (mitigations, relay); "
                                "they are retried.", ("database",)),
        unsaved_requests=r.counter("dots_gateway_unsaved_requests_total",
                                   "Mitigation requests answered 5.03 because their change "
                                   "could not be saved (and was undone), by database.",
                                   ("database",)),
        saves=r.counter("dots_gateway_state_saves_total",
                        "Transactions that saved state changes, by database.", ("database",)),
        fsyncs=r.counter("dots_gateway_state_fsyncs_total",
                         "fsyncs that made saved changes durable before their answers left, "
                         "by database (mitigations: one per turn of the event loop, shared by "
                         "the requests of that turn; relay: one shared by the relayed requests "
                         "that saved while the previous one ran: group commit).",
                         ("database",)),
        request_duration=r.histogram(
            "dots_gateway_request_duration_seconds",
            "Time to handle a request this node answers itself, from its decoding to its "
            "answer queued (mitigate in terminal mode, config, hb), by resource.",
            ("resource",), buckets=REQUEST_BUCKETS),
        handshake_duration=r.histogram(
            "dots_gateway_handshake_duration_seconds",
            "Completed (D)TLS handshakes, by side and transport: downstream, seconds from a "
            "client's first handshake message (after the DTLS cookie exchange) to its session; "
            "upstream, from the gateway's connect to its session.", ("side", "transport"),
            buckets=HANDSHAKE_BUCKETS),
        relay_duration=r.histogram(
            "dots_gateway_relay_upstream_duration_seconds",
            "Gateway mode: round trip of a relayed request to the upstream server that "
            "answered it, by upstream (its configured name; a discovered one by address).",
            ("upstream",), buckets=UPSTREAM_BUCKETS),
    )


# --- the endpoint ------------------------------------------------------------------------------


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1 on (host, port); ``Connection: close`` after each
    answer. Anything else gets 400/404/405 and the connection closed; a request that is too
    large or too slow is dropped. Rendering happens on the loop (a few hundred lines)."""

    def __init__(self, registry: Registry, host: str, port: int, *,
                 max_request: int = MAX_REQUEST, timeout: float = REQUEST_TIMEOUT,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.max_request = max_request
        self.timeout = timeout
        self.scrapes = 0
        self.bad_requests = 0
        self._server: asyncio.Server | None = None
        self._clients = ClientTasks(max_clients)

    async def start(self) -> None:
        """Listen; OSError (EADDRINUSE...) when the address cannot be bound."""
        self._server = await asyncio.start_server(self._client, self.host, self.port,
                                                  limit=self.max_request)

    @property
    def bound(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def stop(self) -> None:
        if self._server is None:
            return
        await self._clients.close(self._server)
        self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._clients.admit()
        if task is None:
            writer.close()
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._serve_one(reader, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away or was too slow: nothing to answer
        except asyncio.CancelledError:
            pass  # stop(): end normally, or asyncio logs the cancelled task (Python 3.11)
        except Exception:
            log.exception("metrics endpoint: unexpected error")
        finally:
            self._clients.release(task)
            await close_writer(writer)

    async def _serve_one(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.bad_requests += 1
            await _respond(writer, 431, "Request Header Fields Too Large", b"too large\n")
            return
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return  # opened and closed: a port check
            self.bad_requests += 1
            await _respond(writer, 400, "Bad Request", b"incomplete request\n")
            return
        status, reason, body, head_only = self._route(head)
        if status != 200:
            self.bad_requests += 1
        await _respond(writer, status, reason, body, head_only=head_only)

    def _route(self, head: bytes) -> tuple[int, str, bytes, bool]:
        line = head.split(b"\r\n", 1)[0]
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, "Bad Request", b"bad request line\n", False
        method, target = parts[0], parts[1]
        path = target.split(b"?", 1)[0]
        if path != b"/metrics":
            return 404, "Not Found", b"not found; try /metrics\n", False
        if method not in (b"GET", b"HEAD"):
            return 405, "Method Not Allowed", b"GET only\n", False
        started = time.monotonic()
        body = self.registry.render().encode()
        self.scrapes += 1
        log.debug("metrics scraped: %d bytes in %.1f ms", len(body),
                  (time.monotonic() - started) * 1000)
        return 200, "OK", body, method == b"HEAD"


async def _respond(writer: asyncio.StreamWriter, status: int, reason: str, body: bytes, *,
                   head_only: bool = False) -> None:
    content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
    extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    writer.write(head.encode() + (b"" if head_only else body))
    await writer.drain()
