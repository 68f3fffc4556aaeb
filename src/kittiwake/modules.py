"""Every built-in module, imported here so that each registers itself.

This is the full list of what a configuration can name. The registry in
`kittiwake.module` never imports it; the program's entry point
(`kittiwake.cli`) does, as the composition root, and so do the tests that
build configurations (`tests/conftest.py`).
"""

from kittiwake import limits, openmetrics  # noqa: F401  (limits, openmetrics)
from kittiwake.auth import (  # noqa: F401  (auth.*)
    dovecot_sasl,
    external,
    pam,
    pass_table,
    plain_separate,
    shadow,
)
from kittiwake.checks import (  # noqa: F401
    authorize_sender,
    dns,  # require_mx_record, require_matching_rdns
    dnsbl,
    require_tls,
    spf,
)
from kittiwake.checks import dkim as check_dkim  # noqa: F401
from kittiwake.modify import dkim as modify_dkim  # noqa: F401
from kittiwake.modify import replace_addr  # noqa: F401  (modify.replace_rcpt/_sender)
from kittiwake.mx_auth import dane, local, mtasts  # noqa: F401  (mx_auth policies)
from kittiwake.mx_auth import dnssec as mx_auth_dnssec  # noqa: F401  (mx_auth dnssec)
from kittiwake.pipeline import groups  # noqa: F401  (msgpipeline, checks, modifiers)
from kittiwake.queue import target as queue_target  # noqa: F401  (target.queue)
from kittiwake.remote import target as remote_target  # noqa: F401  (target.remote)
from kittiwake.server import endpoint  # noqa: F401  (smtp, submission, lmtp)
from kittiwake.state import redis as state_redis  # noqa: F401  (state.redis)
from kittiwake.storage import maildir  # noqa: F401
from kittiwake.tables import (  # noqa: F401
    chain,
    email,
    file,
    regexp,
    sql,
    static,
)
from kittiwake.targets import dummy  # noqa: F401
from kittiwake.targets import smtp as target_smtp  # noqa: F401  (target.smtp, target.lmtp)
from kittiwake.tls import loaders  # noqa: F401  (tls.loader.*)
