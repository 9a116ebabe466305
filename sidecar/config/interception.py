"""The ``interception`` block: CONNECT to a host an upstream matches is answered with a leaf
certificate signed by the sidecar's own CA, and the requests inside run through the pipeline.

Present (even empty: ``interception: {}``) means on; absent means off (CONNECT is refused,
or tunnelled untouched for ``passthrough`` hosts). ``upstreams.<name>.interception: false``
turns it off for one upstream."""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from sidecar.config.fields import ExistingFile, Model


class Interception(Model):
    ca_cert_file: ExistingFile | None = None
    ca_key_file: ExistingFile | None = None
    # Where a CA is generated on first start when no files are given (keep it on a volume:
    # a new CA every start means every app's trust store is stale).
    state_dir: Path = Path("/var/lib/sidecar")

    @model_validator(mode="after")
    def _pair(self) -> Interception:
        if (self.ca_cert_file is None) != (self.ca_key_file is None):
            raise ValueError("ca_cert_file and ca_key_file go together: give both or neither")
        return self
