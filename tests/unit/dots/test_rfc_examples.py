"""The signal-channel bodies of RFC 9132's examples (Figures 7-27) and the byte vectors of
docs/dots-reference.md §2.5, through every codec direction.

Each JSON figure is parsed, encoded to CBOR, decoded back, and rendered as JSON again; the
typed messages must be equal and the JSON must be the figure (compared after ``json.loads``,
so key order and whitespace do not matter). Figure 8 gives the exact CBOR of Figure 7.
"""

from __future__ import annotations

import ipaddress
import json
from decimal import Decimal

import cbor2
import pytest

from gateway.dots.codec import (
    cbor_to_json,
    decode_message,
    encode_message,
    json_to_cbor,
    message_from_json,
    message_to_json,
)
from gateway.dots.codes import AttackStatus, Code, ConflictCause, Status
from gateway.dots.errors import MalformedPayload
from gateway.dots.model import (
    ConfigValue,
    ConflictInformation,
    Heartbeat,
    MitigationScope,
    PortRange,
    RedirectedSignal,
    Scope,
    SignalConfig,
)
from gateway.dots.validate import (
    validate_config_request,
    validate_heartbeat,
    validate_mitigation_request,
)

# --- the figures, verbatim from RFC 9132 ------------------------------------------------------

FIGURE_7 = """
{
  "ietf-dots-signal-channel:mitigation-scope": {
    "scope": [
      {
        "target-prefix": [
           "2001:db8:6401::1/128",
           "2001:db8:6401::2/128"
         ],
        "target-port-range": [
          {
            "lower-port": 80
          },
          {
            "lower-port": 443
          },
          {
             "lower-port": 8080
          }
         ],
         "target-protocol": [
           6
         ],
        "lifetime": 3600
      }
    ]
  }
}
"""

# Figure 8, with the comments of the figure stripped.
FIGURE_8 = bytes.fromhex(
    "A1"  # map(1)
    "01"  # mitigation-scope
    "A1"  # map(1)
    "02"  # scope
    "81"  # array(1)
    "A4"  # map(4)
    "06"  # target-prefix
    "82"
    "74"
    "323030313A6462383A363430313A3A312F313238"
    "74"
    "323030313A6462383A363430313A3A322F313238"
    "07"  # target-port-range
    "83"
    "A1"
    "08"
    "1850"
    "A1"
    "08"
    "1901BB"
    "A1"
    "08"
    "191F90"
    "0A"  # target-protocol
    "81"
    "06"
    "0E"  # lifetime
    "190E10"
)

FIGURE_10 = """
{
  "ietf-dots-signal-channel:mitigation-scope": {
     "scope": [
        {
          "mid": 123,
          "lifetime": 3600
        }
      ]
   }
}
"""

FIGURE_11 = """
{
  "ietf-dots-signal-channel:mitigation-scope": {
     "scope": [
        {
          "conflict-information": {
            "conflict-cause": "cuid-collision"
           }
        }
      ]
   }
}
"""

FIGURE_14 = """
{
  "ietf-dots-signal-channel:mitigation-scope": {
    "scope": [
      {
        "mid": 12332,
        "mitigation-start": "1507818434",
        "target-prefix": [
             "2001:db8:6401::1/128",
             "2001:db8:6401::2/128"
        ],
        "target-protocol": [
          17
        ],
        "lifetime": 1756,
        "status": "attack-successfully-mitigated",
        "bytes-dropped": "134334555",
        "bps-dropped": "43344",
        "pkts-dropped": "333334444",
        "pps-dropped": "432432"
      },
      {
        "mid": 12333,
        "mitigation-start": "1507818393",
        "target-prefix": [
             "2001:db8:6401::1/128",
             "2001:db8:6401::2/128"
        ],
        "target-protocol": [
          6
        ],
        "lifetime": 1755,
        "status": "attack-stopped",
        "bytes-dropped": "0",
        "bps-dropped": "0",
        "pkts-dropped": "0",
        "pps-dropped": "0"
      }
    ]
  }
}
"""

FIGURE_16 = """
{
 "ietf-dots-signal-channel:mitigation-scope": {
   "scope": [
     {
       "target-prefix": [
          "2001:db8:6401::1/128",
          "2001:db8:6401::2/128"
        ],
       "target-port-range": [
         {
           "lower-port": 80
         },
         {
           "lower-port": 443
         },
         {
            "lower-port": 8080
         }
       ],
       "target-protocol": [
          6
       ],
       "attack-status": "under-attack"
     }
   ]
 }
}
"""

