"""What status and doctor say about untrusted paths and the live file; backups and the rollback rule."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from k3srotd_node import Node

from k3srotd.core import keys
from k3srotd.core.model import Intent, KeyRecord, State
from k3srotd.errors import SafetyRefusal
from k3srotd.node import trust
from k3srotd.node.files import Backups, sha256

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _rsa1024() -> bytes:
    k = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key reported
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def test_live_findings_table(tmp_path: Path) -> None:
    f = tmp_path / "service.key"
    weak = _rsa1024()
    f.write_bytes(weak + b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n")
    os.chmod(f, 0o644)
    link = tmp_path / "link.key"
    link.symlink_to(f)
    kf = keys.parse(f.read_bytes(), str(f))
    found = trust.live_findings(os.lstat(link), os.stat(link), kf)
    assert [x.split(" ", 3)[:3] for x in found] == [
        ["is", "a", "symlink;"],
        ["has", "mode", "0644,"],
        ["holds", "RSA-1024", "key"],
        ["holds", "PEM", "block"],
    ]
    os.chmod(f, 0o600)
    good = keys.parse(keys.generate(2048).raw, "g")
    assert trust.live_findings(os.lstat(f), os.stat(f), good) == []


def test_status_and_doctor_name_a_readable_live_file_and_untrusted_paths(node: Node) -> None:
    os.chmod(node.server.service_key, 0o644)
    node.state_dir.mkdir(mode=0o700)
    os.chown(node.state_dir, 65534, 65534)
    status = node.k3srotd("status")
    assert f"{node.server.service_key}: has mode 0644" in status.stdout
    doctor = node.k3srotd("doctor")
    assert doctor.returncode == 1
    assert f"FAIL  ownership: {node.state_dir}: is owned by uid 65534" in doctor.stdout
    assert "WARN  live service.key:" in doctor.stdout and "mode 0644" in doctor.stdout


def test_backups_are_read_only_in_place_and_unchanged(tmp_path: Path) -> None:
    b = Backups(tmp_path / "backups", 10)
    data = keys.generate(2048).raw
    p = b.save(data, "publish", NOW)
    assert b.read(str(p), sha256(data)) == data
    with pytest.raises(SafetyRefusal, match="changed since"):
        b.read(str(p), sha256(b"other"))
    outside = tmp_path / "evil.key"
    outside.write_bytes(data)
    with pytest.raises(SafetyRefusal, match="is not a backup"):
        b.read(str(outside))
    with pytest.raises(SafetyRefusal, match="is not a backup"):
        b.read(str(b.dir / ".." / "evil.key"))
    inside_link = b.dir / "20990101T000000.000000Z-rotate.key"
    inside_link.symlink_to(outside)
    with pytest.raises(SafetyRefusal, match="symlink"):
        b.read(str(inside_link))
    assert inside_link not in b.files()


def test_a_symlinked_backups_dir_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "backups").symlink_to(elsewhere)
    with pytest.raises(SafetyRefusal, match="symlink"):
        Backups(tmp_path / "backups", 10).save(b"x", "publish", NOW)
    assert list(elsewhere.iterdir()) == []


def test_pruned_keys_leave_the_backups_but_the_rollback_one(tmp_path: Path) -> None:
    old, new = keys.generate(2048), keys.generate(2048)
    b = Backups(tmp_path / "backups", 10)
    before_rotate = b.save(old.raw, "publish", NOW)
    both = b.save(new.raw + old.raw, "promote", NOW + dt.timedelta(seconds=1))
    before_prune = b.save(new.raw + old.raw, "prune", NOW + dt.timedelta(seconds=2))
    assert b.drop_gone_keys([new.kid], protect={str(before_prune)}) == [before_rotate, both]
    assert b.files() == [before_prune]
    assert b.drop_gone_keys([new.kid], protect=set()) == [before_prune]


@pytest.mark.parametrize(
    "known, verdict",
    [("state", None), ("intent-target", None), ("last-step-before", None), ("nowhere", "no k3srotd step staged")],
)
def test_a_rollback_keeps_only_a_signer_some_step_staged_or_the_state_knows(known: str, verdict: object) -> None:
    kid = "K" * 43
    s = State()
    intent = Intent("promote", NOW, ["a"], ["b", "a"], "/b", "x", "restarting", {"keys": {}})
    s.intent = intent
    if known == "state":
        s.keys[kid] = KeyRecord(first_seen=NOW)
    elif known == "intent-target":
        intent.target_kids.append(kid)
    elif known == "last-step-before":
        from k3srotd.core.model import LastStep

        s.last_step = LastStep("publish", NOW, [kid], ["a"], "/b", {"keys": {}})
    why = trust.unknown_signer(kid, s)
    assert (why is None) if verdict is None else (verdict in (why or ""))
