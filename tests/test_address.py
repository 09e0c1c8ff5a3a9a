import pytest

from logos_p2p import _address
from logos_p2p.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/tmp/x.sock", _address.Address("unix", path="/tmp/x.sock")),
        ("/tmp/x.sock", _address.Address("unix", path="/tmp/x.sock")),
        ("tcp:127.0.0.1:4000", _address.Address("tcp", host="127.0.0.1", port=4000)),
        ("tcp:[::1]:4000", _address.Address("tcp", host="::1", port=4000)),
        ("tcp:localhost:1", _address.Address("tcp", host="localhost", port=1)),
    ],
)
def test_parse(text, expected):
    assert _address.parse(text) == expected
    assert _address.parse(str(expected)) == expected


@pytest.mark.parametrize("text", ["", "unix:", "tcp:1.2.3.4", "tcp:h:x", "tcp:h:70000", "tcp::5", "http://x"])
def test_parse_rejects(text):
    with pytest.raises(InvalidArgument):
        _address.parse(text)


def test_default_is_a_private_unix_socket(monkeypatch, tmp_path):
    monkeypatch.delenv(_address.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert _address.default_address() == _address.Address("unix", path=str(tmp_path / "logos-p2p" / "node.sock"))
    monkeypatch.setenv(_address.ENV_VAR, "tcp:127.0.0.1:9")
    assert _address.default_address().port == 9
