"""The anycast lab: client -- router -- {edge1, edge2}, BIRD 2 on the router and the edges,
one ``dots-gateway run`` per edge, a DOTS client helper in the client namespace.

    client 10.46.9.2 fd00:46:9::2
       | veth
    router AS65000 (BIRD: 4 eBGP sessions, best route -> kernel FIB; forwarding on)
       | veth                               | veth
    edge1 AS65046 10.46.1.2 fd00:46:1::2    edge2 AS65046 10.46.2.2 fd00:46:2::2
    anycast0 (ifb, made by the gateway):    same anycast addresses
      192.0.2.46/32 2001:db8::4646/128

Each edge's gateway puts the anycast addresses on ``anycast0`` and announces by adding
routes to kernel table 46; the edge's BIRD learns that table with deploy/bird/
dots-anycast.conf (included as shipped) and exports it to the router. The router prefers
edge1 (lower router id) while both announce.

``start_exabgp`` runs the exabgp backend instead on edge1: the real ExaBGP with the shipped
deploy/exabgp files, running ``dots-gateway run`` as its API process
(``test_anycast_exabgp.py``; the bench uses the kernel-table edges).

Built on ``tests.lab.netns.Lab`` (unique ``dgl<pid>-`` names, teardown in ``close()``,
``cleanup_stale()`` for killed runs). The design follows the measured lab of
/work/shared/docs/anycast-lab.md (BIRD timers, nodad, short control-socket paths).
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certs.devpki import init_dev_pki
from gateway.demo.topology import (
    BGP_TIMERS,
    EDGE_BIRD,
    ROUTER_BIRD_EDGE,
    ROUTER_BIRD_HEAD,
    Edge,
)
from tests.lab.netns import Lab

REPO = Path(__file__).resolve().parents[2]
V4, V6 = "192.0.2.46", "2001:db8::4646"
EDGES = {  # name: (router side v4, edge v4, router side v6, edge v6)
    "edge1": ("10.46.1.1", "10.46.1.2", "fd00:46:1::1", "fd00:46:1::2"),
    "edge2": ("10.46.2.1", "10.46.2.2", "fd00:46:2::1", "fd00:46:2::2"),
}
CLIENT_V4, CLIENT_V6 = "10.46.9.2", "fd00:46:9::2"

#: Health timing of the gateways under test: fast, so the lab stays short.
INTERVAL, RISE, FALL, HOLD_DOWN, GRACE = 0.1, 3, 2, 1.5, 2.0
#: Under ExaBGP: ExaBGP 5.0 SIGKILLs its API processes 2 s after SIGTERM, so a longer grace
#: would be cut short there (4.2 waits as long as it takes).
EXABGP_GRACE = 1.5

#: The BIRD configuration is the demo's (gateway/demo/topology.py), for these two edges.
LAB_EDGES = {name: Edge(name, r4, e4, r6, e6) for name, (r4, e4, r6, e6) in EDGES.items()}
ROUTER_BIRD = ROUTER_BIRD_HEAD + "".join(
    ROUTER_BIRD_EDGE.format(n=f"e{name[-1]}", e=edge) for name, edge in LAB_EDGES.items())


def missing_tools() -> str | None:
    for tool in ("bird", "birdc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install bird2)"
    return None


#: The shipped ExaBGP files; the lab runs them with only the ``run`` line changed (the edge1
#: addresses in dots-gateway.conf are the lab's own).
EXABGP_CONF = REPO / "deploy" / "exabgp" / "dots-gateway.conf"
EXABGP_ENV = REPO / "deploy" / "exabgp" / "exabgp.env"
SHIPPED_RUN = "/usr/bin/dots-gateway run --config /etc/dots-gateway/dots-gateway.toml"


def exabgp_command() -> list[str] | None:
    """The ExaBGP to run: ``$DOTS_TEST_EXABGP`` (a command line, e.g. another version's
    ``/opt/exabgp5/bin/exabgp server``), else the pinned test extra installed next to this
    Python, else one on PATH (Debian's ``exabgp``)."""
    if os.environ.get("DOTS_TEST_EXABGP"):
        return shlex.split(os.environ["DOTS_TEST_EXABGP"])
    beside = Path(sys.executable).parent / "exabgp"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("exabgp")
    return [found] if found else None


def exabgp_environment(path: Path = EXABGP_ENV) -> dict[str, str]:
    """An ExaBGP env file (ini) as ``exabgp_<section>_<key>`` variables, which ExaBGP 4.2
    and 5.0 both read (their command-line flags for an env file differ)."""
    parser = configparser.ConfigParser()
    parser.read_string(path.read_text())
    return {f"{section.replace('.', '_')}_{key}": value.strip("'\"")
            for section in parser.sections() for key, value in parser[section].items()}


class AnycastLab:
    def __init__(self, lab: Lab, *, server_names: Sequence[str] = (),
                 server_addresses: Sequence[str] = ()) -> None:
        """``server_names`` / ``server_addresses``: more DNS-IDs and IP addresses for the
        shared server certificate, besides localhost and the anycast addresses (e.g. each
        edge's unicast name, which a redirect names as alt-server)."""
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.gateways: dict[str, subprocess.Popen[bytes]] = {}
        self.probe: subprocess.Popen[bytes] | None = None
        self.pki = lab.dir / "pki"
        self.server_names = ("localhost", *server_names)
        self.server_addresses = (V4, V6, *server_addresses)

    # --- network and BIRD --------------------------------------------------------------------

    def build(self) -> None:
        lab = self.lab
        for name in ("router", "client", *EDGES):
            self.ns[name] = lab.namespace(name)
        router = self.ns["router"]
        lab.veth(router, "to-client", self.ns["client"], "uplink")
        lab.address(router, "to-client", "10.46.9.1/24")
        lab.address(router, "to-client", "fd00:46:9::1/64")
        lab.address(self.ns["client"], "uplink", f"{CLIENT_V4}/24")
        lab.address(self.ns["client"], "uplink", f"{CLIENT_V6}/64")
        self._default_routes("client", "10.46.9.1", "fd00:46:9::1")
        for edge, (r4, e4, r6, e6) in EDGES.items():
            lab.veth(router, f"to-{edge}", self.ns[edge], "uplink")
            lab.address(router, f"to-{edge}", f"{r4}/30")
            lab.address(router, f"to-{edge}", f"{r6}/64")
            lab.address(self.ns[edge], "uplink", f"{e4}/30")
            lab.address(self.ns[edge], "uplink", f"{e6}/64")
            self._default_routes(edge, r4, r6)
        lab.sysctl(router, "net.ipv4.ip_forward", "1")
        lab.sysctl(router, "net.ipv6.conf.all.forwarding", "1")

    def _default_routes(self, node: str, v4: str, v6: str) -> None:
        self.lab.run(self.ns[node], "ip", "route", "add", "default", "via", v4)
        self.lab.run(self.ns[node], "ip", "-6", "route", "add", "default", "via", v6)

    def ctl(self, node: str) -> str:
        return str(self.lab.dir / f"{node}.ctl")

    def start_birds(self, nodes: tuple[str, ...] = ("router", *EDGES)) -> None:
        snippet = REPO / "deploy" / "bird" / "dots-anycast.conf"
        for node in nodes:
            conf = self.lab.dir / f"{node}.conf"
            if node == "router":
                conf.write_text(ROUTER_BIRD)
            else:
                conf.write_text(EDGE_BIRD.format(e=LAB_EDGES[node], snippet=snippet,
                                                 timers=BGP_TIMERS))
            self.lab.popen(self.ns[node], ["bird", "-f", "-c", str(conf), "-s", self.ctl(node)],
                           f"bird-{node}.log")

    def birdc(self, node: str, *cmd: str) -> str:
        return subprocess.run(["birdc", "-s", self.ctl(node), *cmd], capture_output=True,
                              text=True, timeout=5).stdout

    def wait_established(self, timeout: float = 15.0, sessions: int = 4) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.birdc("router", "show", "protocols").count("Established") == sessions:
                return
            time.sleep(0.05)
        raise TimeoutError("BGP sessions not established:\n"
                           + self.birdc("router", "show", "protocols"))

    def bird_routes(self, node: str = "router") -> dict[str, str]:
        """The anycast prefixes in ``node``'s BIRD and the protocol each was learned from
        (``{"192.0.2.46/32": "e1v4"}``); BIRD's own view, before the kernel FIB."""
        routes = {}
        for line in self.birdc(node, "show", "route").splitlines():
            words = line.split()
            if words and words[0] in (f"{V4}/32", f"{V6}/128") and "[" in line:
                routes[words[0]] = line.split("[", 1)[1].split()[0]
        return routes

    def router_next_hop(self, family: int) -> str | None:
        """Which edge the router forwards the anycast address to (None: no route)."""
        dst = V4 if family == 4 else V6
        out = self.lab.run(self.ns["router"], "ip", f"-{family}", "route", "show", dst,
                           check=False).stdout
        for edge, (_, e4, _, e6) in EDGES.items():
            if f"via {e4 if family == 4 else e6} " in out:
                return edge
        return None

    def wait_next_hop(self, edge: str | None, timeout: float) -> float:
        """Seconds until the router forwards both families to ``edge``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.router_next_hop(4) == edge and self.router_next_hop(6) == edge:
                return time.monotonic() - started
            time.sleep(0.01)
        raise TimeoutError(f"router still forwards to v4 {self.router_next_hop(4)}, "
                           f"v6 {self.router_next_hop(6)}; wanted {edge}")

    # --- gateways ----------------------------------------------------------------------------

    def fail_flag(self, edge: str) -> Path:
        return self.lab.dir / f"{edge}.fail"

    def state_dir(self, edge: str) -> Path:
        return self.lab.dir / edge / "state"

    def config(self, edge: str) -> Path:
        return self.lab.dir / edge / "gateway.toml"

    def write_gateway_config(self, edge: str, *, backend: str = "kernel-table",
                             grace: float = GRACE, extra: str = "") -> None:
        """``extra``: more TOML appended (e.g. ``[limits]``, ``[redirect]`` for the bench)."""
        _, e4, _, e6 = EDGES[edge]
        tls = self.lab.dir / edge / "tls"
        shutil.copytree(self.pki, tls, dirs_exist_ok=True)  # the shared dev PKI, copied in
        self.config(edge).write_text(f"""\
[general]
state_dir = "{self.state_dir(edge)}"
node_name = "{edge}"
[server]
addresses = ["{V4}", "{V6}", "{e4}", "{e6}"]
port = 4646
[tls]
ca = "{tls}/ca.pem"
cert = "{tls}/server.pem"
key = "{tls}/server.key"
[anycast]
enabled = true
addresses = ["{V4}", "{V6}"]
interface = "anycast0"
interface_kind = "ifb"
backend = "{backend}"
table = 46
grace = {grace}
[anycast.health]
interval = {INTERVAL}
rise = {RISE}
fall = {FALL}
hold_down = {HOLD_DOWN}
max_hold_down = 30.0
half_life = 60.0
command = "test ! -e {self.fail_flag(edge)}"
command_timeout = 1.0
{extra}""")

    def init_pki(self) -> None:
        """The dev PKI all gateways and clients share (made once, then loaded)."""
        init_dev_pki(self.pki, hostnames=self.server_names, addresses=self.server_addresses)

    def start_gateways(self, extra: dict[str, str] | None = None) -> None:
        self.init_pki()
        for edge in EDGES:
            self.write_gateway_config(edge, extra=(extra or {}).get(edge, ""))
            self.gateways[edge] = self.lab.popen(
                self.ns[edge], [sys.executable, "-m", "gateway.cli", "run", "--config",
                                str(self.config(edge))], f"gateway-{edge}.log")

    def start_exabgp(self, edge: str, command: list[str]) -> subprocess.Popen[bytes]:
        """ExaBGP in ``edge`` with the shipped config and env, running ``dots-gateway run``
        (exabgp backend) as its API process. ExaBGP's log and the gateway's stderr both go
        to ``gateway-EDGE.log`` (so ``gateway_log`` and ``served_by`` work unchanged)."""
        assert edge == "edge1", "deploy/exabgp/dots-gateway.conf holds edge1's addresses"
        self.init_pki()
        self.write_gateway_config(edge, backend="exabgp", grace=EXABGP_GRACE)
        gateway = Path(sys.executable).parent / "dots-gateway"  # the installed entry point
        run = (f"{gateway} run" if gateway.exists() else f"{sys.executable} -m gateway.cli run")
        shipped = EXABGP_CONF.read_text()
        assert SHIPPED_RUN in shipped
        conf = self.lab.dir / f"exabgp-{edge}.conf"
        conf.write_text(shipped.replace(SHIPPED_RUN, f"{run} --config {self.config(edge)}"))
        env = {**os.environ, **exabgp_environment(),
               # root in the lab: Debian's exabgp.service runs it as user exabgp instead
               "exabgp_daemon_user": "root", "exabgp_log_destination": "stdout",
               "exabgp_api_cli": "false"}  # no CLI pipes (Debian's unit makes them)
        log = open(self.lab.dir / f"gateway-{edge}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(["ip", "netns", "exec", self.ns[edge], *command, str(conf)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        log.close()
        self.lab.processes.append(process)
        self.gateways[edge] = process
        return process

    def gateway_pids(self, edge: str) -> list[int]:
        """PIDs of ``dots-gateway run`` processes in ``edge`` (ExaBGP's children included)."""
        pids = subprocess.run(["ip", "netns", "pids", self.ns[edge]], capture_output=True,
                              text=True, timeout=5).stdout.split()
        found = []
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state == "Z":  # killed, not reaped yet by ExaBGP
                continue
            if b"run" in argv and any(a.endswith((b"dots-gateway", b"gateway.cli"))
                                      for a in argv):
                found.append(int(pid))
        return found

    def stop_gateways(self, timeout: float = 5.0) -> None:
        """Stop every edge's gateway at once (two SIGTERMs: withdraw, then skip the grace
        period) and wait for them; ``start_gateways`` may follow, e.g. with other config."""
        for process in self.gateways.values():
            if process.poll() is None:
                process.terminate()
                time.sleep(0.05)
                if process.poll() is None:
                    process.terminate()
        for process in self.gateways.values():
            self.lab.stop(process, timeout)  # waits; SIGKILLs what is still there

    def wait_serving(self, log_name: str, timeout: float = 10.0) -> None:
        """Until the gateway logging to ``log_name`` listens (its "dots-gateway serving"
        line; an anycast edge announces only after that, once its checks rise)."""
        deadline = time.monotonic() + timeout
        while "dots-gateway serving" not in self.lab.log(log_name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"not serving after {timeout} s:\n{self.lab.log(log_name)}")
            time.sleep(0.02)

    def gateway_log(self, edge: str) -> str:
        return self.lab.log(f"gateway-{edge}.log")

    def drain(self, edge: str) -> subprocess.CompletedProcess[str]:
        return self.lab.run(self.ns[edge], sys.executable, "-m", "gateway.cli", "drain",
                            "--config", str(self.config(edge)), check=False)

    def status(self, edge: str) -> dict[str, Any]:
        out = self.lab.run(self.ns[edge], sys.executable, "-m", "gateway.cli", "status",
                           "--json", "--config", str(self.config(edge)), check=False).stdout
        data = json.loads(out) if out.strip() else {}
        return dict(data.get("anycast", data))  # the control socket's answer, or the file's

    # --- the client --------------------------------------------------------------------------

    def start_probe(self) -> None:
        with open(self.lab.dir / "probe.log", "wb") as log:
            self.probe = subprocess.Popen(
                ["ip", "netns", "exec", self.ns["client"], sys.executable, "-m",
                 "tests.lab.anycast_probe", str(self.pki)],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True)
        self.lab.processes.append(self.probe)

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.probe is not None and self.probe.stdin and self.probe.stdout
        self.probe.stdin.write((json.dumps(command) + "\n").encode())
        self.probe.stdin.flush()
        line = self.probe.stdout.readline()
        if not line:
            raise RuntimeError("probe helper died:\n" + self.lab.log("probe.log"))
        return dict(json.loads(line))

    def hb(self, transport: str, family: int, timeout: float = 1.0) -> dict[str, Any]:
        """A new session to the anycast address, one heartbeat; adds "edge": who served."""
        answer = self.ask(op="probe", transport=transport, host=V4 if family == 4 else V6,
                          timeout=timeout)
        if answer["ok"]:
            answer["edge"] = self.served_by(answer["local"])
        return answer

    def served_by(self, client_local: str, timeout: float = 2.0) -> str | None:
        """The edge whose gateway logged the session from this client address and port."""
        deadline = time.monotonic() + timeout
        needle = f" peer={client_local} "
        while time.monotonic() < deadline:
            for edge in EDGES:
                if any("event=session.established" in line and needle in line
                       for line in self.gateway_log(edge).splitlines()):
                    return edge
            time.sleep(0.01)
        return None

    # --- lifecycle ---------------------------------------------------------------------------

    def up(self, extra: dict[str, str] | None = None) -> AnycastLab:
        """``extra``: more TOML per edge (see ``write_gateway_config``)."""
        self.build()
        self.start_birds()
        self.start_gateways(extra)  # each: listen first, announce after RISE passed checks
        self.start_probe()
        self.wait_established()
        self.wait_next_hop("edge1", timeout=20.0)
        return self
