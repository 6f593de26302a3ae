"""Bad config values and files: one bounded line naming the file and key, exit 2; never an unexpected error."""

from __future__ import annotations

from pathlib import Path

import pytest

from k3srotd import config
from k3srotd.cli import _error_line
from k3srotd.errors import ConfigError

BOMB = (
    "restart-command: [&a [x, x, x, x, x, x, x, x, x], "
    + "".join(f"&{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}], " for p, c in zip("abcdefgh", "bcdefghi"))
    + "*i]\n"
)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"key-size: 2048.0\n", "key 'key-size'"),
        (b"rotation-interval: 99999999999999999999d\n", "key 'rotation-interval'"),
        (b"restart-timeout: " + b"9" * 400 + b"d\n", "key 'restart-timeout'"),
        (b"k3s-server-url: 'https://[::1'\n", "key 'k3s-server-url'"),
        (b"k3s-server-url: 'https://host:99999'\n", "key 'k3s-server-url'"),
        (b"k3s-server-url: 'https://'\n", "key 'k3s-server-url'"),
        (b"grace-period: 24h\xff\n", "not UTF-8"),
        (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "config.yaml"),
        (b"grace-period: 24h\ngrace-period: 48h\n", "duplicate key"),
        (BOMB.encode(), "key 'restart-command'"),
        (b"2020-01-01: x\n", "is not a name"),
    ],
)
def test_bad_values_are_one_bounded_line(tmp_path: Path, data: bytes, words: str) -> None:
    p = tmp_path / "config.yaml"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        config.load(str(p))
    line = str(e.value)
    assert str(p) in line and words in line and e.value.exit_code == 2
    assert "\n" not in line and len(line) < 600


def test_the_error_line_is_redacted_and_bounded() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    body = "".join(pem.splitlines()[1:-1])
    for echoed in (pem, "\n".join(pem.splitlines()[1:-1]), body):
        line = _error_line(f"rotate-ca failed: {echoed}")
        assert line.startswith("k3srotd: rotate-ca failed: ") and "[redacted]" in line
        assert not any(chunk in line for chunk in (body[i : i + 40] for i in range(0, len(body) - 40, 40)))
    assert len(_error_line("x" * 1_000_000)) <= 2000 + len("k3srotd: ")
    kid = "kjFQIcPxhhSuvsfHoOCVG10f7udKtAixLOLxVuJ96GY"
    assert kid in _error_line(f"keys {kid}, {kid}")  # kids are not key material
