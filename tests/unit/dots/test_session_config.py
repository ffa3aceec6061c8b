"""Session configuration negotiation (RFC 9132 §4.5), both sides."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway.dots.codes import MAX_AGE_INFINITE
from gateway.dots.errors import DotsUsageError, InvalidValue, NotFound, UnacceptableConfig
from gateway.dots.model import ConfigSet, ConfigValue, SignalConfig
from gateway.dots.session_config import (
    ClientSessionConfig,
    ConfigLimits,
    Limit,
    ServerSessionConfig,
    SessionParameters,
)


def put_body(**values: object) -> SignalConfig:
    return SignalConfig(mitigating_config=ConfigSet(
        **{k: ConfigValue(v) for k, v in values.items()}))  # type: ignore[arg-type]


def test_get_offers_limits_and_defaults_like_figure_20() -> None:
    config = ServerSessionConfig().get(None)
    assert config.mitigating_config is not None
    hb = config.mitigating_config.heartbeat_interval
    assert hb == ConfigValue(30, 15, 240)
    assert config.mitigating_config.ack_timeout == ConfigValue(
        Decimal("2.00"), Decimal("1.00"), Decimal("30.00"))
    assert config.mitigating_config.missing_hb_allowed == ConfigValue(15, 3, 20)


def test_put_new_sid_is_created_then_changed_and_values_apply() -> None:
    server = ServerSessionConfig()
    assert server.put(123, put_body(heartbeat_interval=60)) is True
    assert server.put(123, put_body(heartbeat_interval=90)) is False
    assert server.parameters(mitigating=True).heartbeat_interval == 90
    assert server.parameters(mitigating=False).heartbeat_interval == 30  # idle untouched
    negotiated = server.get(123)
    assert negotiated.mitigating_config is not None
    assert negotiated.mitigating_config.heartbeat_interval == ConfigValue(90)  # no bounds


def test_higher_sid_replaces_lower_and_unsent_values_return_to_defaults() -> None:
    server = ServerSessionConfig()
    server.put(1, put_body(heartbeat_interval=60, probing_rate=10))
    server.put(2, put_body(heartbeat_interval=45))
    params = server.parameters(mitigating=True)
    assert (params.heartbeat_interval, params.probing_rate) == (45, 5)
    with pytest.raises(NotFound):
        server.get(1)  # §4.5.2: the lower sid is deleted
    with pytest.raises(InvalidValue, match="lower than the installed sid 2"):
        server.put(1, put_body(heartbeat_interval=60))


def test_out_of_range_values_are_4_22_listing_each_and_change_nothing() -> None:
    server = ServerSessionConfig()
    with pytest.raises(UnacceptableConfig) as info:
        server.put(7, put_body(heartbeat_interval=5, ack_timeout=Decimal("60.00")))
    assert info.value.code.dotted == "4.22"
    assert "heartbeat-interval 5 is outside 15-240" in info.value.diagnostic
    assert "ack-timeout 60.00 is outside 1.00-30.00" in info.value.diagnostic
    assert server.sid is None
    assert server.parameters(mitigating=True) == SessionParameters()


def test_wrong_value_type_is_4_00() -> None:
    with pytest.raises(InvalidValue, match="wrong value type"):
        ServerSessionConfig().put(1, put_body(ack_timeout=2))


def test_idle_heartbeat_can_be_disabled_when_limits_allow_0() -> None:
    idle = ConfigLimits(heartbeat_interval=Limit(0, 240, 30))
    server = ServerSessionConfig(idle=idle)
    body = SignalConfig(idle_config=ConfigSet(heartbeat_interval=ConfigValue(0)))
    server.put(1, body)
    assert server.parameters(mitigating=False).heartbeat_interval == 0
    with pytest.raises(UnacceptableConfig):
        server.put(2, put_body(heartbeat_interval=0))  # mitigating limits keep min 15


def test_delete_resets_to_defaults() -> None:
    server = ServerSessionConfig()
    server.put(1, put_body(heartbeat_interval=60))
    server.delete()
    assert server.sid is None
    assert server.parameters(mitigating=True).heartbeat_interval == 30
    assert server.put(0, put_body(heartbeat_interval=60))  # any sid after a reset


def test_reliable_transport_negotiates_only_interval_and_rate() -> None:
    server = ServerSessionConfig(reliable=True)
    offered = server.get(None).mitigating_config
    assert offered is not None
    assert [name for name, _ in offered.items()] == ["heartbeat_interval", "probing_rate"]
    server.put(1, put_body(heartbeat_interval=60, max_retransmit=99))  # ignored, not 4.22
    assert server.parameters(mitigating=True).missing_hb_allowed == 1


def test_limit_rejects_inconsistent_bounds() -> None:
    with pytest.raises(DotsUsageError):
        Limit(10, 5, 7)


def test_client_clamps_preferences_into_offered_bounds_and_adopts() -> None:
    client = ClientSessionConfig(SessionParameters(heartbeat_interval=5, probing_rate=50))
    offered = ServerSessionConfig().get(None)
    proposal = client.proposal(offered)
    assert proposal.mitigating_config is not None
    assert proposal.mitigating_config.heartbeat_interval == ConfigValue(15)
    assert proposal.mitigating_config.probing_rate == ConfigValue(20)
    assert client.allocate_sid() == 0 and client.allocate_sid() == 1
    client.adopt(proposal, max_age=100, now=1000.0)
    assert client.current[True].heartbeat_interval == 15
    assert not client.refresh_due(1099.0, under_attack=False)
    assert client.refresh_due(1100.0, under_attack=False)
    assert not client.refresh_due(1100.0, under_attack=True)  # §4.5.3


def test_client_refresh_defaults_to_60_s_and_infinite_never() -> None:
    client = ClientSessionConfig()
    client.adopt(SignalConfig(), max_age=None, now=0.0)
    assert client.refresh_at == 60
    client.adopt(SignalConfig(), max_age=MAX_AGE_INFINITE, now=0.0)
    assert client.refresh_at is None


def test_sessions_share_their_defaults_until_one_negotiates() -> None:
    # Defaults are built once for all sessions with the same limits (tens of thousands of
    # sessions); a session's PUT replaces its own sets and no one else's.
    limits = ConfigLimits()
    first, second = ServerSessionConfig(limits, limits), ServerSessionConfig(limits, limits)
    assert first.parameters(True) is second.parameters(True)
    first.put(1, put_body(heartbeat_interval=60))
    assert first.parameters(True).heartbeat_interval == 60
    assert second.parameters(True).heartbeat_interval == 30
    assert ServerSessionConfig(limits, limits).parameters(True).heartbeat_interval == 30
    with pytest.raises(TypeError):
        second.limits[True] = ConfigLimits()  # type: ignore[index]
