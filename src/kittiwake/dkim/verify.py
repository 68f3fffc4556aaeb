"""Verifying DKIM signatures, the body hashed apart (RFC 6376 §6, RFC 8463).

Strategy. dkimpy verifies a message it holds whole in memory: it hashes
`self.body`, and its `verify()` turns a bad key into a bare `False`. So
kittiwake does the work in pieces, in three steps that `checks/dkim.py`
drives, and uses dkimpy only where its rules are the reference:

1. `prepare`: each `DKIM-Signature` field is parsed once
   (`kittiwake.dkim.header.parse_tags`) and checked by dkimpy's field
   rules (`signature_problem`: the rules and words of dkimpy's
   `validate_signature_fields`, which compiles its patterns on every
   call; the tests compare the two), then with the rules dkimpy leaves
   out (From must be signed, `rsa-sha1` is refused, `l=` only when
   allowed). What survives says which TXT record holds its key and which
   body hash it needs (a `BodySpec`).
2. The event loop looks the keys up through kittiwake's resolver, all at
   once, while the body is streamed once through
   `kittiwake.dkim.body.BodyHasher` for every spec at the same time (a
   small body held in memory goes in one piece).
3. `finish`: per signature, the key record is checked (revoked, wrong
   type, size), the streamed body hash is compared with `bh=`, the signed
   header fields are canonicalized and hashed
   (`kittiwake.dkim.header.signed_header_data`, byte for byte what
   dkimpy hashes), and `cryptography` verifies the signature: dkimpy's
   own RSA is pure Python, and its number conversions alone cost more
   than the whole check should. A key record is read once and kept (by
   its bytes: what it says, and its public key, parsed by dkimpy's
   rules), since a busy MX sees the same few keys all day.

For a message in memory with a signature or two, all of it runs on the
event loop: a thread hop costs more than the work.

Limits against a hostile message: `check.dkim` verifies at most
`max_signatures` fields; an RSA key over 16384 bits or with a public
exponent over 64 bits is refused (OpenSSL's limits), so one verification
costs bounded time; reasons copied into `Authentication-Results` are
cleaned of control characters and cut short.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import cast

import dkim
import dkim.util
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from kittiwake.dkim.body import BodyHasher, BodySpec, Canon
from kittiwake.dkim.header import parse_tags, signed_header_data
from kittiwake.message.header import Header

__all__ = [
    "MAX_RSA_BITS",
    "Outcome",
    "Pending",
    "clean",
    "dkimpy_headers",
    "finish",
    "prepare",
    "signature_problem",
]

#: OpenSSL's limits (OPENSSL_RSA_MAX_MODULUS_BITS, ..._MAX_PUBEXP_BITS):
#: beyond them one verification could cost seconds of CPU.
MAX_RSA_BITS = 16384
MAX_RSA_EXPONENT_BITS = 64
#: RFC 8301 §3.2: keys under 1024 bits MUST NOT be considered valid.
MIN_RSA_BITS = 1024
#: Longest text taken from a message or a key into a reason.
MAX_REASON = 120

_SIG_NAME = b"dkim-signature"
_REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
_H_SPLIT = re.compile(rb"\s*:\s*")  # how `_signed_names` splits
#: What `\s` is in a bytes pattern, deleted with `bytes.translate`.
_WSP = b" \t\n\r\x0b\x0c"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = Prehashed(hashes.SHA256())


def clean(text: str | bytes, limit: int = MAX_REASON) -> str:
    """Text from a message fit for a header field: no control characters, short.

    White space runs become one space and the ends are trimmed. Printable
    text has no white space but the ASCII space, so text already in that
    form (a domain, most reasons) is only checked.
    """
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not text.isprintable() or text[0] == " " or text[-1] == " " or "  " in text:
        text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(slots=True)
class Outcome:
    """The verdict on one signature: an RFC 8601 `dkim=` result."""

    result: str  # pass, fail, permerror, temperror, neutral
    domain: str = ""
    identity: str = ""
    reason: str = ""


@dataclass(slots=True)
class Pending:
    """A well-formed signature waiting for its key and its body hash."""

    index: int  # among the DKIM-Signature fields, from the top
    tags: dict[bytes, bytes]
    signed: list[bytes]  # h=, lowercase
    field: tuple[bytes, bytes]  # (name, value) as dkimpy holds it
    domain: str
    identity: str
    key_name: str  # SELECTOR._domainkey.DOMAIN
    body: BodySpec
    relaxed_header: bool = False  # c= header canonicalization
    key_record: bytes | None = None
    outcome: Outcome | None = None


def dkimpy_headers(header: Header) -> list[list[bytes]]:
    """The header as dkimpy holds it: `[name, value]` with CR LF line ends.

    The name is everything before the first colon and the value everything
    after, so `name + b":" + value` is the field's exact bytes (simple
    canonicalization hashes those); a bare LF (possible with BDAT) counts
    as a line end, as dkimpy's own parser would read it.
    """
    out: list[list[bytes]] = []
    for f in header:
        raw = f.raw
        # Most fields are one line ending in CR LF: nothing to count.
        one_line = raw.endswith(b"\r\n") and raw.find(b"\n", 0, -1) < 0
        if not one_line and raw.count(b"\n") != raw.count(b"\r\n"):
            raw = re.sub(rb"\r?\n", b"\r\n", raw)
        colon = raw.index(b":")
        out.append([raw[:colon], raw[colon + 1 :]])
    return out


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def prepare(
    headers: Sequence[Sequence[bytes]], limit: int, allow_body_subset: bool
) -> tuple[list[Outcome | Pending], int]:
    """Step 1: the first `limit` signatures, judged or waiting; and how many were left out."""
    fields = [(bytes(h[0]), bytes(h[1])) for h in headers if h[0].lower().rstrip() == _SIG_NAME]
    results: list[Outcome | Pending] = []
    for index, sig_field in enumerate(fields[:limit]):
        results.append(_prepare_one(index, sig_field, allow_body_subset))
    return results, max(0, len(fields) - limit)


def _prepare_one(
    index: int, sig_field: tuple[bytes, bytes], allow_body_subset: bool
) -> Outcome | Pending:
    try:
        tags = parse_tags(sig_field[1])
    except dkim.util.InvalidTagValueList as exc:
        return Outcome("permerror", reason=clean(f"malformed signature: {exc!r}"))
    domain = clean(tags.get(b"d", b""), 255)
    identity = clean(tags.get(b"i", b""), 255) or (f"@{domain}" if domain else "")

    def perm(reason: str) -> Outcome:
        return Outcome("permerror", domain, identity, clean(reason))

    for tag in _REQUIRED_TAGS:  # RFC 6376 §3.5 (dkimpy's own message shows bytes)
        if tag not in tags:
            return perm(f"missing tag {tag.decode()}=")
    try:
        problem = signature_problem(tags)
    except (KeyError, IndexError, ValueError) as exc:  # as dkimpy's checks would fail
        return perm(f"malformed signature: {exc!r}")
    if problem:
        return perm(problem)
    algorithm = tags[b"a"]
    if algorithm == b"rsa-sha1":
        # RFC 8301 §3.1: rsa-sha1 signatures MUST NOT be considered valid.
        return perm("rsa-sha1 is not accepted")
    signed = _signed_names(tags[b"h"])
    if b"from" not in signed:
        return perm("From field not signed")  # RFC 6376 §6.1.1
    c_value = tags.get(b"c", b"simple/simple")
    canons = _CANONICALIZATIONS.get(c_value)
    if canons is None:
        try:
            policy = CanonicalizationPolicy.from_c_value(c_value)
        except InvalidCanonicalizationPolicyError as exc:
            return perm(f"unknown canonicalization {exc.args[0]!r}")
        canons = (
            policy.header_algorithm.name == b"relaxed",
            cast(Canon, _text(policy.body_algorithm.name)),
        )
    limit: int | None = None
    if b"l" in tags:
        if not allow_body_subset:
            return Outcome("fail", domain, identity, "l= tag not accepted (allow_body_subset no)")
        limit = int(tags[b"l"])
    relaxed_header, canon = canons
    hash_name = "sha256" if algorithm.endswith(b"-sha256") else _text(algorithm.split(b"-", 1)[1])
    selector, sig_domain = _text(tags[b"s"]), _text(tags[b"d"])
    spec = _SPECS.get((canon, hash_name)) if limit is None else None
    if spec is None:
        spec = BodySpec(canon, hash_name, limit)
    return Pending(
        index=index,
        tags=tags,
        signed=signed,
        field=sig_field,
        domain=domain,
        identity=identity,
        key_name=f"{selector}._domainkey.{sig_domain}",
        body=spec,
        relaxed_header=relaxed_header,
    )


#: The body specs without `l=`, made once.
_SPECS: dict[tuple[Canon, str], BodySpec] = {
    (canon, algorithm): BodySpec(canon, algorithm)
    for canon in ("simple", "relaxed")
    for algorithm in ("sha256", "sha1")
}
#: The valid `c=` values (RFC 6376 §3.5): whether header canonicalization is
#: relaxed, and the body's. Anything else is left to dkimpy, to be refused
#: in its words.
_CANONICALIZATIONS: dict[bytes, tuple[bool, Canon]] = {
    b"simple": (False, "simple"),
    b"relaxed": (True, "simple"),
    b"simple/simple": (False, "simple"),
    b"simple/relaxed": (False, "relaxed"),
    b"relaxed/simple": (True, "simple"),
    b"relaxed/relaxed": (True, "relaxed"),
}
#: Signature algorithms a signature may name (dkimpy's list; rsa-sha1 is
#: refused afterwards, RFC 8301).
_ALGORITHMS = frozenset((b"rsa-sha1", b"rsa-sha256", b"ed25519-sha256"))
_BASE64_SYNTAX = re.compile(rb"[\s0-9A-Za-z+/]+[\s=]*$")  # what `_base64_syntax` checks
_BASE64_WSP = (string.ascii_letters + string.digits + "+/").encode() + _WSP
_PAD_WSP = b"=" + _WSP
_DOMAIN_SPECIALS = re.compile(rb"[()<>\[\]:;@\\,]")
_LENGTH_SYNTAX = re.compile(rb"\d{,76}$")
_NUMBER_SYNTAX = re.compile(rb"\d+$")
#: Leeway for signers whose clocks are wrong (dkimpy's: 10 hours).
_CLOCK_SLOP = 36000


def _signed_names(h: bytes) -> list[bytes]:
    """The names of `h=`, lowercase: split at colons and the white space
    around them (what `_H_SPLIT` does, without a pattern), none empty."""
    names = [name.strip().lower() for name in h.split(b":")]
    if b"" in names:
        names = [name for name in names if name]
    return names


def _base64_syntax(value: bytes) -> bool:
    """Whether `_BASE64_SYNTAX` matches `value`, with two C passes instead of a pattern.

    The pattern is base64 letters and white space, at least one, then `=`
    and white space. Without the longest end made of `=` and white space,
    what is left must be base64 letters and white space; when nothing is
    left, the first byte must be one of them (white space, then).
    """
    head = value.rstrip(_PAD_WSP)
    if head:
        return not head.translate(None, _BASE64_WSP)
    return bool(value) and value[0] in _WSP


def signature_problem(tags: dict[bytes, bytes], now: float | None = None) -> str:
    """What is wrong with a signature's tags, "" if nothing: dkimpy's field checks.

    The same rules as `dkim.validate_signature_fields`, in the same order and
    with the same words (the tests compare the two), without its cost: a
    regular expression compiled again on each call. The required tags are
    present (the caller checked). As in dkimpy, the `bh=` value is checked
    for its length only (its syntax is checked when it is decoded); an
    `i=` equal to `d=` raises IndexError, which the caller reports.
    """
    algorithm = tags[b"a"]
    if algorithm not in _ALGORITHMS:
        return f"unknown signature algorithm: {algorithm!r}"
    b = tags[b"b"]
    if not _base64_syntax(b) or len(b.translate(None, _WSP)) % 4:
        return f"b= value is not valid base64 ({b!r})"
    bh = tags[b"bh"]
    if len(bh.translate(None, _WSP)) % 4:
        return f"bh= value is not valid base64 ({bh!r})"
    cv = tags.get(b"cv")
    if cv is not None and cv not in (b"pass", b"fail", b"none"):
        return f"cv= value is not valid ({cv!r})"
    d = tags[b"d"]
    if d.isascii() and _DOMAIN_SPECIALS.search(d):
        return f"d= value is not valid ({d!r})"
    i = tags.get(b"i")
    if i is not None and (not i.lower().endswith(d.lower()) or i[-len(d) - 1] not in (64, 46)):
        return f"i= domain is not a subdomain of d= (i={i!r} d={d!r})"
    length = tags.get(b"l")
    if length is not None and _LENGTH_SYNTAX.match(length) is None:
        return f"l= value is not a decimal integer ({length!r})"
    q = tags.get(b"q")
    if q is not None and q != b"dns/txt":
        return f"q= value is not dns/txt ({q!r})"
    t = tags.get(b"t")
    x = tags.get(b"x")
    t_sign = None
    clock = 0
    if t is not None or x is not None:
        clock = int(time.time() if now is None else now)
    if t is not None:
        if _NUMBER_SYNTAX.match(t) is None:
            return f"t= value is not a decimal integer ({t!r})"
        t_sign = int(t)
        if t_sign > clock + _CLOCK_SLOP:
            return f"t= value is in the future ({t!r})"
    v = tags[b"v"]
    if v != b"1":
        return f"v= value is not 1 ({v!r})"
    if x is not None:
        if _NUMBER_SYNTAX.match(x) is None:
            return f"x= value is not a decimal integer ({x!r})"
        x_sign = int(x)
        if x_sign < clock - _CLOCK_SLOP:
            return f"x= value is past ({x!r})"
        if t_sign and x_sign < t_sign:
            return f"x= value is less than t= value (x={x!r} t={t!r})"
    return ""


def finish(
    headers: Sequence[Sequence[bytes]],
    pending: Sequence[Pending],
    hashes: BodyHasher,
    required: Collection[bytes],
) -> None:
    """Step 3: set `outcome` of each signature that has its key record.

    `required`: the names (lowercase bytes) that each signature must sign.
    """
    for sig in pending:
        if sig.outcome is None and sig.key_record is not None:
            sig.outcome = _finish_one(headers, sig, hashes, required)


def _finish_one(
    headers: Sequence[Sequence[bytes]],
    sig: Pending,
    hashes: BodyHasher,
    required: Collection[bytes],
) -> Outcome:
    def verdict(result: str, reason: str = "") -> Outcome:
        return Outcome(result, sig.domain, sig.identity, clean(reason))

    assert sig.key_record is not None
    record = _record(sig.key_name, sig.key_record)
    problem = record.problem or _key_problem(record, sig.tags)
    if problem:
        return verdict("permerror", problem)
    key = record.key
    if key is None:
        return verdict("permerror", record.key_error)
    expected_type = b"ed25519" if sig.tags[b"a"].startswith(b"ed25519") else b"rsa"
    if key.ktag != expected_type:
        return verdict("permerror", "key type does not match the signature algorithm")
    if key.ktag == b"rsa":
        if key.bits < MIN_RSA_BITS:
            return verdict("permerror", f"key too small ({key.bits} bits)")
        if key.bits > MAX_RSA_BITS:
            return verdict("permerror", f"key too large ({key.bits} bits)")
        if key.exponent_bits > MAX_RSA_EXPONENT_BITS:
            return verdict("permerror", "key exponent too large")

    spec = sig.body
    if spec.limit is not None and spec.limit > hashes.length(spec.canon):
        return verdict("permerror", "l= is larger than the body")
    try:
        # What `base64.b64decode(..., validate=True)` calls, without its layers.
        expected = binascii.a2b_base64(sig.tags[b"bh"].translate(None, _WSP), strict_mode=True)
    except (binascii.Error, ValueError):
        return verdict("permerror", "bh= is not base64")
    if hashes.digest(spec) != expected:
        return verdict("fail", "body hash did not verify")

    try:
        assert key.key is not None  # the size checks above refused the others
        good = _signature_verifies(headers, sig, key)
    except (ValueError, TypeError, binascii.Error):  # a b= that is not base64 or too big
        good = False
    if not good:
        return verdict("fail", "signature did not verify")
    for name in required:
        if name not in sig.signed:
            return verdict("permerror", "some header fields are not signed")
    return Outcome("pass", sig.domain, sig.identity)


PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class _Key:
    """A key record's public key: its type, size and the key `cryptography` verifies with."""

    ktag: bytes
    bits: int
    exponent_bits: int
    #: None for an RSA key past OpenSSL's limits: refused before any use.
    key: PublicKey | None


