"""RFC 9133 filter control end to end: our client over DTLS against the real server, the ACLs
reaching the ``log`` and ``command`` mitigator backends, the acl-list surviving a restart,
``dots-client mitigate --acl`` and ``get`` as subprocesses, and a server without a data
channel refusing an ACL name with 4.04.

The ACLs stand where the data channel (RFC 8783) would put them: a ``MemoryAclCatalog``
handed to ``start_server`` (the daemon runs in this process; everything else is real).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certs.devpki import init_dev_pki
from certs.identity import cuid_from_certificate
from gateway.client.role import DotsClient, make_scope
from gateway.config import parse_config
from gateway.daemon import RunningServer, start_server
from gateway.dots.codes import Code
from gateway.dots.filters import AclActivation, MemoryAclCatalog, acl_list_of
from gateway.server.mitigator import JOURNAL_NAME
from tests.integration.test_client_role import FAST, cert_credentials, free_port
from tests.support.daemon import serving
from tests.unit.dots.test_filters import ACCEPT_LIST, RATE_LIMIT

DOTS_CLIENT = Path(sys.executable).parent / "dots-client"
ACL_KEY = "ietf-dots-signal-control:acl-list"


def settings_for(tmp_path: Path, pki: Path, port: int, mitigation: str = "") -> Any:
    return parse_config(config_text(tmp_path, pki, port, mitigation))


def config_text(tmp_path: Path, pki: Path, port: int, mitigation: str = "") -> str:
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    return (
        f'[general]\nstate_dir = "{tmp_path}/state"\n[logging]\nlevel = "warning"\n'
        f'[server]\naddresses = ["127.0.0.1"]\nport = {port}\ntransports = ["udp"]\n'
        f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/server.pem"\nkey = "{pki}/server.key"\n'
        f'[mitigation]\nactive_but_terminating = 0\nactive_but_terminating_max = 0\n'
        f'{mitigation}'
        f'[[clients]]\nname = "site-a"\ncuid = "{cuid}"\nprefixes = ["192.0.2.0/24"]\n')


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    init_dev_pki(directory)
    return directory


def catalog_for(pki: Path) -> MemoryAclCatalog:
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    catalog = MemoryAclCatalog()
    catalog.add(cuid, ACCEPT_LIST)
    catalog.add(cuid, RATE_LIMIT)
    return catalog


@contextlib.asynccontextmanager
async def client_to(pki: Path, port: int, state: Path) -> AsyncIterator[DotsClient]:
    async with DotsClient(cert_credentials(pki), f"coaps://127.0.0.1:{port}",
                          state_dir=state, request_timeout=15, preferred_idle=FAST,
                          preferred_mitigating=FAST) as client:
        yield client


def journal(running_or_dir: RunningServer | Path) -> list[dict[str, Any]]:
    path = (running_or_dir if isinstance(running_or_dir, Path) else
            Path(str(running_or_dir.database.path)).parent) / JOURNAL_NAME
    return [json.loads(line) for line in path.read_text().splitlines()]


def acl_names(entry: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["name"], a["activation-type"]) for a in entry["acls"]]


async def settle(predicate: Any, timeout: float = 10.0) -> None:
    """Wait (bounded) for what the server does after its answer (the mitigator command)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_activate_change_withdraw_with_the_log_backend_and_a_restart(
        tmp_path: Path, pki: Path) -> None:
    port = free_port()
    settings = settings_for(tmp_path, pki, port)
    catalog = catalog_for(pki)
    cuid = cuid_from_certificate((pki / "client.pem").read_bytes())
    state = tmp_path / "state"
    running = await start_server(settings, acl_catalog=catalog)
    try:
        async with client_to(pki, port, tmp_path / "client") as client:
            created = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600,
                acl_list=["my-accept-list:immediate"]), mid=1)
            assert created.code is Code.CREATED, created
            got = await client.get(1)
            assert acl_list_of(got.scopes[0]) == (AclActivation("my-accept-list", "immediate"),)
            observation = await client.observe(1)
            # During the mitigation: deactivate one ACL, activate another (RFC 9133 §3.2).
            changed = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600,
                acl_list=["my-accept-list:deactivate", "rate-limit-udp:immediate"]), mid=1)
            assert changed.code is Code.CHANGED, changed
            # Observers are notified of the new acl-list.
            for _ in range(5):
                note = await observation.next(timeout=10)
                assert note.code is Code.CONTENT and note.observe is not None
                if len(acl_list_of(note.scopes[0]) or ()) == 2:
                    break
            else:
                raise AssertionError("no notification with the new acl-list")
            await observation.cancel()
            got = await client.get(1)
            assert acl_list_of(got.scopes[0]) == (
                AclActivation("my-accept-list", "deactivate"),
                AclActivation("rate-limit-udp", "immediate"))
            unknown = await client.mitigate(make_scope(
                target_prefix=["192.0.2.64/26"], lifetime=600, acl_list=["no-such-acl"]), mid=2)
            assert unknown.code is Code.NOT_FOUND, unknown
            assert "no ACL named 'no-such-acl'" in unknown.diagnostic
        await settle(lambda: len(journal(state)) >= 2)
    finally:
        await running.stop()
    assert catalog.lookup(cuid, "my-accept-list")["activation-type"] == "deactivate"
    assert catalog.lookup(cuid, "rate-limit-udp")["activation-type"] == "immediate"
    apply, update = journal(state)
    assert apply["action"] == "apply" and acl_names(apply) == [("my-accept-list", "immediate")]
    assert apply["acls"][0]["aces"] == ACCEPT_LIST["aces"]  # the full ACL, from the catalog
    assert apply["scope"][ACL_KEY] == [{"acl-name": "my-accept-list",
                                        "activation-type": "immediate"}]
    assert update["action"] == "update"
    assert acl_names(update) == [("rate-limit-udp", "immediate")]
    assert update["deactivated-acls"] == ["my-accept-list"]

    # Restart: the acl-list was stored with the mitigation; the re-apply carries the ACLs.
    running = await start_server(settings, acl_catalog=catalog)
    try:
        async with client_to(pki, port, tmp_path / "client") as client:
            got = await client.get(1)
            assert got.code is Code.CONTENT, got
            assert acl_list_of(got.scopes[0]) == (
                AclActivation("my-accept-list", "deactivate"),
                AclActivation("rate-limit-udp", "immediate"))
            await settle(lambda: len(journal(state)) >= 3)
            withdrawn = await client.withdraw(1)
            assert withdrawn.code is Code.DELETED, withdrawn
            await settle(lambda: len(journal(state)) >= 4)
    finally:
        await running.stop()
    reapply, withdraw = journal(state)[2:]
    assert reapply["action"] == "apply" and acl_names(reapply) == [("rate-limit-udp",
                                                                    "immediate")]
    assert withdraw["action"] == "withdraw" and acl_names(withdraw) == [("rate-limit-udp",
                                                                        "immediate")]


