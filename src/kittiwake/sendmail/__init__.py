"""`kittiwake sendmail`: a local program's message to the local server (docs/sendmail.md).

* `sendmail.message` - the message read from stdin: header and body lines,
  `-t` recipients, the fields a submission server would add;
* `sendmail.endpoint` - which endpoint of the configuration to talk to;
* `sendmail.deliver` - the SMTP/LMTP transaction and the sendmail exit status.

The command line itself is `kittiwake/cli/sendmail.py`.
"""