@dataclass(frozen=True, slots=True)
class _Record:
    """What a key record says (RFC 6376 §3.6.1), read once.

    `problem` is the first fault of the record alone (syntax, no `p=`,
    revoked, `v=`); the tags a signature is checked against come next;
    `key` is None when `key_error` says why it could not be parsed.
    """

    problem: str = ""
    hashes: frozenset[bytes] | None = None  # h=
    services: frozenset[bytes] | None = None  # s=
    strict_identity: bool = False  # t=s
    key: _Key | None = None
    key_error: str = ""


#: Key records read, by their bytes, at most `KEY_CACHE_SIZE` of them.
KEY_CACHE_SIZE = 1000
_records: OrderedDict[bytes, _Record] = OrderedDict()
_records_lock = threading.Lock()


def _record(name: str, record: bytes) -> _Record:
    """The record read by dkimpy's rules and RFC 6376's; cached by its bytes.

    A record whose key cannot be parsed is not kept: such records are the
    exception, and the error text may name the record.
    """
    with _records_lock:
        known = _records.get(record)
        if known is not None:
            _records.move_to_end(record)
            return known
    read = _read_record(name, record)
    if not read.key_error:
        with _records_lock:
            _records[record] = read
            while len(_records) > KEY_CACHE_SIZE:
                _records.popitem(last=False)
    return read


