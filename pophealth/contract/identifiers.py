"""Identifier types: an NHS number, a pseudonym and an ICD-10 code cannot be mixed up or printed by accident.

`NhsNumber` never shows its digits in `str`, `repr`, f-strings or logs: the only way to the digits is
`.digits_for_hashing()`, which the pseudonymiser calls. A pseudonym (`PersonId`, `LocalPseudonym`) is
safe to print, but is a different type from the NHS number it came from.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from operator import mul
from typing import NoReturn

_SEPARATORS = re.compile(r"[\s\-]", re.ASCII)
# ASCII digits only: in Python `\d` also matches full-width and other scripts' digits, which the contract
# says make a number invalid.
_TEN_DIGITS = re.compile(r"^[0-9]{10}$")
_PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")
_ICD10 = re.compile(r"^[A-Z][0-9]{2}([0-9]|X)?[A-Z0-9]{0,3}$")

MODULUS_11_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def nhs_check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit of nine digits, or None when no check digit makes them valid (10)."""
    if len(first_nine) != 9:
        raise ValueError("a check digit is computed from nine digits")
    total: int = sum(
        map(mul, map(int, first_nine), MODULUS_11_WEIGHTS)
    )  # the hot path of every load: C, not a generator
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


class NhsNumberCheck(str, enum.Enum):  # noqa: UP042  (StrEnum would change what str() and f-strings of a member give)
    """What the platform made of the NHS number on a row (stored instead of the number)."""

    VALID = "valid"
    TEST_RANGE = "test_range"  # valid, but in the 999 range that NHS England keeps for testing
    MISSING = "missing"
    INVALID = "invalid"
    SOURCE_PSEUDONYM = "source_pseudonym"  # the source sent person_id, pseudonymised on its premises

    @property
    def linkable(self) -> bool:
        return self in (NhsNumberCheck.VALID, NhsNumberCheck.TEST_RANGE, NhsNumberCheck.SOURCE_PSEUDONYM)


def normalise_nhs_number(raw: str | None) -> str:
    """Strip spaces and hyphens; what is left may still be invalid."""
    return _SEPARATORS.sub("", raw or "")


def check_nhs_number(raw: str | None) -> NhsNumberCheck:
    """Classify a raw NHS number as the contract says (normalise, 10 digits, not all one digit, Modulus 11)."""
    return _classify(raw)[0]


#: What the ASCII codes of nine digits add to their weighted sum: the weighted sum of the codes less this is the
#: weighted sum of the digits, so Modulus 11 runs on the number's bytes without an int() per digit.
_ASCII_ZERO_WEIGHTED = ord("0") * sum(MODULUS_11_WEIGHTS)


def _classify(raw: str | None) -> tuple[NhsNumberCheck, str]:
    """check_nhs_number's verdict and the normalised digits it judged: one pass for NhsNumber, which keeps them.

    The hot path of every load, so the common form (ten ASCII digits, nothing to strip) skips the normalising
    regex; str.isdigit alone would take other scripts' digits, hence isascii too."""
    if raw is not None and len(raw) == 10 and raw.isascii() and raw.isdigit():
        digits = raw
    else:
        digits = normalise_nhs_number(raw)
        if not digits:
            return NhsNumberCheck.MISSING, digits
        if not _TEN_DIGITS.match(digits):
            return NhsNumberCheck.INVALID, digits
    if digits == digits[0] * 10:  # all one digit: passes Modulus 11, still invalid
        return NhsNumberCheck.INVALID, digits
    codes = digits.encode("ascii")
    check = 11 - (sum(map(mul, codes, MODULUS_11_WEIGHTS)) - _ASCII_ZERO_WEIGHTED) % 11
    if check == 10 or check % 11 != codes[9] - 48:  # 10: no digit makes it valid; 11 means 0
        return NhsNumberCheck.INVALID, digits
    if digits.startswith("999"):
        return NhsNumberCheck.TEST_RANGE, digits
    return NhsNumberCheck.VALID, digits


def is_valid_nhs_number(raw: str | None) -> bool:
    return check_nhs_number(raw).linkable


class IdentifierError(ValueError):
    """Raised with a message that never contains the offending value."""


class NhsNumber:
    """A valid NHS number. Its digits are never shown: str() and repr() are masked."""

    __slots__ = ("_digits", "check")

    def __init__(self, raw: str | None):
        check, digits = _classify(raw)
        if check is not NhsNumberCheck.VALID and check is not NhsNumberCheck.TEST_RANGE:
            raise IdentifierError(f"not a valid NHS number ({check.value})")
        self._digits = digits
        self.check = check

    def digits_for_hashing(self) -> bytes:
        """The ten ASCII digits, for the keyed hash and the encrypted vault, nothing else."""
        return self._digits.encode("ascii")

    def reveal_for_direct_care(self) -> str:
        """The number, shown to the clinician who asked for it through the audited re-identification only."""
        return self._digits

    def __repr__(self) -> str:
        return "NhsNumber(***masked***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NhsNumber) and other._digits == self._digits

    def __hash__(self) -> int:
        return hash(("NhsNumber", self._digits))

    def __reduce__(self) -> NoReturn:  # refuse to be pickled into an XCom, a cache or a log
        raise TypeError("an NHS number is not serialisable")


@dataclass(frozen=True, slots=True)
class PersonId:
    """The linkage pseudonym: lowercase hex HMAC-SHA256 of the NHS number under the linkage key."""

    value: str

    def __post_init__(self) -> None:
        if not _PSEUDONYM.match(self.value):
            raise IdentifierError("a person_id is 64 lowercase hexadecimal characters")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class LocalPseudonym:
    """A keyed pseudonym of a source's local identifier (a council's person id, a hospital's spell)."""

    value: str

    def __post_init__(self) -> None:
        if not _PSEUDONYM.match(self.value):
            raise IdentifierError("a local pseudonym is 64 lowercase hexadecimal characters")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Icd10Code:
    """An ICD-10 code, normalised: upper case, no dot, no spaces (`S72.0` -> `S720`)."""

    value: str

    @classmethod
    def parse(cls, raw: str) -> Icd10Code:
        code = raw.strip().upper().replace(".", "").replace(" ", "")
        if not _ICD10.match(code):
            raise IdentifierError("not an ICD-10 code")
        return cls(code)

    @property
    def three_character(self) -> str:
        return self.value[:3]

    def __str__(self) -> str:
        return self.value
