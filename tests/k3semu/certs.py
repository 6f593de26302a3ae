"""The server side of `k3s certificate rotate-ca` (pkg/server/handlers/cert.go, caCertReplace).

The uploaded files are written to a temporary server dir; fields not uploaded (or empty, or not tagged for
rotation) take the server's CURRENT DISK files; the result is validated (unless forced) and saved to the
datastore only. The server's own disk files are never touched: each server picks the data up when it
restarts and reconciles."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, List, Optional

from cryptography.hazmat.primitives import serialization

from . import bootstrap, faults, keys, log

_PEM = serialization.Encoding.PEM


class CertError(Exception):
    """Fails the request with 500 and a `certificate error ID` (details only in the server log)."""


def _validate_ca(old_path: str, new_path: str) -> None:
    if old_path == new_path:
        return
    with open(old_path, "rb") as f:
        old_certs = keys.certs_from_pem(f.read())
    with open(new_path, "rb") as f:
        new_certs = keys.certs_from_pem(f.read())
    if len(new_certs) == 1:
        raise CertError(
            "new CA bundle contains only a single certificate but should include root or intermediate CA certificates"
        )
    pool = old_certs + new_certs[1:]
    current = new_certs[0]
    for _ in range(8):
        issuer = next((c for c in pool if keys.signed_by(current, c)), None)
        if issuer is None:
            break
        if any(issuer.public_bytes(_PEM) == o.public_bytes(_PEM) for o in old_certs):
            return
        current = issuer
    raise CertError("new CA cert cannot be verified using old CA chain: x509: certificate signed by unknown authority")


def _validate_ca_key(old_ca: str, old_key: str, new_ca: str, new_key: str) -> None:
    if old_ca == new_ca and old_key == new_key:
        return
    try:
        with open(new_ca, "rb") as f:
            cert = keys.certs_from_pem(f.read())[0]
        with open(new_key, "rb") as f:
            key = keys.first_private_key(f.read())
    except (OSError, ValueError) as exc:
        raise CertError(f"new CA cert and key cannot be loaded as X590KeyPair: {exc}") from exc
    if not keys.same_key(cert.public_key(), key.public_key()):  # type: ignore[arg-type]
        raise CertError("new CA cert and key cannot be loaded as X590KeyPair: private key does not match public key")


def validate_service_key(old_path: str, new_path: str) -> None:
    """The FIRST public key of the current list must appear somewhere in the new list."""
    with open(old_path, "rb") as f:
        old_keys = keys.public_keys(f.read())
    with open(new_path, "rb") as f:
        new_keys = keys.public_keys(f.read())
    if not any(keys.same_key(old_keys[0], k) for k in new_keys):
        raise CertError("old ServiceAccount signing key not in new ServiceAccount key list")


def _validate(old: Dict[str, str], new: Dict[str, str]) -> List[str]:
    errs: List[str] = []
    for name in bootstrap.FIELDS:
        if name not in bootstrap.ROTATE:
            continue
        if name.endswith("CA"):
            try:
                _validate_ca(old[name], new[name])
            except (CertError, OSError, ValueError) as exc:
                errs.append(f"{name}: {exc}")
            try:
                _validate_ca_key(old[name], old[name + "Key"], new[name], new[name + "Key"])
            except (CertError, OSError, ValueError) as exc:
                errs.append(f"{name}Key: {exc}")
        if name == "ServiceKey":
            try:
                validate_service_key(old[name], new[name])
            except (CertError, OSError, ValueError) as exc:
                errs.append(f"{name}: {exc}")
    return errs


def replace(server_dir: str, data_dir: str, body: bytes, force: bool, datastore: bootstrap.Datastore) -> None:
    """Raise CertError (or ValueError) on failure; on success the datastore holds the new data."""
    if faults.take(data_dir, "rotate_ca_fail") is not None:
        raise CertError("emulated failure (fault rotate_ca_fail)")
    tmpdir = tempfile.mkdtemp(dir=server_dir, prefix=".rotate-ca-tmp-")
    try:
        uploaded = bootstrap.decode(body)
        new_paths = bootstrap.paths(tmpdir)
        bootstrap.write_to_disk(uploaded, new_paths)
        old_paths = bootstrap.paths(server_dir)
        for name in bootstrap.FIELDS:
            path = new_paths[name]
            size: Optional[int] = os.path.getsize(path) if path and os.path.exists(path) else None
            if name not in bootstrap.ROTATE or not size:
                log.info(f"Using current data for {name}: {old_paths[name]}")
                new_paths[name] = old_paths[name]
        errs = _validate(old_paths, new_paths)
        if errs:
            message = ", ".join(errs)
            if not force:
                raise CertError("failed to validate new CA certificates and keys: " + message)
            log.warn("Save of CA certificates and keys forced, ignoring validation errors: " + message)
        files = bootstrap.read_from_disk(new_paths)
        if faults.take(data_dir, "datastore_write_fail") is not None:
            raise CertError(
                "failed to save bootstrap data: emulated datastore write failure (fault datastore_write_fail)"
            )
        if faults.take(data_dir, "stale_keys") is not None:
            log.debug("fault stale_keys: bootstrap data not written to the datastore (K3s issue #8952)")
            return
        with datastore.locked():
            datastore.write(files)
    except json.JSONDecodeError as exc:
        raise CertError(str(exc)) from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
