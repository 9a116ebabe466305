"""An offline sandbox: local emulators of every API the sidecar speaks to, over real TLS.

- ``pki``: a private CA and certificates; ``servers``: serving an emulator, ``start_sandbox``;
- ``keycloak`` (MOEX SSO), ``ntb`` (MOEX NTB API), ``passport`` and ``registration`` (MOEX
  Passport and client registration), ``wso2`` (KISC), ``mpt`` (ИС МПТ), ``ncanode``;
- ``cms``: signature checks by the real ``openssl cms``; ``controls``: fault injection;
- ``demo``: ``sidecar sandbox``, all of them with a sidecar in front.

Users start it to try the sidecar without credentials; the test suite uses it as faithful
upstreams. Import the submodules directly: the package itself loads nothing, so the sidecar's
own start-up does not pay for the emulators.
"""
