"""The demo's pure parts: the timeline's lines, the picture from a made-up run, what a
daemon's status answer says about the client, and the refusal without root."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import pytest

from gateway.demo import story
from gateway.demo.picture import _spans, draw
from gateway.demo.timeline import Sample, Step, Timeline, daemon_view
from gateway.demo.topology import EDGES, next_edge


def test_step_line_has_time_offset_name_and_text() -> None:
    line = Step(12.34, 1_765_000_000.5, "failover", "the client re-established").line()
    assert line == "05:46:40.500  + 12.3s  failover   the client re-established"


def test_spans_are_runs_of_true_samples() -> None:
    times = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert _spans(times, [False, True, True, False, True, True]) == [(0.25, 0.5), (1.0, 0.25)]
    assert _spans(times, [False] * 6) == []


def test_edges_drain_to_the_next_in_a_ring() -> None:
    assert [next_edge(e).name for e in EDGES] == ["edge2", "edge3", "edge1"]


def test_picture_from_a_made_up_run_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    timeline = Timeline(io.StringIO())
    for i in range(40):
        at = i * 0.25
        edge = "edge1" if at < 5 else "edge2"
        timeline.samples.append(Sample(
            at, edge if at > 1 else None,
            {e: ("anycast" if at < 2 else "unicast") if e == edge else None for e in EDGES},
            {"provider": int(at > 3), "edge1": int(3 < at < 5)}))
    timeline.steps += [Step(2.0, 0.0, "redirect", ""), Step(5.0, 0.0, "failure", ""),
                       Step(5.1, 0.0, "failure", ""), Step(8.0, 0.0, "drain", "")]
    draw(timeline, list(EDGES), tmp_path / "t.png")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _serve_once(path: Path, answer: dict[str, object], ready: threading.Event) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
            writer.close()
            done.set()

        done = asyncio.Event()
        server = await asyncio.start_unix_server(handle, str(path))
        ready.set()
        await asyncio.wait_for(done.wait(), 10)
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize(("peer", "anycast", "where"), [
    ("10.46.9.2:40000", True, "anycast"),
    ("[fd00:46:9::2]:40000", False, "unicast"),
    ("10.46.9.3:40000", False, None),
])
def test_daemon_view_finds_the_client_by_address(tmp_path: Path, peer: str, anycast: bool,
                                                 where: str | None) -> None:
    answer = {"ok": True, "result": {
        "sessions": {"count": 2, "list": [
            {"side": "downstream", "peer": peer, "anycast": anycast},
            {"side": "upstream", "peer": "10.46.8.2:4646"}]},
        "mitigations": {"count": 3, "active": 1, "list": []}}}
    ready = threading.Event()
    socket = tmp_path / "c.sock"
    thread = threading.Thread(target=_serve_once, args=(socket, answer, ready))
    thread.start()
    assert ready.wait(10)
    try:
        view = daemon_view(socket, ("10.46.9.2", "fd00:46:9::2"), active=anycast)
    finally:
        thread.join(15)
    assert view == (where, 1 if anycast else 3)


def test_daemon_view_of_a_daemon_that_is_gone(tmp_path: Path) -> None:
    assert daemon_view(tmp_path / "none.sock", ("10.46.9.2",)) is None


def test_without_root_the_demo_says_why_and_changes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(story.os, "geteuid", lambda: 1000)
    assert story.run(tmp_path / "out") == 1
    assert capsys.readouterr().err == ("dots-gateway demo: root needed (network "
                                       "namespaces)\n")
    assert not (tmp_path / "out").exists()


def test_missing_programs_are_named_with_their_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(story, "missing_tools", lambda: ["bird (bird2)"])
    assert story.run(tmp_path / "out") == 1
    assert capsys.readouterr().err == ("dots-gateway demo: missing bird (bird2) (`make demo` "
                                       "installs them)\n")
