"""Delivery to the internet by MX: `target.remote` (docs/target-remote.md).

* `remote.target` - the `target.remote` module and its per-message delivery;
* `remote.mx` - MX lookup and ordering, implicit and null MX;
* `remote.connect` - dialling an MX, STARTTLS with its fallbacks, the
  `mx_auth` policy checks, REQUIRETLS, TLS report records;
* `remote.pool` - the idle connections kept per destination domain.
"""
