"""Modifiers: modules that rewrite a message's envelope or add header fields.

The contract (`Modifier`, `ModifierState`) is in `modify/base.py`.
`modify.replace_rcpt` / `modify.replace_sender` (replace_addr.py) map
addresses through a table; DKIM signing will live here too.
"""
