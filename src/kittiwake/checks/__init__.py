"""Check modules (`check.NAME`): per-message verdicts for the pipeline.

Each module here registers under its configuration name and implements the
`Check` capability of `checks/base.py`, which also holds the action syntax
every check shares (`*_action ignore | quarantine | reject [CODE [ENH
[MESSAGE]]]`); `kittiwake.modules` imports them all. A check never imports
the pipeline: the pipeline imports the contract from here. (`check.spf`
asks `kittiwake.dmarc` for the policy the From domain publishes, so that
it can leave its action to DMARC.)
"""
