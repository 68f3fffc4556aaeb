"""Mailbox addresses: parsing SMTP paths, IDNA, case folding, sub-addresses.

Every part of kittiwake that touches an envelope address goes through this
package, so "what is an address" and "when are two addresses the same" are
answered in one place. Callers import from here (`from kittiwake import
address`, `address.clean_address(...)`); the modules behind it each do one
job:

* `address.path` - the RFC 5321 path grammar (`parse_reverse_path`,
  `parse_forward_path`), the one the server runs, the `Address` model, the
  length limits, `split` and quoting;
* `address.domain` - domains: IDNA (A-labels and U-labels), address
  literals, the lookup form of a domain;
* `address.normalize` - the clean and lookup forms of a whole address, the
  PRECIS storage forms (`NORMALIZERS`) and routing-rule keys;
* `address.errors` - `AddressError` and its kinds, and `REPLIES`.

Forms of an address (docs/address.md, "The forms of an address"):

* **internal form** - what `Address.__str__` gives and what the pipeline,
  checks and targets pass around: the local part *unquoted* (`"john doe"@x`
  is `john doe@x`), so the same mailbox has one spelling however the client
  quoted it. `split` therefore cuts at the *last* `@`. `quote_local_part`
  (and `Address.wire`) turn it back into RFC 5321 syntax for the wire.
* **clean form** (`clean_address`) - domain in U-labels, NFC, lowercase;
  local part untouched. What the endpoint hands the pipeline.
* **lookup form** (`normalize_address`) - clean form plus a NFC-lowercased
  local part. Keys of routing rules and tables.
* **storage forms** (`NORMALIZERS`) - PRECIS and friends (docs/address.md),
  for user names and mailbox names.

Errors are `AddressError` (a `ValueError`) subclasses with a `reason` for
the log. `AddressError.smtp_error(role)` gives the reply for that kind of
failure at MAIL or RCPT from `REPLIES`, the one table of those replies
(docs/address.md, "Errors and replies"); the protocol core and the server
both answer from it. (The pipeline's own normalisation failures, in routing
rules and tables, use other codes and build their replies themselves.)

This package performs no I/O and may be used by the sans-IO protocol core.
"""

from __future__ import annotations

from kittiwake.address.domain import normalize_domain, to_alabel_domain, to_ulabel_domain
from kittiwake.address.errors import (
    REPLIES,
    AddressError,
    MailboxSyntaxError,
    NormalizationError,
    PathSyntaxError,
    PathTooLong,
    Role,
    SMTPUTF8Required,
)
from kittiwake.address.normalize import (
    NORMALIZERS,
    clean_address,
    clean_path,
    get_normalizer,
    is_valid_address_rule,
    is_valid_domain_rule,
    normalize_address,
    normalize_rule,
    precis,
    precis_casefold,
    precis_casefold_email,
    precis_email,
)
from kittiwake.address.path import (
    MAX_DOMAIN,
    MAX_LABEL,
    MAX_LOCAL_PART,
    MAX_PATH,
    MAX_RULE_ADDRESS,
    NULL_ADDRESS,
    Address,
    needs_smtputf8,
    parse_forward_path,
    parse_reverse_path,
    quote_local_part,
    split,
    split_subaddress,
)

__all__ = [
    "MAX_DOMAIN",
    "MAX_LABEL",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "MAX_RULE_ADDRESS",
    "NORMALIZERS",
    "NULL_ADDRESS",
    "REPLIES",
    "Address",
    "AddressError",
    "MailboxSyntaxError",
    "NormalizationError",
    "PathSyntaxError",
    "PathTooLong",
    "Role",
    "SMTPUTF8Required",
    "clean_address",
    "clean_path",
    "get_normalizer",
    "is_valid_address_rule",
    "is_valid_domain_rule",
    "needs_smtputf8",
    "normalize_address",
    "normalize_domain",
    "normalize_rule",
    "parse_forward_path",
    "parse_reverse_path",
    "precis",
    "precis_casefold",
    "precis_casefold_email",
    "precis_email",
    "quote_local_part",
    "split",
    "split_subaddress",
    "to_alabel_domain",
    "to_ulabel_domain",
]
