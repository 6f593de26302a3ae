"""k3srotd: rotates the service-account signing key of K3s servers.

Nothing is imported here but the version: `k3srotd --version` must stay as cheap as importing click.
"""

__version__ = "0.1.0"
