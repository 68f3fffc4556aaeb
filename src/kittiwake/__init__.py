"""kittiwake: a mail server's front door (SMTP, Submission, LMTP)."""

__version__ = "0.1.0"
