"""Shared pytest fixtures. Each section belongs to one part of the suite; keep sections self-contained."""

# --- K3s emulator fixtures ---
# Emulated K3s servers (tests/k3semu, see tests/README.md "The K3s emulator"). Every server a fixture starts
# is stopped at teardown.
import os as _k3semu_os
import sys as _k3semu_sys

import pytest

_k3semu_tests_dir = _k3semu_os.path.dirname(_k3semu_os.path.abspath(__file__))
if _k3semu_tests_dir not in _k3semu_sys.path:
    _k3semu_sys.path.insert(0, _k3semu_tests_dir)

from k3semu import harness as k3semu_harness  # noqa: E402


@pytest.fixture
def k3s_server_factory(tmp_path_factory):
    """Call it to get started EmulatedServer objects: `k3s_server_factory(start=True, **EmulatedServer kwargs)`."""
    made = []

    def make(start=True, **kwargs):
        if "data_dir" not in kwargs:
            kwargs["data_dir"] = tmp_path_factory.mktemp("k3s") / "data"
        srv = k3semu_harness.EmulatedServer(**kwargs)
        made.append(srv)
        if start:
            srv.start()
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def k3s_server(k3s_server_factory):
    """One started emulated K3s server with its own data dir, datastore and free port."""
    return k3s_server_factory()


@pytest.fixture
def k3s_cluster(tmp_path_factory):
    """Three started emulated K3s servers sharing one datastore."""
    cluster = k3semu_harness.EmulatedCluster(3, tmp_path_factory.mktemp("k3s-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# --- end of K3s emulator fixtures ---

# --- parallel runs (pytest-xdist, --dist loadgroup) ---
# The package builds and the containers share one build tree, one cached Debian root and the host's loopback
# (K3s's fixed ports): every test that builds or boots runs on one worker, one at a time.


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("nspawn") or "nspawn" in item.path.parts:
            item.add_marker(pytest.mark.xdist_group("nspawn"))
        if {"cluster", "chaos"} & set(item.path.parts):
            item.add_marker(pytest.mark.cluster)


# --- end of parallel runs ---
