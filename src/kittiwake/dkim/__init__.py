"""DKIM pieces shared by `check.dkim` and `modify.dkim` (docs/checks.md, docs/modify.md).

`body` canonicalizes and hashes a message body in one streaming pass,
`header` parses tag lists and builds the signed header data, `keys`
reads, makes and describes signing keys, `verify` and `sign` are the
synchronous halves (run on the event loop or in a worker thread) that
use dkimpy only where its rules are the reference. The modules
themselves live where their configuration names put them:
`checks/dkim.py` and `modify/dkim.py`.
"""
