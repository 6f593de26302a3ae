"""`GET .../leases?watch=true`: a Kubernetes watch of Leases, as kube-apiserver serves it.

- apiserver/pkg/endpoints/handlers/watch.go (serveWatch): HTTP 200, `Transfer-Encoding: chunked`, one JSON
  WatchEvent `{"type": ADDED|MODIFIED|DELETED|ERROR, "object": ...}` per chunk, the stream ended after
  `timeoutSeconds` (the apiserver's default: a random time within --min-request-timeout 1800 s and twice that).
- apiserver/pkg/storage/cacher (Watch, getAllEventsSinceLocked): a watch without resourceVersion first sends the
  current objects as ADDED; with a resourceVersion, only the changes after it. One older than the watch cache
  holds is answered with an ERROR event carrying a 410 Status, reason Expired, "too old resource version"
  (newErrWatcher: the request itself succeeded). The cache starts at the apiserver's start, so here a
  resourceVersion from before this server process started is too old.
- fieldSelector: `metadata.name=NAME` (the field every object supports); labelSelector as in objects.selected.
The emulator keeps no event history: it compares the store against what it sent every 0.1 s, so several writes
within that time arrive as one MODIFIED (the last state), which a client that reads the object from the event
cannot tell from kube-apiserver's.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Optional

from . import objects

MAX_TIMEOUT = 1800


def serve(write: Callable[[bytes], None], store_dir: str, ns: str, query: Dict[str, Any], oldest: int) -> None:
    """Stream the events; `write` sends one chunk (b"" ends the stream)."""
    field = (query.get("fieldSelector") or [""])[0]
    name = field.split("=", 1)[1] if field.startswith("metadata.name=") else None
    rv_text = (query.get("resourceVersion") or [""])[0]
    timeout = float((query.get("timeoutSeconds") or [str(MAX_TIMEOUT)])[0])
    deadline = time.monotonic() + min(timeout, MAX_TIMEOUT)
    if rv_text and rv_text != "0" and int(rv_text) < oldest:
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {rv_text} ({oldest})",
            "reason": "Expired",
            "code": 410,
        }
        write(_event("ERROR", status))
        write(b"")
        return
    sent: Dict[str, str] = {}
    first = not rv_text or rv_text == "0"
    since = 0 if first else int(rv_text)
    mtime: Optional[float] = None
    while time.monotonic() < deadline:
        try:
            m = os.stat(os.path.join(store_dir, "objects.json")).st_mtime
        except FileNotFoundError:
            m = 0.0
        if m != mtime:
            mtime = m
            items = {
                o["metadata"]["name"]: o
                for o in objects.list_leases(store_dir, ns)["items"]
                if name is None or o["metadata"]["name"] == name
            }
            for key, obj in items.items():
                rv = obj["metadata"]["resourceVersion"]
                if sent.get(key) == rv:
                    continue
                if first or int(rv) > since:
                    write(_event("ADDED" if first or key not in sent else "MODIFIED", obj))
                sent[key] = rv
            for key in [k for k in sent if k not in items]:
                del sent[key]
                if not first:
                    write(_event("DELETED", {"metadata": {"name": key, "namespace": ns}}))
            first = False
        time.sleep(0.1)
    write(b"")


def stream(handler: Any, store_dir: str, ns: str, query: Dict[str, Any]) -> None:
    """Serve the watch on `handler` (api.Handler): chunked, the connection closed after the stream."""
    oldest = handler.state.extra.setdefault("watch_from", objects.revision(store_dir))
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def chunk(data: bytes) -> None:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    serve(chunk, store_dir, ns, query, int(oldest))
    handler.close_connection = True


def audit(data_dir: str, user: str, verb: str, uri: str) -> None:
    """One line per API request in <data-dir>/emulator/audit.jsonl when <data-dir>/emulator/audit exists, as
    kube-apiserver's audit log at level Metadata (one event per request, here at RequestReceived)."""
    d = os.path.join(data_dir, "emulator")
    if not os.path.exists(os.path.join(d, "audit")):
        return
    line = {"time": time.time(), "user": user, "verb": verb, "uri": uri}
    with open(os.path.join(d, "audit.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def _event(kind: str, obj: Dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"
