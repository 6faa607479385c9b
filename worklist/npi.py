"""National Provider Identifier check (CMS, "NPI check digit").

An NPI is ten digits; the last is a Luhn check digit computed over the card-issuer
prefix ``80840`` followed by the first nine digits.
"""

from __future__ import annotations

_PREFIX = "80840"


def luhn_check_digit(digits: str) -> int:
    """Luhn check digit for a string of digits (the digit to append)."""
    total = 0
    # Double every second digit starting from the rightmost of the payload.
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return (10 - total % 10) % 10


def is_valid_npi(npi: str) -> bool:
    """True when ``npi`` is ten digits whose last digit checks over ``80840`` + the first nine."""
    if not isinstance(npi, str) or len(npi) != 10 or not npi.isascii() or not npi.isdigit():
        return False
    return luhn_check_digit(_PREFIX + npi[:9]) == int(npi[9])
