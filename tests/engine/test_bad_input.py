"""Bad input: one clear line naming the path or key and what to do, the documented exit code, nothing changed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from k3srotd_node import Node


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("k3srotd: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _encrypted() -> bytes:
    k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"x")
    )


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"this is not a key\n", "holds no PEM key"),
        (b"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n", "truncated"),
        ("encrypted", "encrypted"),
    ],
)
@pytest.mark.parametrize("command", [["rotate-now"], ["prune"], ["status"], ["rollback", "--yes"]])
def test_bad_live_key_file_is_refused(node: Node, content: object, words: str, command: list[str]) -> None:
    path = node.server.service_key
    if content is None:
        path.unlink()
    else:
        path.write_bytes(_encrypted() if content == "encrypted" else content)  # type: ignore[arg-type]
    before = path.read_bytes() if path.exists() else None
    pid = node.server.pid
    proc = node.k3srotd(*command)
    assert proc.returncode == 3, proc.stderr
    line = _last_line(proc)
    assert str(path) in line and words in line
    assert (path.read_bytes() if path.exists() else None) == before
    assert node.server.pid == pid
    assert not (node.state_dir / "backups").exists()


def test_agent_node_or_no_k3s(node: Node, tmp_path: Path) -> None:
    agent = tmp_path / "agent-data"
    (agent / "agent").mkdir(parents=True)
    node.write_config(k3s_data_dir=str(agent))
    for cmd in (["rotate-now"], ["prune"]):
        proc = node.k3srotd(*cmd)
        assert proc.returncode == 3
        assert "not a K3s server node" in _last_line(proc) and str(agent / "server") in _last_line(proc)
    doctor = node.k3srotd("doctor")
    assert doctor.returncode != 0 and "FAIL  K3s server node" in doctor.stdout


def test_k3s_binary_missing(node: Node, tmp_path: Path) -> None:
    node.write_config(k3s_bin=str(tmp_path / "no" / "k3s"))
    live = node.live_bytes()
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 2
    assert str(tmp_path / "no" / "k3s") in _last_line(proc) and "k3s-bin" in _last_line(proc)
    assert node.live_bytes() == live


def test_k3s_not_running(node: Node) -> None:
    node.server.stop()
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3
    assert "no `k3s server` process" in _last_line(proc)
    assert not (node.staging_dir / "server" / "tls" / "service.key").exists()


def test_api_unreadable_while_k3s_runs_is_refused(node: Node, tmp_path: Path) -> None:
    """Without the API this server cannot tell whether it is one of several, which must not act alone."""
    node.write_config(kubeconfig=str(tmp_path / "missing-k3s.yaml"))
    pid, live = node.server.pid, node.live_bytes()
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3, proc.stderr
    line = _last_line(proc)
    assert "cannot reach the API" in line and "missing-k3s.yaml" in line and "restarts nothing" in line
    assert node.server.pid == pid and node.live_bytes() == live
    assert not (node.state_dir / "backups").exists()


def test_staging_dir_unwritable(node: Node, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    node.write_config(staging_dir=str(blocker / "k3s"))
    live = node.live_bytes()
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 2, proc.stderr
    assert str(blocker) in _last_line(proc)
    assert node.live_bytes() == live
    assert "interrupted" not in node.ok("status").stdout


def test_staging_symlink_and_foreign_files_are_refused(node: Node, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    node.staging_dir.parent.mkdir(parents=True)
    node.staging_dir.symlink_to(elsewhere)
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3 and "is a symlink" in _last_line(proc)
    assert list(elsewhere.iterdir()) == []
    node.staging_dir.unlink()
    tls = node.staging_dir / "server" / "tls"
    tls.mkdir(parents=True)
    (tls / "server-ca.crt").write_text("someone else's\n")
    proc = node.k3srotd("rotate-now")
    assert proc.returncode == 3 and "server-ca.crt" in _last_line(proc)
    assert (tls / "server-ca.crt").read_text() == "someone else's\n"
    assert not (tls / "service.key").exists()


def test_corrupt_state_is_kept_aside_and_rebuilt(node: Node) -> None:
    node.state_dir.mkdir(mode=0o700)
    (node.state_dir / "state.json").write_text("{ this is not json")
    node.ok("rotate-now")
    aside = [p for p in node.state_dir.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == "{ this is not json"
    assert "state.rebuilt" in {e["event"] for e in node.events()}
    assert node.status()["phase"] == "promoted"


@pytest.mark.parametrize("command", [["rotate-now"], ["prune", "--force", "--yes"]])
def test_signer_rotated_by_hand_is_adopted(node: Node, command: list[str]) -> None:
    node.ok("rotate-now")
    st = node.status()
    # an operator follows the K3s docs by hand: a new key first, then the old ones
    staging = node.root / "by-hand" / "server" / "tls"
    staging.mkdir(parents=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    (staging / "service.key").write_bytes(pem + node.live_bytes())
    assert node.server.rotate_ca(node.root / "by-hand" / "server").returncode == 0
    node.server.restart()
    live = node.live_bytes()
    proc = node.k3srotd(*command)
    assert proc.returncode == 3
    assert "changed outside k3srotd" in _last_line(proc) and "Adopted" in _last_line(proc)
    assert node.live_bytes() == live
    st2 = node.status()
    assert st2["signer_kid"] != st["signer_kid"]
    assert st2["keys"][1]["kid"] == st["signer_kid"] and st2["keys"][1]["retired_at"] is not None
    node.ok(*command)  # from the adopted signer on
    assert node.status()["signer_kid"] != st["signer_kid"]


@pytest.mark.parametrize(
    "text, words",
    [("grace-perod: 24h\n", "unknown key 'grace-perod'"), ("key-size: 1000\n", "key 'key-size'")],
)
def test_bad_config_exit_2(node: Node, text: str, words: str) -> None:
    dropin = Path(str(node.config) + ".d")
    dropin.mkdir()
    (dropin / "50-bad.yaml").write_text(text)
    for cmd in (["rotate-now"], ["status"], ["doctor"], ["run"]):
        proc = node.k3srotd(*cmd)
        assert proc.returncode == 2, (cmd, proc.stderr)
        assert str(dropin / "50-bad.yaml") in _last_line(proc) and words in _last_line(proc)


def test_grace_shorter_than_k3s_token_expiration(node: Node) -> None:
    node.k3s_config.write_text("kube-apiserver-arg:\n- service-account-max-token-expiration=48h\n")
    proc = node.k3srotd("status")
    assert proc.returncode == 2
    assert "grace-period" in _last_line(proc) and "max-token-expiration" in _last_line(proc)


def test_prune_force_needs_yes_without_a_terminal(node: Node) -> None:
    node.ok("rotate-now")
    live = node.live_bytes()
    proc = node.k3srotd("prune", "--force")
    assert proc.returncode == 2 and "--yes" in _last_line(proc)
    assert node.live_bytes() == live
    node.ok("prune", "--force", "--yes")
    assert len(node.status()["keys"]) == 1


def test_files_and_logs_never_expose_key_material(node: Node) -> None:
    node.ok("rotate-now")
    node.write_config(grace_period="0s")
    node.ok("prune")
    node.ok("doctor") if False else node.k3srotd("doctor")
    node.ok("status")
    text = "\n".join(node.logs)
    assert "PRIVATE KEY" not in text
    # no line of any key body ever seen (the backups hold every key k3srotd touched)
    bodies = set()
    for b in (node.state_dir / "backups").iterdir():
        for line in b.read_text().splitlines():
            if line and not line.startswith("-----"):
                bodies.add(line)
    assert bodies and not any(body in text for body in bodies)
    # and the key files it wrote were private
    for p in (node.state_dir / "backups").iterdir():
        assert os.stat(p).st_mode & 0o077 == 0
