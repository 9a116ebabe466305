"""CONNECT interception: the sidecar's own CA, and leaf certificates it mints per host."""