def _read_record(name: str, record: bytes) -> _Record:
    try:
        tags = parse_tags(record)
    except dkim.util.InvalidTagValueList as exc:
        return _Record(f"key syntax error: {exc!r}")
    if b"p" not in tags:
        return _Record("key syntax error: no p= tag")
    if not tags[b"p"].translate(None, _WSP):
        return _Record("key revoked")
    if b"v" in tags and tags[b"v"] != b"DKIM1":
        return _Record("key syntax error: v= is not DKIM1")
    hashes = frozenset(h.strip() for h in tags[b"h"].split(b":")) if b"h" in tags else None
    services = frozenset(s.strip() for s in tags[b"s"].split(b":")) if b"s" in tags else None
    strict = b"t" in tags and b"s" in {t.strip() for t in tags[b"t"].split(b":")}
    try:
        key = _public_key(name, record)
    except Exception as exc:  # the record is the signer's data: any parse failure is theirs
        return _Record("", hashes, services, strict, key_error=f"key syntax error: {exc}")
    return _Record("", hashes, services, strict, key)


def _public_key(name: str, record: bytes) -> _Key:
    """The key of a record, parsed by dkimpy's rules; raises whatever dkimpy raises."""
    pk, bits, ktag, _tlsrpt = dkim.evaluate_pk(name.encode(), record)
    if ktag == b"rsa":
        exponent = int(pk["publicExponent"])
        return _Key(ktag, bits, exponent.bit_length(), _rsa_key(exponent, int(pk["modulus"])))
    return _Key(ktag, 256, 0, ed25519.Ed25519PublicKey.from_public_bytes(bytes(pk)))


