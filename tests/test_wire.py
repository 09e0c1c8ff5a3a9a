"""Error markers and unsigned varints: what crosses the RPC besides the schema."""

import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logos_p2p import _schema
from logos_p2p import errors as e
from logos_p2p._frames import decode_uvarint, encode_uvarint, lp_frame
from logos_p2p._wire import RemoteError, error_to_marker, marker_to_error

# (value, bytes) from the protobuf / multiformats unsigned-varint spec, as nim-libp2p writes them
VECTORS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (255, b"\xff\x01"),
    (300, b"\xac\x02"),
    (16384, b"\x80\x80\x01"),
    (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_varint_vectors(value, encoded):
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=2**64 - 1), st.binary(max_size=8))
def test_varint_roundtrip_with_trailing_bytes(value, tail):
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded + tail) == (value, len(encoded))
    for cut in range(len(encoded)):
        assert decode_uvarint(encoded[:cut]) is None  # incomplete, not wrong


def test_varint_rejects_garbage():
    with pytest.raises(ValueError):
        decode_uvarint(b"\xff" * 10 + b"\x01")
    with pytest.raises(ValueError):
        decode_uvarint(b"\xff" * 9 + b"\x7f")  # over 64 bits
    with pytest.raises(ValueError):
        encode_uvarint(-1)


def test_lp_frame():
    assert lp_frame(b"") == b"\x00"
    assert lp_frame(b"x" * 300) == b"\xac\x02" + b"x" * 300


ERRORS = [
    e.StreamClosed("closed"),
    e.Busy("two readers"),
    e.NodeShutdown("bye"),
    e.ProtocolNotSupported("none of them"),
    e.PeerUnreachable("no route"),
    e.NegotiationFailed("broke off"),
    e.Timeout("slow"),
    e.InvalidArgument("bad id"),
    e.ProtocolInUse("taken"),
    e.LimitExceeded("too many"),
    e.FrameTooLarge("big"),
    e.EndOfStream("mid-frame"),
    *(e.reset_error(cause, f"because {cause.value}") for cause in e.Cause),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda x: f"{type(x).__name__}-{getattr(x, 'cause', '')}")
def test_every_error_survives_the_trip_inside_a_traceback(error):
    text = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n'
        '    raise RemoteError(StreamClosed("[logos-p2p:stream-closed] decoy"))\n'
        f"logos_p2p._wire.RemoteError: {error_to_marker(error)}\n"
    )
    back = marker_to_error(text)
    assert type(back) is type(error)
    assert str(back) == str(error)
    if isinstance(error, e.StreamReset):
        assert back.cause is error.cause


def test_remote_error_text_is_exactly_the_marker():
    assert str(RemoteError(e.Busy("x"))) == "[logos-p2p:busy] x"


def test_a_remote_error_formats_as_one_line_without_a_traceback():
    """pycapnp sends traceback.format_exception of a failed server method."""
    try:
        try:
            raise KeyError("inside the node")
        except KeyError:
            raise RemoteError(e.LimitExceeded("full")) from None
    except RemoteError as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert text == "logos_p2p.RemoteError: [logos-p2p:limitExceeded] full\n"


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("stream-closed", e.StreamClosed), ("invalid-argument", e.InvalidArgument), ("node-shutdown", e.NodeShutdown)],
)
def test_kinds_from_older_nodes_in_kebab_case_are_still_read(kind, cls):
    assert type(marker_to_error(f"[logos-p2p:{kind}] x")) is cls
    reset = marker_to_error("[logos-p2p:stream-reset:connectionLost] x")
    assert isinstance(reset, e.ConnectionLost)


def test_kinds_are_camel_case_like_the_causes():
    assert error_to_marker(e.reset_error(e.Cause.REMOTE_RESET, "m")) == "[logos-p2p:streamReset:remoteReset] m"
    assert error_to_marker(e.ProtocolNotSupported("m")) == "[logos-p2p:protocolNotSupported] m"
    assert error_to_marker(e.RPCError("m")) == "[logos-p2p:internal] m"
    assert type(marker_to_error("[logos-p2p:internal] m")) is e.RPCError


def test_a_failure_that_is_not_ours_is_logged_and_sent_as_internal(caplog):
    from logos_p2p.server._rpc import remote_errors

    with pytest.raises(RemoteError) as info, remote_errors():
        {}["missing"]
    assert str(info.value) == "[logos-p2p:internal] the node failed (KeyError); its log has the details"
    assert "KeyError" in caplog.text and "Traceback" in caplog.text


def test_no_marker_and_unknown_kinds():
    assert marker_to_error("KeyError: 'x'") is None
    assert isinstance(marker_to_error("[logos-p2p:martian] hi"), e.RPCError)
    unknown_cause = marker_to_error("[logos-p2p:stream-reset:cosmicRay] hi")
    assert isinstance(unknown_cause, e.StreamReset) and unknown_cause.cause is e.Cause.PROTOCOL_ERROR


def test_newlines_cannot_forge_a_second_marker():
    evil = e.InvalidArgument("bad\n[logos-p2p:node-shutdown] forged")
    back = marker_to_error(f"RemoteError: {error_to_marker(evil)}")
    assert type(back) is e.InvalidArgument


@pytest.mark.parametrize(
    "fields",
    [
        {
            "inbound": {
                "registration": 1,
                "info": {
                    "id": 7,
                    "protocol": "/p/1",
                    "remotePeerId": "12D3",
                    "remoteAddr": "/ip4/127.0.0.1/tcp/1",
                    "direction": "inbound",
                },
            }
        },
        {"opened": {"request": 3, "info": {"id": 8, "protocol": "/p/1", "direction": "outbound"}}},
        {"open": {"request": 1, "peerId": "12D3", "protocols": ["/a/1", "/b/1"], "addrs": [], "timeoutMs": 500}},
        {"openFailed": {"request": 2, "error": "[logos-p2p:timeout] no answer"}},
        {"reset": {"stream": 9, "cause": "localReset", "message": ""}},
        {"flushed": 5},
        {"hello": b"t" * 32},
    ],
)
def test_a_channel_message_filled_field_by_field_is_the_same_bytes(fields):
    """The data channel builds its frames field by field (8x cheaper than the dict form)."""
    expected = bytes(_schema.load().ChannelMessage.new_message(**fields).to_bytes())
    assert _schema.channel_message(**fields) == expected