_FIGURE_20_SET = """
    "heartbeat-interval": {
      "max-value": 240,
      "min-value": 15,
      "current-value": 30
    },
    "missing-hb-allowed": {
      "max-value": 20,
      "min-value": 3,
      "current-value": 15
    },
    "probing-rate": {
      "max-value": 20,
      "min-value": 5,
      "current-value": 15
    },
    "max-retransmit": {
      "max-value": 15,
      "min-value": 2,
      "current-value": 3
    },
    "ack-timeout": {
      "max-value-decimal": "30.00",
      "min-value-decimal": "1.00",
      "current-value-decimal": "2.00"
    },
    "ack-random-factor": {
      "max-value-decimal": "4.00",
      "min-value-decimal": "1.10",
      "current-value-decimal": "1.50"
    }
"""
# The figure repeats the same set for mitigating-config and idle-config.
FIGURE_20 = (
    '{"ietf-dots-signal-channel:signal-config": {'
    f'"mitigating-config": {{{_FIGURE_20_SET}}}, "idle-config": {{{_FIGURE_20_SET}}}'
    "}}"
)

FIGURE_23 = """
{
  "ietf-dots-signal-channel:signal-config": {
    "mitigating-config": {
      "heartbeat-interval": {
        "current-value": 30
      },
      "missing-hb-allowed": {
        "current-value": 15
      },
      "probing-rate": {
        "current-value": 15
      },
      "max-retransmit": {
        "current-value": 3
      },
      "ack-timeout": {
        "current-value-decimal": "2.00"
      },
      "ack-random-factor": {
        "current-value-decimal": "1.50"
      }
    },
    "idle-config": {
      "heartbeat-interval": {
        "current-value": 0
      },
      "max-retransmit": {
        "current-value": 3
      },
      "ack-timeout": {
        "current-value-decimal": "2.00"
      },
      "ack-random-factor": {
        "current-value-decimal": "1.50"
      }
    }
  }
}
"""

FIGURE_26 = """
{
  "ietf-dots-signal-channel:redirected-signal": {
    "alt-server": "alt-server.example",
    "alt-server-record": [
       "2001:db8:6401::1",
       "2001:db8:6401::2"
    ]
  }
}
"""

FIGURE_27 = """
{
  "ietf-dots-signal-channel:heartbeat": {
     "peer-hb-status": true
   }
}
"""

FIGURES = [
    pytest.param(FIGURE_7, id="fig7-put-request"),
    pytest.param(FIGURE_10, id="fig10-2xx-response"),
    pytest.param(FIGURE_11, id="fig11-cuid-collision"),
    pytest.param(FIGURE_14, id="fig14-get-response"),
    pytest.param(FIGURE_16, id="fig16-efficacy-update"),
    pytest.param(FIGURE_20, id="fig20-config-response"),
    pytest.param(FIGURE_23, id="fig23-config-put"),
    pytest.param(FIGURE_26, id="fig26-redirect"),
    pytest.param(FIGURE_27, id="fig27-heartbeat"),
]

PREFIXES = (
    ipaddress.ip_network("2001:db8:6401::1/128"),
    ipaddress.ip_network("2001:db8:6401::2/128"),
)
WEB_PORTS = (PortRange(80), PortRange(443), PortRange(8080))


# --- every figure, every direction --------------------------------------------------------------


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_survives_cbor_round_trip(figure: str) -> None:
    message = message_from_json(figure)
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_renders_back_as_the_same_json(figure: str) -> None:
    assert message_to_json(message_from_json(figure)) == json.loads(figure)


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_json_to_cbor_to_json_is_the_figure(figure: str) -> None:
    assert cbor_to_json(json_to_cbor(figure)) == json.loads(figure)


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_parsed_from_object_equals_parsed_from_text(figure: str) -> None:
    assert message_from_json(json.loads(figure)) == message_from_json(figure)


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_encoding_is_deterministic(figure: str) -> None:
    message = message_from_json(figure)
    data = encode_message(message)
    assert encode_message(decode_message(data)) == data


# --- Figure 7 / Figure 8: the exact bytes -------------------------------------------------------


