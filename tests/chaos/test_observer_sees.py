"""The observer on real emulated servers, with the harm done by hand (not by k3srotd): it must see each kind.
Without this, a chaos run with no violation could mean an observer that cannot see."""

from __future__ import annotations

import time
from pathlib import Path

from k3semu.harness import EmulatedCluster
from k3semu.keys import marshal_private_key, new_rsa_key

from chaos.observer import Observer


def _wait(o: Observer, invariant: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [v.detail for v in o.violations if v.invariant == invariant]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"the observer saw no {invariant} violation: {[v.detail for v in o.violations]}")


def test_the_observer_sees_a_key_dropped_early_and_servers_that_disagree(tmp_path: Path) -> None:
    emu = EmulatedCluster(2, tmp_path / "k3s").start()
    try:
        o = Observer(emu.servers, str(emu.datastore), grace=600.0, seed=0).start()
        while o.passes < 3:  # tokens of the old key minted on both servers
            time.sleep(0.1)
        assert o.violations == []
        stage = tmp_path / "stage" / "tls"
        stage.mkdir(parents=True)
        (stage / "service.key").write_bytes(marshal_private_key(new_rsa_key()))  # the old key dropped at once
        assert emu[0].rotate_ca(tmp_path / "stage", force=True).returncode == 0

        emu[0].restart()  # server-0 signs with a key server-1 does not list, and no longer lists the old one
        assert "which server-1 does not verify" in _wait(o, "verify")
        assert "before the grace" in _wait(o, "tokens")
        assert [v for v in o.violations if v.invariant == "keys"] == []  # server-1's live file still holds it

        emu[1].restart()  # now no live file and no datastore holds the old private key
        assert "is in no live file nor the datastore" in _wait(o, "keys")
        o.stop()
        assert {v.invariant for v in o.violations} == {"verify", "tokens", "keys"}
    finally:
        emu.stop()
