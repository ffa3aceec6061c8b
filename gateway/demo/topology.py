"""The demo's network: namespaces, addresses, BIRD, dnsmasq and the DOTS daemons in them.

    client 10.46.9.2 (enterprise LAN; dnsmasq on the router answers its DHCP)
       | veth
    router AS65000: BIRD (6 eBGP sessions, best anycast route -> kernel FIB), dnsmasq
       | veth                 | veth                 | veth                 | veth
    edge1 10.46.1.2         edge2 10.46.2.2        edge3 10.46.3.2        provider 10.46.8.2
    AS65046, BIRD,          (same)                 (same)                 dots-gateway run
    dots-gateway run                                                      (terminal mode: the
    (gateway mode)                                                        upstream DOTS server)
    anycast 192.0.2.46/32 and 2001:db8::4646/128 on each edge

The edges follow the anycast lab (``tests/lab/anycast_lab.py``, measured in
/work/shared/docs/anycast-lab.md): each gateway holds the anycast addresses on an ``ifb``
link and announces them through kernel table 46, which the edge's BIRD learns with the
shipped ``deploy/bird/dots-anycast.conf`` and exports to the router; the router prefers the
lowest router id (edge1, then edge2, then edge3). Every edge redirects clients that arrive
on anycast to its own unicast name and drains to the next edge (``[[redirect.pool]]``).

Edges relay to the provider with a PSK of their own (the dev PKI's), which the provider
authorizes with ``allow_any_cuid`` (a gateway relays its clients' cuids). Everything lives in
``Lab.dir`` and in ``dgd<pid>-`` namespaces, removed by ``Lab.close()``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.demo.netns import Lab, ip

REPO = Path(__file__).resolve().parents[2]
BIRD_SNIPPET = REPO / "deploy" / "bird" / "dots-anycast.conf"
V4, V6 = "192.0.2.46", "2001:db8::4646"
PORT = 4646
CLIENT_V4, CLIENT_V6 = "10.46.9.2", "fd00:46:9::2"
ROUTER_LAN_V4, ROUTER_LAN_V6 = "10.46.9.1", "fd00:46:9::1"
PROVIDER_V4, PROVIDER_ROUTER_V4 = "10.46.8.2", "10.46.8.1"
#: The DOTS service name the DHCP server gives (RFC 8973 option 147): the reference
#: identifier the client checks the anycast servers' certificate against.
SERVICE_NAME = "dots.example.net"
PROVIDER_NAME = "dots-provider.example.net"
#: What the enterprise may ask to protect (a documentation prefix).
PROTECTED = "203.0.113.0/24"
#: Redirect TTL: long enough that no return to anycast happens during the demo.
REDIRECT_TTL = 3600
#: How long a drained edge keeps serving after it withdrew (anycast.grace).
GRACE = 2.0


@dataclass(frozen=True)
class Edge:
    name: str
    router_v4: str
    v4: str
    router_v6: str
    v6: str

    @property
    def unicast_name(self) -> str:
        return f"dots-{self.name}.example.net"


EDGES = {e.name: e for e in (
    Edge("edge1", "10.46.1.1", "10.46.1.2", "fd00:46:1::1", "fd00:46:1::2"),
    Edge("edge2", "10.46.2.1", "10.46.2.2", "fd00:46:2::1", "fd00:46:2::2"),
    Edge("edge3", "10.46.3.1", "10.46.3.2", "fd00:46:3::1", "fd00:46:3::2"),
)}


def next_edge(name: str) -> Edge:
    """Where ``name`` drains to: the next edge in the ring."""
    names = list(EDGES)
    return EDGES[names[(names.index(name) + 1) % len(names)]]


BGP_TIMERS = """\
  connect delay time 1; connect retry time 2; error wait time 1, 5;
  hold time 6; keepalive time 2;"""

EDGE_BIRD = """\
router id {e.v4};
log stderr all;
protocol device {{ }}
include "{snippet}";
template bgp up {{
  local as 65046;
{timers}
}}
protocol bgp up4 from up {{ neighbor {e.router_v4} as 65000;
  ipv4 {{ import none; export where proto = "dots_anycast4"; }}; }}
protocol bgp up6 from up {{ neighbor {e.router_v6} as 65000;
  ipv6 {{ import none; export where proto = "dots_anycast6"; }}; }}
"""

ROUTER_BIRD_HEAD = """\
router id 10.46.9.1;
log stderr all;
protocol device { }
protocol kernel { ipv4 { export all; }; }
protocol kernel { ipv6 { export all; }; }
template bgp edge {
  local as 65000;
@TIMERS@
}
""".replace("@TIMERS@", BGP_TIMERS)

ROUTER_BIRD_EDGE = """\
protocol bgp {n}v4 from edge {{ neighbor {e.v4} as 65046; ipv4 {{ import all; export none; }}; }}
protocol bgp {n}v6 from edge {{ neighbor {e.v6} as 65046; ipv6 {{ import all; export none; }}; }}
"""


def last_line(text: str) -> str:
    """The last non-empty line of a log: what a daemon said last (often why it stopped)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def missing_tools() -> list[str]:
    """The programs the demo needs that are not installed (with their Debian package)."""
    needed = {"ip": "iproute2", "bird": "bird2", "birdc": "bird2", "dnsmasq": "dnsmasq-base"}
    return [f"{tool} ({package})" for tool, package in needed.items()
            if shutil.which(tool) is None]


