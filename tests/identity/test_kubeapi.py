"""kubeapi.KubeAPI against a real emulated server: K3s rewrites its admin kubeconfig in place at every start, so a
read may see half of it; the client reads it again instead of failing the step."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from k3srotd.errors import ConfigError
from k3srotd.node.kubeapi import KubeAPI


@pytest.mark.parametrize("cut", [0, 0.5, 0.9])  # empty, half the YAML, a key cut short
def test_a_kubeconfig_read_while_it_is_rewritten_is_read_again(k3s_server: Any, tmp_path: Path, cut: float) -> None:
    whole = Path(k3s_server.kubeconfig).read_bytes()
    kc = tmp_path / "k3s.yaml"
    kc.write_bytes(whole[: int(len(whole) * cut)])
    threading.Timer(0.5, kc.write_bytes, [whole]).start()  # the rest arrives half a second later
    started = time.monotonic()
    status, _ = KubeAPI(str(kc), k3s_server.url).request("GET", "/readyz")
    assert status == 200 and 0.4 < time.monotonic() - started < 3


def test_a_kubeconfig_that_stays_broken_is_a_config_error(tmp_path: Path) -> None:
    kc = tmp_path / "k3s.yaml"
    kc.write_text("apiVersion: v1\nclusters: []\n")
    with pytest.raises(ConfigError, match="has no usable context"):
        KubeAPI(str(kc), "https://127.0.0.1:1").request("GET", "/readyz")
