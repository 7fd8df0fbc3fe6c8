"""The one fixed-point representation of pricing: unsigned integers scaled by 10**18 ("wad").

Everything here uses integer operations a Solidity contract has (``*``, ``+``, ``//``, ``>>``,
``&``) on values below 2**256, so the settlement contracts compute the identical integers.
docs/pricing.md writes the algorithms out step by step with their rounding and error bound.
"""

from __future__ import annotations

from cgn_common.errors import InvalidArgumentError

#: 1.0 in wad: a wad value v stands for v / 10**18.
WAD = 10**18
_HALF_WAD = WAD // 2

#: The daily adjustment K = 2**(1/730) of SPEC section 9, in wad: 2**(1/730) * 10**18 =
#: 1000949967619378489.0776..., rounded to nearest. tests/settlement checks it with 80 digits.
K_WAD = 1_000_949_967_619_378_489

#: The largest power :func:`pow_wad` returns: 2**64 in wad. Below it every product in the
#: loop stays under (2**64 * 10**18)**2 < 2**256, so the contract needs no 512-bit multiply.
MAX_POWER_WAD = 2**64 * WAD

UINT256_MAX = 2**256 - 1


def mul_wad(a: int, b: int) -> int:
    """Returns a * b in wad, rounded half up: ``(a * b + 10**18 // 2) // 10**18``.

    Both factors are non-negative wad values; the error is at most half a unit (5e-19).
    """
    if a < 0 or b < 0:
        raise InvalidArgumentError(f"wad factors must be non-negative, got {a} and {b}")
    return (a * b + _HALF_WAD) // WAD


def pow_wad(k: int, n: int) -> int:
    """Returns k**n in wad by binary exponentiation, rounding half up after each product.

    ``k`` is a wad value of at least 1.0 and ``n`` a non-negative exponent (a day count).
    Against the exact (k / 10**18)**n the relative error is below (n - 1) * 5e-19; against a
    real factor that ``k`` approximates to within half a unit, below n * 1e-18
    (docs/pricing.md derives both). Refuses a result above :data:`MAX_POWER_WAD`.
    """
    if k < WAD:
        raise InvalidArgumentError(f"the factor must be at least 1.0 (10**18 in wad), got {k}")
    if n < 0:
        raise InvalidArgumentError(f"the exponent must be non-negative, got {n}")
    # Right to left: x runs through k**1, k**2, k**4, ...; each set bit of n multiplies it in.
    # Starting from k or 1.0 (not 1.0 then a product) saves one rounding; both are exact.
    x = k
    result = k if n & 1 else WAD
    n >>= 1
    while n > 0:
        x = (x * x + _HALF_WAD) // WAD
        if n & 1:
            result = (result * x + _HALF_WAD) // WAD
        n >>= 1
        if x > MAX_POWER_WAD or result > MAX_POWER_WAD:
            raise InvalidArgumentError("the power is too large for the fixed-point range")
    return result


def round_wad(value: int, decimals: int) -> int:
    """Returns a non-negative wad value rounded half up to ``decimals`` decimal places, as an
    integer count of 10**-decimals: 3293.5258 to one place is 32935."""
    if value < 0 or not 0 <= decimals <= 18:
        raise InvalidArgumentError(f"cannot round {value} to {decimals} decimals")
    unit: int = 10 ** (18 - decimals)
    return (value + unit // 2) // unit


def format_wad(value: int, decimals: int) -> str:
    """Formats a non-negative wad value with ``decimals`` places, rounded half up."""
    scaled = round_wad(value, decimals)
    if decimals == 0:
        return str(scaled)
    whole, fraction = divmod(scaled, 10**decimals)
    return f"{whole}.{fraction:0{decimals}d}"


def wad_from_decimal_string(text: str) -> int:
    """Parses an exact decimal such as ``"3290.4"`` into wad (at most 18 places, no floats)."""
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()) or len(fraction) > 18:
        raise InvalidArgumentError(f"not a non-negative decimal with at most 18 places: {text!r}")
    return int(whole) * WAD + int(fraction.ljust(18, "0"))