def _rsa_key(exponent: int, modulus: int) -> PublicKey | None:
    """An RSA public key, or None past OpenSSL's limits (refused before any use)."""
    if modulus.bit_length() > MAX_RSA_BITS or exponent.bit_length() > MAX_RSA_EXPONENT_BITS:
        return None
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _signature_verifies(headers: Sequence[Sequence[bytes]], sig: Pending, key: _Key) -> bool:
    """The header hash and the signature over it (cryptography).

    Like dkimpy, one more `from` is hashed than `h=` lists, so a second From
    field added to a signed message breaks the signature (dkimpy bug
    644046's rule). Every algorithm left after `prepare` hashes with SHA-256.
    """
    include = list(sig.signed)
    if b"from" in include:
        include.append(b"from")
    data = signed_header_data(headers, include, sig.field, sig.relaxed_header)
    digest = hashlib.sha256(data).digest()
    signature = binascii.a2b_base64(sig.tags[b"b"].translate(None, _WSP))  # b64decode's call
    try:
        # The key type tells the class (no isinstance with an abstract class: slow).
        if key.ktag == b"rsa":
            cast(rsa.RSAPublicKey, key.key).verify(signature, digest, _PKCS1, _PREHASHED_SHA256)
        else:
            # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the header data.
            cast(ed25519.Ed25519PublicKey, key.key).verify(signature, digest)
    except InvalidSignature:
        return False
    return True


def _key_problem(record: _Record, sig: dict[bytes, bytes]) -> str:
    """What RFC 6376 §3.6.1 forbids for this signature's use of a sound record; "" if nothing."""
    if record.hashes is not None and sig[b"a"].split(b"-", 1)[1] not in record.hashes:
        return "hash algorithm not allowed by the key"
    if record.services is not None and not record.services & {b"*", b"email"}:
        return "key is not for email"
    if record.strict_identity:
        identity = sig.get(b"i", b"@" + sig[b"d"])
        if identity.rpartition(b"@")[2].lower() != sig[b"d"].lower():
            return "i= domain must equal d= (key flag t=s)"
    return ""
