"""Where a restarting server gets its bootstrap data (k3s pkg/cluster/bootstrap.go), by K3s version.

With embedded etcd, a server WITH a join URL (`server:` in its config) first asks that URL over HTTP at every
start (`Bootstrap`: "For secondary servers with etcd, first attempt to connect and reconcile using the join URL",
`httpBootstrap`: GET /v1-k3s/server-bootstrap as user `server`, 15 s timeout, then ReconcileBootstrapData with
isHTTP); if that fails it logs "Unable to reconcile with remote datastore" and reconciles with its local etcd
(`reconcileEtcd`). A server WITHOUT a join URL (the init server) reconciles from the datastore.

The serving side (`serveBootstrap`): since k3s PR #11844 ("Serve HTTP bootstrap data from datastore before disk",
merged 2025-02-25) it answers from the datastore and falls back to its disk; before, it answered with
bootstrap.ReadFromDisk, its OWN disk files. Releases carrying #11844 (backport issues #11910, #11911, #11912,
#11940; see tests/README.md): v1.33.0+k3s1, v1.32.3+k3s1, v1.31.7+k3s1, v1.30.11+k3s1, v1.29.15+k3s1.

The emulator's shared datastore folder stands for etcd; a join URL may name one server or a load balancer.
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import ssl
import urllib.parse
from typing import Optional, Tuple

from . import bootstrap, log

# first patch release of each minor line that carries #11844
FIXED_IN = {29: 15, 30: 11, 31: 7, 32: 3}
FIRST_FIXED_MINOR = 33


def parse_version(text: str) -> Tuple[int, int, int]:
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise ValueError(f"not a K3s version: {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def serves_from_datastore(version: str) -> bool:
    """True when this K3s version answers /v1-k3s/server-bootstrap from the datastore (#11844)."""
    major, minor, patch = parse_version(version)
    if major != 1:
        return major > 1
    if minor >= FIRST_FIXED_MINOR:
        return True
    return minor in FIXED_IN and patch >= FIXED_IN[minor]


def serve(version: str, server_dir: str, datastore: bootstrap.Datastore, peer: str) -> bytes:
    """The body of /v1-k3s/server-bootstrap."""
    if serves_from_datastore(version):
        try:
            with datastore.locked(exclusive=False):
                data = datastore.read()
            if data:
                log.info(f"Serving HTTP bootstrap from datastore for {peer}")
                return bootstrap.encode(data)
            raise ValueError("bootstrap data not found")
        except (OSError, ValueError) as exc:
            log.warn(f"Failed to retrieve HTTP bootstrap data from datastore; falling back to disk for {peer}: {exc}")
    return bootstrap.encode(bootstrap.read_from_disk(bootstrap.paths(server_dir)))


def fetch(join_url: str, password: str, server_dir: str) -> Optional[bootstrap.Files]:
    """httpBootstrap: the join URL's bootstrap data, or None (with K3s's warning) when it cannot be had."""
    url = urllib.parse.urlsplit(join_url)
    ca = os.path.join(server_dir, "tls", "server-ca.crt")
    if not os.path.exists(ca):  # only a server that already joined asks (it has the cluster's CA)
        return None
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # clientaccess verifies the CA, and the serving cert names 127.0.0.1
    auth = base64.b64encode(f"server:{password}".encode()).decode()
    try:
        conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port or 6443, context=ctx, timeout=15)
        try:
            conn.request("GET", "/v1-k3s/server-bootstrap", headers={"Authorization": "Basic " + auth})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise OSError(f"{join_url}/v1-k3s/server-bootstrap: {resp.status} {resp.reason}")
        return bootstrap.decode(body)
    except (OSError, ValueError, ssl.SSLError, http.client.HTTPException) as exc:
        log.warn(f"Unable to reconcile with remote datastore: {exc}")
        return None
