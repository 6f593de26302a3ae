"""The emulator's building blocks, without processes: PEM parsing, key ids, JWTs, timestamps, flags, faults."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from k3semu import bootstrap, faults, flags, jwt, keys
from k3semu.rotateca import parse_token
from k3semu.server import apiserver_args, parse_duration


@pytest.fixture(scope="module")
def rsa_key():
    return keys.new_rsa_key()


def test_kid_is_sha256_of_spki(rsa_key):
    import base64
    import hashlib

    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert keys.kid_of(rsa_key.public_key()) == expected
    assert "=" not in expected and len(expected) == 43


def test_first_private_key_needs_block_type_and_encoding_to_agree(rsa_key):
    pkcs8 = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    mislabelled = pkcs8.replace(b"BEGIN PRIVATE KEY", b"BEGIN RSA PRIVATE KEY").replace(
        b"END PRIVATE KEY", b"END RSA PRIVATE KEY"
    )
    other = keys.new_ec_key()
    # the mislabelled block is skipped by ParsePrivateKeyPEM, so the EC key after it is "first"
    data = mislabelled + keys.marshal_private_key(other)
    assert keys.same_key(keys.first_private_key(data).public_key(), other.public_key())
    # ParsePublicKeysPEM tries every parser whatever the label
    assert [keys.kid_of(k) for k in keys.public_keys(data)] == [
        keys.kid_of(rsa_key.public_key()),
        keys.kid_of(other.public_key()),
    ]
    with pytest.raises(keys.KeyFileError):
        keys.first_private_key(b"-----BEGIN FOO-----\nAAAA\n-----END FOO-----\n")
    with pytest.raises(keys.KeyFileError):
        keys.public_keys(b"no pem here")


def test_pem_blocks_with_crlf_headers_and_junk():
    key = keys.new_ec_key()
    pem = keys.marshal_private_key(key).replace(b"\n", b"\r\n")
    enc = (
        b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n"
        b"-----END RSA PRIVATE KEY-----\n"
    )
    blocks = keys.pem_blocks(b"junk\r\n" + enc + pem + b"trailing")
    assert [b.type for b in blocks] == ["RSA PRIVATE KEY", "EC PRIVATE KEY"]
    assert blocks[0].headers == {"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}
    assert keys.same_key(keys.first_private_key(b"junk\r\n" + enc + pem).public_key(), key.public_key())


@pytest.mark.parametrize("make", [lambda: keys.new_ec_key(), lambda: None])
def test_jwt_round_trip(make, rsa_key):
    key = make() or rsa_key
    claims = jwt.service_account_claims("https://iss", "ns", "sa", ["aud"], 600, now=1000)
    token = jwt.sign(key, claims)
    assert jwt.verify(token, [key.public_key()], ["https://iss"], ["aud"], now=1100) == claims
    assert jwt.verify(token, [key.public_key()], ["https://iss"], ["aud"], now=1660)  # 60 s leeway
    with pytest.raises(jwt.TokenError, match="expired"):
        jwt.verify(token, [key.public_key()], ["https://iss"], ["aud"], now=1661)
    with pytest.raises(jwt.TokenError, match="cryptographic"):
        jwt.verify(token, [keys.new_ec_key().public_key()], ["https://iss"], ["aud"], now=1100)
    with pytest.raises(jwt.TokenError):
        jwt.verify(token, [key.public_key()], ["https://other"], ["aud"], now=1100)


def test_timestamps():
    assert bootstrap.format_ts(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert bootstrap.format_ts(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert bootstrap.parse_ts("2023-11-14T22:13:20.12Z") == 1_700_000_000_120_000_000
    assert bootstrap.parse_ts("2023-11-14T23:13:20.000000001+01:00") == 1_700_000_000_000_000_001
    assert bootstrap.unix_seconds(1_700_000_000_999_999_999) == 1_700_000_000
    with pytest.raises(ValueError):
        bootstrap.parse_ts("yesterday")


def test_bootstrap_json_is_k3s_format():
    files = {"ServiceKey": bootstrap.File(1_700_000_000_000_000_000, b"key")}
    doc = json.loads(bootstrap.encode(files))
    assert doc == {"ServiceKey": {"Timestamp": "2023-11-14T22:13:20Z", "Content": "a2V5"}}
    assert bootstrap.decode(bootstrap.encode(files)) == files


def test_token_parsing():
    assert parse_token("K10" + "a" * 64 + "::server:pw") == ("a" * 64, "server", "pw")
    assert parse_token("K10::server:pw") == ("", "server", "pw")
    assert parse_token("bare-secret") == ("", "", "bare-secret")  # a bare token is a password
    for bad, message in (
        ("", "token must not be empty"),
        ("K10abc::server:pw", "invalid token CA hash length"),
        ("K10::nopassword", "invalid token format"),
    ):
        with pytest.raises(Exception, match=message):
            parse_token(bad)


def test_flags_and_durations(monkeypatch):
    spec = [
        flags.Flag("data-dir", ("d",), default="/x"),
        flags.Flag("force", kind="bool", default=False),
        flags.Flag("arg", kind="slice"),
    ]
    values, rest, given = flags.parse(spec, ["-d", "/a", "--force", "--arg=x", "--arg", "y", "extra"])
    assert values == {"data-dir": "/a", "force": True, "arg": ["x", "y"]} and rest == ["extra"]
    assert given == {"data-dir", "force", "arg"}
    with pytest.raises(flags.UsageError, match="flag provided but not defined: -nope"):
        flags.parse(spec, ["--nope"])
    assert parse_duration("24h") == 86400 and parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        parse_duration("1d")
    assert apiserver_args(["a=1", "--b=2", "a=3"]) == {"a": ["1", "3"], "b": ["2"]}


def test_fault_specs(tmp_path, monkeypatch):
    d = str(tmp_path)
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.take(d, "slow_start") is None
    faults.set_all(d, {"slow_start": 2, "no_come_back": {"times": 2, "mode": "exit"}, "crash_at_start": False})
    assert faults.take(d, "slow_start") == {"seconds": 2.0}
    assert faults.take(d, "crash_at_start") is None
    assert faults.take(d, "no_come_back") == {"times": 2, "mode": "exit"}
    assert faults.read_all(d)["no_come_back"] == {"times": 1, "mode": "exit"}
    assert faults.take(d, "no_come_back") == {"times": 1, "mode": "exit"}
    assert "no_come_back" not in faults.read_all(d)
    monkeypatch.setenv(faults.ENV, json.dumps({"stale_keys": {"times": 1}}))
    assert faults.take(d, "stale_keys") == {"times": 1}
    assert faults.take(d, "stale_keys") == {"times": 1}  # the environment cannot count
