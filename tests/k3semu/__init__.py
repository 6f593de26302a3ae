"""A K3s emulator for the test suite.

It stands in for the `k3s` binary where k3srotd touches it: `k3s server` (bootstrap files, datastore
reconcile, the admin kubeconfig, HTTPS with JWKS, TokenRequest and TokenReview, the rotate-ca endpoint),
`k3s certificate rotate-ca`, and a restart helper. Test support only; never installed.
"""

import os as _os

# What `k3s --version` and /version report; K3SEMU_VERSION overrides it (e.g. to test version checks).
VERSION = _os.environ.get("K3SEMU_VERSION", "v1.31.4+k3s1")
