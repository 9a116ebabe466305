"""authsidecar: an outbound authentication sidecar for MOEX, KISC and MPT APIs."""

__version__ = "0.1.0"