def test_figure_7_encodes_to_the_bytes_of_figure_8() -> None:
    assert encode_message(message_from_json(FIGURE_7)) == FIGURE_8


def test_figure_8_decodes_to_figure_7() -> None:
    assert decode_message(FIGURE_8) == message_from_json(FIGURE_7)


def test_figure_7_typed_content() -> None:
    assert message_from_json(FIGURE_7) == MitigationScope(
        (
            Scope(
                target_prefix=PREFIXES,
                target_port_range=WEB_PORTS,
                target_protocol=(6,),
                lifetime=3600,
            ),
        )
    )


def test_figure_7_is_a_valid_mitigation_request() -> None:
    scope = validate_mitigation_request(message_from_json(FIGURE_7), efficacy_update=False)
    assert scope.lifetime == 3600


# --- the other figures: typed content -----------------------------------------------------------


def test_figure_10_typed_content() -> None:
    assert message_from_json(FIGURE_10) == MitigationScope((Scope(mid=123, lifetime=3600),))


def test_figure_11_carries_the_cause_alone() -> None:
    assert message_from_json(FIGURE_11) == MitigationScope(
        (Scope(conflict_information=ConflictInformation(ConflictCause.CUID_COLLISION)),)
    )


def test_figure_14_counters_are_numbers_and_status_is_the_enum() -> None:
    message = message_from_json(FIGURE_14)
    assert isinstance(message, MitigationScope)
    first, second = message.scope
    assert first.mid == 12332
    assert first.mitigation_start == 1507818434
    assert first.status is Status.ATTACK_SUCCESSFULLY_MITIGATED
    assert (first.bytes_dropped, first.bps_dropped, first.pkts_dropped, first.pps_dropped) == (
        134334555,
        43344,
        333334444,
        432432,
    )
    assert first.target_prefix == PREFIXES
    assert second.status is Status.ATTACK_STOPPED
    assert second.bytes_dropped == 0
    assert second.lifetime == 1755


def test_figure_14_counters_are_json_strings_and_cbor_uints() -> None:
    data = encode_message(message_from_json(FIGURE_14))
    scope = cbor2.loads(data)[1][2][0]
    assert scope[15] == 1507818434 and type(scope[15]) is int
    assert scope[16] == Status.ATTACK_SUCCESSFULLY_MITIGATED.value
    assert scope[25] == 134334555


def test_figure_16_is_an_efficacy_update_without_lifetime() -> None:
    message = message_from_json(FIGURE_16)
    scope = validate_mitigation_request(message, efficacy_update=True)
    assert scope.lifetime is None
    assert scope.attack_status is AttackStatus.UNDER_ATTACK
    assert scope.target_port_range == WEB_PORTS


def test_figure_20_min_max_current_and_decimals() -> None:
    message = message_from_json(FIGURE_20)
    assert isinstance(message, SignalConfig)
    assert message.mitigating_config == message.idle_config
    config = message.mitigating_config
    assert config is not None
    assert config.heartbeat_interval == ConfigValue(30, 15, 240)
    assert config.missing_hb_allowed == ConfigValue(15, 3, 20)
    assert config.probing_rate == ConfigValue(15, 5, 20)
    assert config.max_retransmit == ConfigValue(3, 2, 15)
    assert config.ack_timeout == ConfigValue(Decimal("2.00"), Decimal("1.00"), Decimal("30.00"))
    assert config.ack_random_factor == ConfigValue(
        Decimal("1.50"), Decimal("1.10"), Decimal("4.00")
    )


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        ("1.00", "C4 82 21 18 64"),
        ("1.10", "C4 82 21 18 6E"),
        ("1.50", "C4 82 21 18 96"),
        ("4.00", "C4 82 21 19 01 90"),
        ("30.00", "C4 82 21 19 0B B8"),
    ],
)
def test_figure_20_decimals_are_cbor_tag_4_with_exponent_minus_2(value: str, encoding: str) -> None:
    assert value in FIGURE_20
    assert bytes.fromhex(encoding) in encode_message(message_from_json(FIGURE_20))


def test_figure_23_partial_idle_config_is_a_valid_config_put() -> None:
    message = validate_config_request(message_from_json(FIGURE_23))
    assert message.idle_config is not None
    assert message.idle_config.heartbeat_interval == ConfigValue(0)
    assert message.idle_config.missing_hb_allowed is None
    assert message.idle_config.probing_rate is None
    assert message.mitigating_config is not None
    assert message.mitigating_config.ack_timeout == ConfigValue(Decimal("2.00"))


