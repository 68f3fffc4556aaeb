"""DKIM pieces shared by `check.dkim` and `modify.dkim` (docs/checks.md, docs/modify.md).

`body` canonicalizes and hashes a message body in one streaming pass,
`keys` reads, makes and describes signing keys, `verify` and `sign` are the
synchronous halves that run in worker threads around dkimpy. The modules
themselves live where their configuration names put them:
`checks/dkim.py` and `modify/dkim.py`.
"""
