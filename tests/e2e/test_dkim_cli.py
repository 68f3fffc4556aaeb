"""`kittiwake dkim keygen` as an operator runs it (docs/cli.md, "kittiwake dkim keygen")."""

from __future__ import annotations

import base64
import re
import stat
import subprocess
import sys
from pathlib import Path

import dns.rdatatype
import dns.zone
from kw import env


def keygen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kittiwake", "dkim", "keygen", *args],
        cwd=cwd,
        env=env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def zone_record(stdout: str, name: str) -> bytes:
    """The TXT record stdout describes, read by dnspython's zone-file parser."""
    zone = dns.zone.from_text(
        "$TTL 300\n" + stdout, origin=".", relativize=False, check_origin=False
    )
    rdataset = zone.find_rdataset(name + ".", dns.rdatatype.TXT)
    (rdata,) = list(rdataset)
    strings: list[bytes] = list(rdata.strings)
    assert all(len(s) <= 255 for s in strings)
    return b"".join(strings)


def test_keygen_with_a_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "k.conf"
    conf.write_text(f"state_dir {tmp_path}/state\n")
    first = keygen(tmp_path, "example.org", "s1", "-c", str(conf))
    assert first.returncode == 0, first.stderr
    key = tmp_path / "state" / "dkim_keys" / "example.org_s1.key"
    assert first.stderr == f"{key}: new rsa2048 key\n"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    record = (tmp_path / "state" / "dkim_keys" / "example.org_s1.dns").read_text()
    assert zone_record(first.stdout, "s1._domainkey.example.org") == record.encode()
    assert first.stdout.startswith("; publish at s1._domainkey.example.org\n")
    assert f"; record text: {record}\n" in first.stdout
    # Again: the key is kept, the same record printed.
    again = keygen(tmp_path, "example.org", "s1", "-c", str(conf), "--algo", "ed25519")
    assert again.returncode == 0 and again.stdout == first.stdout
    assert again.stderr == f"{key}: existing rsa2048 key kept\n"


def test_keygen_output_file_and_template(tmp_path: Path) -> None:
    out = keygen(tmp_path, "bücher.example", "ed", "-o", "my.key", "--algo", "ed25519")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "my.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "my.dns").is_file()
    record = zone_record(out.stdout, "ed._domainkey.xn--bcher-kva.example")
    assert re.fullmatch(rb"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", record)
    assert len(base64.b64decode(record.split(b"p=")[1])) == 32
    conf = tmp_path / "k.conf"
    conf.write_text(f"state_dir {tmp_path}/st\n")
    out = keygen(
        tmp_path, "example.org", "s", "-c", str(conf), "--key-path", "k/{selector}-{domain}.pem"
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "st" / "k" / "s-example.org.pem").is_file()
    assert (tmp_path / "st" / "k" / "s-example.org.pem.dns").is_file()
    assert len(zone_record(out.stdout, "s._domainkey.example.org")) > 255  # two strings


def test_keygen_errors(tmp_path: Path) -> None:
    bad = keygen(tmp_path, "bad domain", "s", "-o", "x.key")
    assert bad.returncode == 2 and bad.stderr.startswith("Error: invalid domain or selector")
    bad = keygen(tmp_path, "example.org", "../s", "-o", "x.key")
    assert bad.returncode == 2
    assert keygen(tmp_path, "example.org", "s", "--algo", "rsa1024").returncode == 2
    both = keygen(tmp_path, "example.org", "s", "-o", "a.key", "--key-path", "b")
    assert both.returncode == 2
    missing = keygen(tmp_path, "example.org", "s", "-c", str(tmp_path / "nope.conf"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    (tmp_path / "ec.key").write_text(
        "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n"
    )
    broken = keygen(tmp_path, "example.org", "s", "-o", "ec.key")
    assert broken.returncode == 1 and "ECDSA keys are not supported" in broken.stderr
    assert broken.stdout == ""
    assert not (tmp_path / "x.key").exists()
