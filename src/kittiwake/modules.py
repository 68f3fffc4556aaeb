"""Every built-in module, imported here so that each registers itself.

This is the full list of what a configuration can name.
"""

from kittiwake.config import tls  # noqa: F401  (tls.loader.*)
from kittiwake.tables import (  # noqa: F401
    chain,
    email,
    file,
    regexp,
    sql,
    static,
)