RECORDER = """
    import json, sys
    command = json.loads(sys.stdin.read())
    with open({seen!r}, "a") as seen:
        seen.write(json.dumps(command) + "\\n")
"""


async def test_command_backend_gets_the_active_acls(tmp_path: Path, pki: Path) -> None:
    seen = tmp_path / "seen.jsonl"
    script = tmp_path / "mitigate.py"
    script.write_text(textwrap.dedent(RECORDER.format(seen=str(seen))))
    port = free_port()
    settings = settings_for(tmp_path, pki, port, f'backend = "command"\n'
                            f'command = "{sys.executable} {script}"\n')
    running = await start_server(settings, acl_catalog=catalog_for(pki))

    def commands() -> list[dict[str, Any]]:
        return ([json.loads(line) for line in seen.read_text().splitlines()]
                if seen.exists() else [])

    try:
        async with client_to(pki, port, tmp_path / "client") as client:
            scope = make_scope(target_prefix=["192.0.2.0/26"], lifetime=600,
                               acl_list=["rate-limit-udp"])
            assert (await client.mitigate(scope, mid=5)).code is Code.CREATED
            await settle(lambda: len(commands()) >= 1)
            scope = make_scope(target_prefix=["192.0.2.0/26"], lifetime=600,
                               acl_list=["rate-limit-udp:deactivate"])
            assert (await client.mitigate(scope, mid=5)).code is Code.CHANGED
            await settle(lambda: len(commands()) >= 2)
            assert (await client.withdraw(5)).code is Code.DELETED
            await settle(lambda: len(commands()) >= 3)
    finally:
        await running.stop()
    apply, update, withdraw = commands()
    assert apply["action"] == "apply"
    # The client's other 'activate-when-mitigating' ACL comes along (RFC 8783 §7.1).
    assert acl_names(apply) == [("rate-limit-udp", "activate-when-mitigating"),
                                ("my-accept-list", "activate-when-mitigating")]
    assert apply["acls"][0]["aces"] == RATE_LIMIT["aces"]
    assert update["action"] == "update"
    assert acl_names(update) == [("my-accept-list", "activate-when-mitigating")]
    assert update["deactivated-acls"] == ["rate-limit-udp"]
    assert withdraw["action"] == "withdraw"
    assert acl_names(withdraw) == [("my-accept-list", "activate-when-mitigating")]