def test_figure_26_typed_content() -> None:
    assert message_from_json(FIGURE_26) == RedirectedSignal(
        "alt-server.example",
        (ipaddress.ip_address("2001:db8:6401::1"), ipaddress.ip_address("2001:db8:6401::2")),
    )


def test_figure_27_is_a_valid_heartbeat() -> None:
    assert validate_heartbeat(message_from_json(FIGURE_27)) == Heartbeat(True)


# --- docs/dots-reference.md §2.5 vectors --------------------------------------------------------

HEARTBEAT = bytes.fromhex("A1 18 31 A1 18 33 F5")
RESPONSE_2XX = bytes.fromhex("A1 01 A1 02 81 A2 05 18 7B 0E 19 0E 10")
REDIRECT = bytes.fromhex(
    "A1 18 2E A2 18 2F 6B 61 6C 74 2E 65 78 61 6D 70 6C 65"
    " 18 30 81 6B 32 30 30 31 3A 64 62 38 3A 3A 31"
)
# {1: {2: [{14: -1}]}}: lifetime -1 is the single byte 0x20.
INDEFINITE_LIFETIME = bytes.fromhex("A1 01 A1 02 81 A1 0E 20")
# {30: {32: {39: {43: 2.00}}}}: 2.00 is C4 82 21 18 C8.
ACK_TIMEOUT_2 = bytes.fromhex("A1 18 1E A1 18 20 A1 18 27 A1 18 2B C4 82 21 18 C8")

VECTORS = [
    pytest.param(HEARTBEAT, Heartbeat(True), id="heartbeat"),
    pytest.param(RESPONSE_2XX, MitigationScope((Scope(mid=123, lifetime=3600),)), id="2xx"),
    pytest.param(
        REDIRECT,
        RedirectedSignal("alt.example", (ipaddress.ip_address("2001:db8::1"),)),
        id="redirect",
    ),
    pytest.param(INDEFINITE_LIFETIME, MitigationScope((Scope(lifetime=-1),)), id="lifetime-1"),
    pytest.param(
        ACK_TIMEOUT_2,
        message_from_json(
            {
                "ietf-dots-signal-channel:signal-config": {
                    "mitigating-config": {"ack-timeout": {"current-value-decimal": "2.00"}}
                }
            }
        ),
        id="decimal-2.00",
    ),
]


@pytest.mark.parametrize(("data", "message"), VECTORS)
def test_vector_decodes_to_message(data: bytes, message: object) -> None:
    assert decode_message(data) == message


@pytest.mark.parametrize(("data", "message"), VECTORS)
def test_message_encodes_to_vector(data: bytes, message: object) -> None:
    assert encode_message(message) == data  # type: ignore[arg-type]


def test_lifetime_minus_one_is_a_negative_integer_on_the_wire() -> None:
    assert cbor2.loads(INDEFINITE_LIFETIME)[1][2][0][14] == -1


def test_mitigation_start_with_cbor_tag_1_is_malformed() -> None:
    # RFC 9132 §4.4.2: mitigation-start is a plain uint; the tag 1 MUST be omitted.
    data = cbor2.dumps({1: {2: [{5: 1, 15: cbor2.CBORTag(1, 1507818434)}]}})
    with pytest.raises(MalformedPayload) as info:
        decode_message(data)
    assert info.value.code is Code.BAD_REQUEST
    assert "mitigation-start" in info.value.diagnostic


def test_mitigation_start_as_plain_uint_is_accepted() -> None:
    data = cbor2.dumps({1: {2: [{5: 1, 15: 1507818434}]}})
    assert decode_message(data) == MitigationScope((Scope(mid=1, mitigation_start=1507818434),))


def test_cbor_tag_271_around_the_whole_message_is_accepted() -> None:
    # RFC 9132 §10.5: the optional tag prefixes the whole DOTS object.
    assert decode_message(bytes.fromhex("D9 01 0F") + HEARTBEAT) == Heartbeat(True)


def test_cbor_tag_271_inside_the_message_is_malformed() -> None:
    data = cbor2.dumps({49: cbor2.CBORTag(271, {51: True})})
    with pytest.raises(MalformedPayload) as info:
        decode_message(data)
    assert "heartbeat" in info.value.diagnostic