def _toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


class Network:
    """The demo's namespaces and daemons (see the module docstring). Every wait is bounded."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.ns: dict[str, str] = {}
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self.birds: dict[str, subprocess.Popen[bytes]] = {}
        self.pki = lab.dir / "pki"
        self.client_cuid = ""
        self.psk: dict[str, str] = {}
        #: Daemons stopped on purpose (a wait does not take their exit for a failure).
        self.stopped: set[str] = set()

    # --- links and addresses -----------------------------------------------------------------

    def build(self) -> None:
        lab = self.lab
        for name in ("router", "client", "provider", *EDGES):
            self.ns[name] = lab.namespace(name)
        router = self.ns["router"]
        lab.veth(router, "lan", self.ns["client"], "uplink")
        lab.address(router, "lan", f"{ROUTER_LAN_V4}/24")
        lab.address(router, "lan", f"{ROUTER_LAN_V6}/64")
        lab.address(self.ns["client"], "uplink", f"{CLIENT_V4}/24")
        lab.address(self.ns["client"], "uplink", f"{CLIENT_V6}/64")
        self._default_routes("client", ROUTER_LAN_V4, ROUTER_LAN_V6)
        lab.veth(router, "to-provider", self.ns["provider"], "uplink")
        lab.address(router, "to-provider", f"{PROVIDER_ROUTER_V4}/24")
        lab.address(self.ns["provider"], "uplink", f"{PROVIDER_V4}/24")
        lab.run(self.ns["provider"], "ip", "route", "add", "default", "via", PROVIDER_ROUTER_V4)
        for edge in EDGES.values():
            lab.veth(router, f"to-{edge.name}", self.ns[edge.name], "uplink")
            lab.address(router, f"to-{edge.name}", f"{edge.router_v4}/30")
            lab.address(router, f"to-{edge.name}", f"{edge.router_v6}/64")
            lab.address(self.ns[edge.name], "uplink", f"{edge.v4}/30")
            lab.address(self.ns[edge.name], "uplink", f"{edge.v6}/64")
            self._default_routes(edge.name, edge.router_v4, edge.router_v6)
        lab.sysctl(router, "net.ipv4.ip_forward", "1")
        lab.sysctl(router, "net.ipv6.conf.all.forwarding", "1")

    def _default_routes(self, node: str, v4: str, v6: str) -> None:
        self.lab.run(self.ns[node], "ip", "route", "add", "default", "via", v4)
        self.lab.run(self.ns[node], "ip", "-6", "route", "add", "default", "via", v6)

    # --- credentials -------------------------------------------------------------------------

    def init_pki(self) -> None:
        """One dev PKI: the server certificate names the service, every edge's unicast name
        and the provider (one certificate for all, as a demo may); the client certificate is
        the enterprise's; its PSK is the edges' credential towards the provider."""
        names = [SERVICE_NAME, PROVIDER_NAME, *(e.unicast_name for e in EDGES.values())]
        addresses = [V4, V6, PROVIDER_V4, *(a for e in EDGES.values() for a in (e.v4, e.v6))]
        init_dev_pki(self.pki, hostnames=["localhost", *names], addresses=addresses)
        self.client_cuid = cuid_from_certificate((self.pki / "client.pem").read_bytes())
        self.psk = json.loads((self.pki / "psk.json").read_text())

    # --- BIRD --------------------------------------------------------------------------------

    def bird_socket(self, node: str) -> str:
        return str(self.lab.dir / f"{node}.ctl")

    def start_bird(self, node: str) -> None:
        conf = self.lab.dir / f"bird-{node}.conf"
        if node == "router":
            conf.write_text(ROUTER_BIRD_HEAD + "".join(
                ROUTER_BIRD_EDGE.format(n=e.name, e=e) for e in EDGES.values()))
        else:
            conf.write_text(EDGE_BIRD.format(e=EDGES[node], snippet=BIRD_SNIPPET,
                                             timers=BGP_TIMERS))
        self.birds[node] = self.lab.popen(
            self.ns[node], ["bird", "-f", "-c", str(conf), "-s", self.bird_socket(node)],
            f"bird-{node}.log")

    def established(self) -> int:
        """BGP sessions the router has up."""
        out = subprocess.run(["birdc", "-s", self.bird_socket("router"), "show", "protocols"],
                             capture_output=True, text=True, timeout=5).stdout
        return out.count("Established")

    def next_hop(self) -> str | None:
        """The edge the router forwards the IPv4 anycast address to (None: no route)."""
        out = ip("-n", self.ns["router"], "-4", "route", "show", V4, check=False).stdout
        for edge in EDGES.values():
            if f"via {edge.v4} " in out:
                return edge.name
        return None

    # --- DHCP --------------------------------------------------------------------------------

    def start_dnsmasq(self) -> None:
        """dnsmasq on the router's LAN side, with the DOTS options that ``dots-gateway
        dhcp-option`` writes for the service name and the anycast address (RFC 8973)."""
        options = self.run_cli("router", "dhcp-option", "--name", SERVICE_NAME,
                               "--address", V4, "--json")
        lines = [o["dnsmasq"] for o in json.loads(options.stdout) if o["family"] == 4]
        conf = self.lab.dir / "dnsmasq.conf"
        conf.write_text("port=0\nlog-dhcp\n"  # DHCP only: no DNS server
                        "dhcp-range=10.46.9.0,static,255.255.255.0\n"
                        + "".join(line + "\n" for line in lines))
        self.daemons["dnsmasq"] = self.lab.popen(self.ns["router"], [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", f"--conf-file={conf}",
            "--no-resolv", "--no-hosts", "--interface=lan", "--bind-interfaces",
            f"--pid-file={self.lab.dir / 'dnsmasq.pid'}", f"--dhcp-leasefile={self.lab.dir}/l",
        ], "dnsmasq.log")

    # --- DOTS daemons ------------------------------------------------------------------------

    def state_dir(self, node: str) -> Path:
        return self.lab.dir / node / "state"

    def config(self, node: str) -> Path:
        return self.lab.dir / node / "gateway.toml"

    def control_socket(self, node: str) -> Path:
        return self.state_dir(node) / "control.sock"

    def _common(self, node: str, addresses: list[str], general: str = "") -> str:
        return f"""\