async def dots_client(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(DOTS_CLIENT), *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def documents(text: str) -> list[dict[str, Any]]:
    decoder, out, pos = json.JSONDecoder(), [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        doc, pos = decoder.raw_decode(text, pos)
        out.append(doc)
    return out


def body_scope(doc: dict[str, Any], part: str) -> dict[str, Any]:
    scope: dict[str, Any] = doc[part]["body"]["ietf-dots-signal-channel:mitigation-scope"][
        "scope"][0]
    return scope


async def test_dots_client_acl_option_and_get_answer(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    running = await start_server(settings_for(tmp_path, pki, port),
                                 acl_catalog=catalog_for(pki))
    state = tmp_path / "client-state"
    shutil.copytree(pki, state / "pki")
    common = ["--server", f"coaps://127.0.0.1:{port}", "--state-dir", str(state)]
    try:
        code, out, err = await dots_client(*common, "mitigate", "--target-prefix",
                                           "192.0.2.0/28", "--lifetime", "600", "--acl",
                                           "my-accept-list:immediate", "rate-limit-udp")
        assert code == 0, err
        (created,) = documents(out)
        assert body_scope(created, "request")[ACL_KEY] == [
            {"acl-name": "my-accept-list", "activation-type": "immediate"},
            {"acl-name": "rate-limit-udp", "activation-type": "activate-when-mitigating"}]
        code, out, err = await dots_client(*common, "get", "--mid", str(created["mid"]))
        assert code == 0, err
        (got,) = documents(out)
        assert body_scope(got, "response")[ACL_KEY] == [
            {"acl-name": "my-accept-list", "activation-type": "immediate"},
            {"acl-name": "rate-limit-udp", "activation-type": "activate-when-mitigating"}]
        code, out, err = await dots_client(*common, "mitigate", "--target-prefix",
                                           "192.0.2.16/28", "--acl", "unknown-acl")
        assert code == 3, (out, err)
        assert "4.04" in err and "no ACL named 'unknown-acl'" in err
    finally:
        await running.stop()


async def test_without_a_data_channel_an_acl_name_is_4_04_and_an_empty_list_is_kept(
        tmp_path: Path, pki: Path) -> None:
    """The daemon as started without a catalog (no data channel configured)."""
    port = free_port()
    running = await start_server(settings_for(tmp_path, pki, port))
    try:
        async with client_to(pki, port, tmp_path / "client") as client:
            refused = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600, acl_list=["my-accept-list"]),
                mid=1)
            assert refused.code is Code.NOT_FOUND, refused
            assert "this server has no data channel (RFC 8783)" in refused.diagnostic
            empty = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600, acl_list=[]), mid=2)
            assert empty.code is Code.CREATED, empty
            got = await client.get(2)
            assert acl_list_of(got.scopes[0]) == ()
    finally:
        await running.stop()


async def test_daemon_process_without_data_channel(tmp_path: Path, pki: Path) -> None:
    """``dots-gateway server`` as a process (no data channel configured) and ``dots-client``
    as a process: an ACL name is refused with 4.04 saying why; an empty acl-list is kept,
    and the GET answer that carries it decodes and prints."""
    port = free_port()
    config = tmp_path / "server.toml"
    config.write_text(config_text(tmp_path, pki, port))
    state = tmp_path / "client-state"
    shutil.copytree(pki, state / "pki")
    common = ["--server", f"coaps://127.0.0.1:{port}", "--state-dir", str(state)]
    with serving("server", config, tmp_path / "server.log"):
        code, out, err = await dots_client(*common, "mitigate", "--target-prefix",
                                           "192.0.2.0/28", "--acl", "my-accept-list")
        assert code == 3, (out, err)
        assert "4.04" in err and "this server has no data channel (RFC 8783)" in err
        async with client_to(pki, port, tmp_path / "client") as client:
            empty = await client.mitigate(make_scope(
                target_prefix=["192.0.2.0/26"], lifetime=600, acl_list=[]), mid=40)
            assert empty.code is Code.CREATED, empty
        code, out, err = await dots_client(*common, "get", "--mid", "40")
        assert code == 0, err
        (got,) = documents(out)
        assert body_scope(got, "response")[ACL_KEY] == []
