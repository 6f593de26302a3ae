"""Workload identity: a local HTTPS public issuer, an emulated K3s server whose issuer it is, k3srotd as a
subprocess. See tests/README.md, "Workload identity checks"."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from idnode import IdNode
from k3semu.harness import EmulatedServer
from oidc_issuer import IssuerServer, TestCA

from k3srotd.identity import issuer as k3srotd_issuer

PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA settings, config or crash hook from the caller's environment; an empty issuer cache."""
    for name in (*PROXY_VARS, "SSL_CERT_FILE", "SSL_CERT_DIR", "K3SROTD_CONFIG", "K3SROTD_TEST_CRASH_AT"):
        monkeypatch.delenv(name, raising=False)
    k3srotd_issuer.clear_cache()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("issuer-ca"))


@pytest.fixture
def public_issuer(test_ca: TestCA) -> Iterator[IssuerServer]:
    srv = IssuerServer(test_ca).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def id_node(tmp_path: Path, test_ca: TestCA, public_issuer: IssuerServer) -> Iterator[IdNode]:
    """K3s (emulated) with service-account-issuer = the public issuer, which serves the cluster's JWKS as it
    was at start; k3srotd trusts the issuer's CA through SSL_CERT_FILE."""
    server = EmulatedServer(tmp_path / "k3s", config_file=tmp_path / "k3s-config.yaml")
    node = IdNode(tmp_path, server, env={"SSL_CERT_FILE": str(test_ca.ca_file)})
    node.write_k3s_config(service_account_issuer=public_issuer.issuer)
    server.start()
    public_issuer.publish(node.cluster_jwks())
    try:
        yield node
    finally:
        if node.bg is not None and node.bg.poll() is None:
            node.stop_bg()
        server.stop()


@pytest.fixture
def plain_node(tmp_path: Path) -> Iterator[IdNode]:
    """K3s (emulated) with its default, in-cluster issuer: no public issuer is checked."""
    server = EmulatedServer(tmp_path / "k3s", config_file=tmp_path / "k3s-config.yaml")
    node = IdNode(tmp_path, server, env={})
    node.k3s_config.write_text("")
    server.start()
    try:
        yield node
    finally:
        if node.bg is not None and node.bg.poll() is None:
            node.stop_bg()
        server.stop()