[general]
state_dir = "{self.state_dir(node)}"
node_name = "{node}"
{general}[server]
addresses = {_toml_list(addresses)}
port = {PORT}
[tls]
ca = "{self.pki}/ca.pem"
cert = "{self.pki}/server.pem"
key = "{self.pki}/server.key"
"""

    def write_provider_config(self) -> None:
        """The upstream DOTS server: it knows the edges by their PSK and lets them relay
        their clients' cuids (``allow_any_cuid``)."""
        self.config("provider").parent.mkdir(parents=True, exist_ok=True)
        self.config("provider").write_text(self._common("provider", [PROVIDER_V4]) + f"""\
[[psk]]
identity = "{self.psk['identity']}"
key = "{self.psk['key']}"
[[clients]]
name = "anycast-edges"
psk_identity = "{self.psk['identity']}"
prefixes = ["{PROTECTED}"]
allow_any_cuid = true
""")

    def write_edge_config(self, name: str) -> None:
        edge, after = EDGES[name], next_edge(name)
        own = f'name = "{edge.unicast_name}"\naddresses = {_toml_list([edge.v4, edge.v6])}\n'
        self.config(name).parent.mkdir(parents=True, exist_ok=True)
        self.config(name).write_text(self._common(name, [V4, V6, edge.v4, edge.v6],
                                                         'mode = "gateway"\n') + f"""\
[anycast]
enabled = true
addresses = ["{V4}", "{V6}"]
interface = "anycast0"
interface_kind = "ifb"
table = 46
grace = {GRACE}
[anycast.health]
interval = 0.1
rise = 3
fall = 2
hold_down = 1.5
[redirect]
{own}ttl = {REDIRECT_TTL}
[[redirect.static]]
{own}prefixes = ["10.46.9.0/24", "fd00:46:9::/64"]
[[redirect.pool]]
name = "{after.unicast_name}"
addresses = {_toml_list([after.v4, after.v6])}
[[clients]]
name = "enterprise"
cuid = "{self.client_cuid}"
prefixes = ["{PROTECTED}"]
[[upstream]]
name = "provider"
address = "{PROVIDER_V4}"
reference_identifier = "{PROVIDER_NAME}"
transport = "tcp"
[gateway]
request_timeout = 5
psk_identity = "{self.psk['identity']}"
psk_key_hex = "{self.psk['key'].encode().hex()}"
""")

    def start_daemon(self, node: str) -> None:
        self.daemons[node] = self.lab.popen(
            self.ns[node], [sys.executable, "-m", "gateway.cli", "run", "--config",
                            str(self.config(node))], f"{node}.log")

    def log(self, node: str) -> str:
        return self.lab.log(f"{node}.log")

    def run_cli(self, node: str, *args: str, timeout: float = 20.0,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """``dots-gateway ARGS`` in ``node``'s namespace (this checkout's code)."""
        return self.lab.run(self.ns[node], sys.executable, "-m", "gateway.cli", *args,
                            timeout=timeout, check=check)

    # --- waits -------------------------------------------------------------------------------

    def wait(self, condition: Any, timeout: float, what: str, interval: float = 0.05) -> float:
        """Seconds until ``condition()`` holds; TimeoutError naming ``what`` after
        ``timeout``."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            for name, process in self.daemons.items():
                if process.poll() is not None and name not in self.stopped:
                    raise RuntimeError(f"{name} exited with {process.returncode}: "
                                       f"{last_line(self.log(name))} ({name}.log)")
            time.sleep(interval)
        return time.monotonic() - started

    def wait_serving(self, node: str, timeout: float) -> float:
        return self.wait(lambda: "dots-gateway serving" in self.log(node), timeout,
                         f"{node} serving")
