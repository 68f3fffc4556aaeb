"""The two error types that cross module boundaries.

`SMTPError` carries an SMTP reply (basic code, enhanced code, text) from
wherever a decision is made (a check, a target, the pipeline) to the one place
that turns exceptions into replies, so nothing in between has to know SMTP.

`ConfigError` carries the position of the configuration text that is wrong,
so every configuration problem reaches the operator as `FILE:LINE: message`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EnhancedCode = tuple[int, int, int]


class KittiwakeError(Exception):
    """Base of every error kittiwake raises on purpose."""


@dataclass(eq=False)
class SMTPError(KittiwakeError):
    """An error that becomes an SMTP reply.

    `reason` and `misc` go to the log only: the client sees `message` and
    nothing else, so internal details never leak to the network.
    """

    code: int
    enhanced: EnhancedCode
    message: str
    check_name: str = ""
    reason: str = ""
    misc: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP code out of range: {self.code}")
        # RFC 3463 §2: the class digit of the enhanced code repeats the
        # first digit of the basic code (2, 4 or 5).
        if self.code >= 400 and self.enhanced[0] != self.code // 100:
            raise ValueError(
                f"enhanced code class {self.enhanced[0]} does not match SMTP code {self.code}"
            )
        super().__init__(self.message)

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __reduce__(self) -> tuple[type[SMTPError], tuple[object, ...]]:
        """Pickled by its fields: a Maildir delivery agent sends it back
        to the server (docs/storage-maildir.md, "Delivery agents")."""
        fields = (self.code, self.enhanced, self.message, self.check_name, self.reason, self.misc)
        return (type(self), fields)

    def __str__(self) -> str:
        e = ".".join(str(p) for p in self.enhanced)
        return f"{self.code} {e} {self.message}"


class ConfigError(KittiwakeError):
    """A problem in the configuration, tied to the text that caused it."""

    def __init__(self, message: str, file: str = "", line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class ConfigErrors(ConfigError):
    """Several configuration problems found in one pass, reported together.

    Positioned at the first; printed as one `FILE:LINE: message` line each.
    """

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.message, first.file, first.line)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)
