"""Followers watch the step and token-check Leases instead of polling them: a Kubernetes watch (one long GET with
`watch=true`, a chunked stream of JSON WatchEvents), so an idle cluster costs a request every few minutes per
server, while a new step or token check is noticed within a second.

Semantics as kube-apiserver's (apiserver/pkg/endpoints/handlers/watch.go, pkg/storage/cacher): without a
resourceVersion the stream starts with the object as ADDED; with one, only later changes come; one too old is
answered by an ERROR event with a 410 Status (or, from an apiserver without a watch cache, HTTP 410), after which
the watch starts again without one. The stream ends after timeoutSeconds, and is opened again.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any, Callable, Iterator

from k3srotd.cluster.leases import LEASES
from k3srotd.node.kubeapi import APIError, KubeAPI

TIMEOUT = 600  # seconds a watch stays open: one request per 10 minutes per lease at idle
RETRY = 5.0  # after the API could not be reached


class Expired(Exception):
    """The resourceVersion is older than the apiserver keeps: watch again from now."""


def events(api: KubeAPI, name: str, rv: str, timeout: int = TIMEOUT) -> Iterator[tuple[str, dict[str, Any]]]:
    """("", {}) once the watch is open, then (type, object) for each change of Lease `name` after resourceVersion
    `rv`, until the apiserver ends the stream. APIError when it cannot be read; Expired on a 410."""
    url = urllib.parse.urlsplit(api.server_url)
    params = {"watch": "true", "fieldSelector": f"metadata.name={name}", "timeoutSeconds": str(timeout)}
    if rv:
        params["resourceVersion"] = rv
    query = urllib.parse.urlencode(params)
    path = f"{url.path.rstrip('/')}{LEASES}?{query}"
    conn = http.client.HTTPSConnection(
        url.hostname or "127.0.0.1", url.port or 443, timeout=timeout + 30, context=api._context()
    )
    headers = {"Accept": "application/json"}
    if api._token:
        headers["Authorization"] = f"Bearer {api._token}"
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status == 410:
            raise Expired(f"{name}: HTTP 410")
        if resp.status != 200:
            raise APIError(f"{api.server_url}{LEASES} (watch {name}): HTTP {resp.status}", resp.status)
        yield "", {}  # open: every change from now on comes
        for line in resp:
            if not line.strip():
                continue
            ev = json.loads(line)
            obj = ev.get("object") or {}
            if ev.get("type") == "ERROR":
                if obj.get("code") == 410:
                    raise Expired(f"{name}: {obj.get('message')}")
                raise APIError(f"{api.server_url}{LEASES} (watch {name}): {obj.get('message')}", obj.get("code", 0))
            yield str(ev.get("type")), obj
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise APIError(f"{api.server_url}{LEASES} (watch {name}): {type(e).__name__}: {e}") from None
    finally:
        conn.close()


class Watcher:
    """A thread per Lease, calling `changed()` at each change after the first state it saw. `healthy` while every
    watch is open: the daemon then looks at the cluster rarely, else every few seconds (as before watches)."""

    def __init__(self, api: Callable[[], KubeAPI], names: tuple[str, ...], changed: Callable[[], None]) -> None:
        self.api = api
        self.names = names
        self.changed = changed
        self.stopped = threading.Event()
        self.open: dict[str, bool] = {n: False for n in names}

    @property
    def healthy(self) -> bool:
        return all(self.open.values())

    def start(self) -> None:
        for n in self.names:
            threading.Thread(target=self._run, args=(n,), name=f"watch-{n}", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self, name: str) -> None:
        rv = ""
        while not self.stopped.is_set():
            try:
                if not rv:  # start from now: the list's resourceVersion (a watch from "" would replay the state)
                    rv = _list_version(self.api(), name)
                for kind, obj in events(self.api(), name, rv):
                    self.open[name] = True
                    if kind:
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        self.changed()
            except Expired:
                rv = ""
                self.changed()  # something may have changed that it did not see
            except APIError:
                self.open[name] = False
                self.stopped.wait(RETRY)


def _list_version(api: KubeAPI, name: str) -> str:
    selector = urllib.parse.quote(f"metadata.name={name}", safe="")
    status, doc = api.call("GET", f"{LEASES}?fieldSelector={selector}")
    rv = (doc.get("metadata") or {}).get("resourceVersion") if status == 200 and isinstance(doc, dict) else None
    if not rv:
        raise APIError(f"{api.server_url}{LEASES}: HTTP {status}", status)
    return str(rv)
