"""k3srotd/issuer.py in-process against the local HTTPS issuer: TLS trust, content types, caching, proxies, errors."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from pathlib import Path

import pytest
from oidc_issuer import ConnectProxy, IssuerServer, TestCA

from k3srotd.identity import issuer

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
JWKS = {"keys": [{"kty": "RSA", "kid": "kid-a", "n": "AQAB", "e": "AQAB", "use": "sig"}]}


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch, test_ca: TestCA) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(test_ca.ca_file))


def test_discovery_then_jwks(trusted: None, public_issuer: IssuerServer) -> None:
    public_issuer.publish(JWKS)
    pub = issuer.public_keys(public_issuer.issuer, NOW)
    assert pub.kids == ("kid-a",)
    assert pub.discovery.url == public_issuer.issuer + "/.well-known/openid-configuration"
    assert pub.jwks.url == public_issuer.issuer + "/openid/v1/jwks"
    assert pub.jwks.max_age == 0 and not pub.jwks.cached


def test_an_untrusted_certificate_is_refused(public_issuer: IssuerServer) -> None:
    with pytest.raises(issuer.IssuerError, match="TLS certificate is not trusted"):
        issuer.public_keys(public_issuer.issuer, NOW)


def test_ssl_cert_dir_works_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, test_ca: TestCA, public_issuer
) -> None:
    import subprocess

    # OpenSSL looks a CA up in SSL_CERT_DIR by `<subject hash>.0`
    name = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(test_ca.ca_file)], capture_output=True, text=True
    ).stdout.strip()
    if not name:
        pytest.skip("openssl is needed to name the CA file")
    d = tmp_path / "certs"
    d.mkdir()
    (d / f"{name}.0").write_bytes(test_ca.ca_file.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(d))
    assert issuer.public_keys(public_issuer.issuer, NOW).kids == ()


@pytest.mark.parametrize(
    ("ctype", "ok"),
    [
        ("application/json", True),
        ("application/jwk-set+json", True),
        ("application/json; charset=utf-8", True),
        ("text/html; charset=utf-8", False),
        ("application/octet-stream", False),
        ("", False),
    ],
)
def test_content_types(trusted: None, public_issuer: IssuerServer, ctype: str, ok: bool) -> None:
    public_issuer.publish(JWKS)
    public_issuer.jwks_type = ctype
    if ok:
        assert issuer.public_keys(public_issuer.issuer, NOW).kids == ("kid-a",)
    else:
        with pytest.raises(issuer.IssuerError, match="is served as"):
            issuer.public_keys(public_issuer.issuer, NOW)


def test_discovery_must_be_json_and_name_the_issuer(trusted: None, public_issuer: IssuerServer) -> None:
    public_issuer.discovery_type = "application/jwk-set+json"
    with pytest.raises(issuer.IssuerError, match="expected application/json"):
        issuer.public_keys(public_issuer.issuer, NOW)
    public_issuer.discovery_type = "application/json"
    public_issuer.discovery_issuer = public_issuer.issuer + "/"
    with pytest.raises(issuer.IssuerError, match="names the issuer"):
        issuer.public_keys(public_issuer.issuer, NOW)


def test_not_a_jwk_set(trusted: None, public_issuer: IssuerServer) -> None:
    public_issuer.publish({"keys": [{"kty": "RSA"}]})
    with pytest.raises(issuer.IssuerError, match="is not a JWK set"):
        issuer.public_keys(public_issuer.issuer, NOW)


def test_cache_control_max_age_is_honoured(trusted: None, public_issuer: IssuerServer) -> None:
    clock = [100.0]
    url = public_issuer.issuer + "/openid/v1/jwks"
    public_issuer.publish(JWKS, cache_control="public, max-age=60", last_modified=True)
    first = issuer.fetch_json(url, issuer.JWKS_TYPES, NOW, monotonic=lambda: clock[0])
    assert first.max_age == 60 and first.last_modified is not None and not first.cached
    public_issuer.publish({"keys": []}, cache_control="max-age=60")
    clock[0] += 59
    again = issuer.fetch_json(url, issuer.JWKS_TYPES, NOW, monotonic=lambda: clock[0])
    assert again.cached and again.doc == JWKS and again.fetched_at == NOW
    clock[0] += 2
    fresh = issuer.fetch_json(url, issuer.JWKS_TYPES, NOW, monotonic=lambda: clock[0])
    assert not fresh.cached and fresh.doc == {"keys": []}
    assert len(public_issuer.jwks_hits()) == 2


@pytest.mark.parametrize(
    ("cache_control", "age", "seconds"),
    [
        ("max-age=300", "", 300),
        ("public, max-age=300", "100", 200),
        ("max-age=300", "400", 0),
        ("no-cache, max-age=300", "", 0),
        ("no-store", "", 0),
        ('max-age="30"', "", 30),
        ("s-maxage=300", "", 0),
        ("max-age=abc", "", 0),
        ("", "", 0),
    ],
)
def test_cache_seconds(cache_control: str, age: str, seconds: float) -> None:
    assert issuer.cache_seconds(cache_control, age) == seconds


def test_unreachable_and_silent_issuers(trusted: None) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(issuer.IssuerError, match="Connection refused"):
        issuer.public_keys(f"https://127.0.0.1:{port}/x", NOW)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        with pytest.raises(issuer.IssuerError, match=r"no (complete )?answer within 0.3s"):
            issuer.public_keys(f"https://127.0.0.1:{silent.getsockname()[1]}/x", NOW, timeout=0.3)
    finally:
        silent.close()


def test_http_errors_and_plain_http(trusted: None, public_issuer: IssuerServer) -> None:
    with pytest.raises(issuer.IssuerError, match="HTTP 404"):
        issuer.public_keys(public_issuer.issuer + "-other", NOW)
    with pytest.raises(issuer.IssuerError, match="not an https URL"):
        issuer.fetch_json("http://127.0.0.1:1/x", issuer.JWKS_TYPES, NOW)


def test_redirects_to_http_are_refused(trusted: None, public_issuer: IssuerServer) -> None:
    import http.server

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/jwks")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(public_issuer.certs.cert_file), str(public_issuer.certs.key_file))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with pytest.raises(issuer.IssuerError, match="which is not https"):
            issuer.fetch_json(f"https://127.0.0.1:{httpd.server_address[1]}/jwks", issuer.JWKS_TYPES, NOW)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_https_proxy_variables_are_used(
    trusted: None, public_issuer: IssuerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    public_issuer.publish(JWKS)
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("https_proxy", proxy.url)
        assert issuer.public_keys(public_issuer.issuer, NOW).kids == ("kid-a",)
        assert proxy.tunnels == [f"127.0.0.1:{public_issuer.port}"] * 2
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert issuer.public_keys(public_issuer.issuer, NOW).kids == ("kid-a",)
        assert len(proxy.tunnels) == 2
    finally:
        proxy.stop()


def test_age_shortens_this_process_cache_but_not_max_age(trusted: None, public_issuer: IssuerServer) -> None:
    """Behind a CDN: Age says how long a shared cache held it. Our own cache keeps it max-age less Age; a verifier
    that ignores Age may keep it the full max-age, which is what the promote hold counts."""
    public_issuer.publish(JWKS, cache_control="public, max-age=3600", age=3000)
    got = issuer.fetch_json(public_issuer.issuer + "/openid/v1/jwks", issuer.JWKS_TYPES, NOW)
    assert got.max_age == 3600 and got.age == 3000
    assert got.fresh_until == NOW + dt.timedelta(seconds=600)


def test_a_dripping_issuer_cannot_stretch_the_total_deadline(trusted: None, public_issuer: IssuerServer) -> None:
    """One byte every 0.3 s keeps every single read inside a 1 s timeout; the whole fetch still ends at 1 s."""
    public_issuer.publish({"keys": [{"kid": "k" * 200}]})
    public_issuer.drip = 0.3
    start = time.monotonic()
    with pytest.raises(issuer.IssuerError, match=r"no complete answer within 1s"):
        issuer.fetch_json(public_issuer.issuer + "/openid/v1/jwks", issuer.JWKS_TYPES, NOW, timeout=1.0)
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    ("location", "ok"),
    [
        ("{issuer}/openid/v1/jwks", True),  # same scheme and host, another path: followed
        ("https://localhost:{port}/cluster-a/openid/v1/jwks", False),  # another host name, same server
        ("https://127.0.0.1:1/cluster-a/openid/v1/jwks", False),  # another port
        ("http://127.0.0.1:{port}/cluster-a/openid/v1/jwks", False),  # another scheme
    ],
)
def test_redirects_only_to_the_same_scheme_and_host(
    trusted: None, public_issuer: IssuerServer, location: str, ok: bool
) -> None:
    public_issuer.publish(JWKS)
    public_issuer.redirects["/moved/jwks"] = location.format(issuer=public_issuer.issuer, port=public_issuer.port)
    url = f"https://127.0.0.1:{public_issuer.port}/moved/jwks"
    if ok:
        assert issuer.fetch_json(url, issuer.JWKS_TYPES, NOW).doc == JWKS
    else:
        with pytest.raises(issuer.IssuerError, match="redirects to"):
            issuer.fetch_json(url, issuer.JWKS_TYPES, NOW)
