"""Check modules (`check.NAME`): per-message verdicts for the pipeline.

Each module here registers under its configuration name and implements the
`Check` capability of `kittiwake.pipeline.checks`; `kittiwake.modules`
imports them all. The shared action syntax (`*_action ignore | quarantine |
reject [CODE [ENH [MESSAGE]]]`) lives in `kittiwake.pipeline.check_runner`.
"""
