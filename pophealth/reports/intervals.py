"""95% intervals for the published rates, so a board can tell noise on a small denominator from a change.

Computed from the published (rounded, disclosure-controlled) numerator and denominator, as a reader of the
`reporting` tables could recompute them:

* a percentage (numerator people out of denominator people): the Wilson score interval, which stays inside
  0-100% and behaves on small denominators and at 0 or all (Wilson 1927; Newcombe 1998, method 3);
* a rate (events over a population or population-days): the exact Poisson interval on the count (Garwood
  1936, from the chi-squared distribution) divided by the denominator; Byar's approximation when scipy is
  not installed (Breslow and Day 1987), which agrees to about 3 significant figures above 10 events.
"""

from __future__ import annotations

import math
import re

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile

try:  # scipy gives the exact interval; without it, Byar's approximation (said in `POISSON_METHOD`)
    from scipy.stats import chi2 as _chi2
except ImportError:  # pragma: no cover - scipy is in requirements.lock
    _chi2 = None

POISSON_METHOD = "exact Poisson (Garwood)" if _chi2 is not None else "Byar's approximation to exact Poisson"


def wilson(successes: float, trials: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion, as proportions (0 to 1)."""
    if trials <= 0:
        raise ValueError("a proportion needs a denominator above 0")
    if not 0 <= successes <= trials:
        raise ValueError("the numerator of a proportion must be between 0 and its denominator")
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    scale = 1 + z * z / trials
    # At none or all the bound is exactly 0 or 1; the formula gives it only to rounding (3e-18 at 0 of 83).
    low = 0.0 if successes == 0 else max(0.0, (centre - spread) / scale)
    high = 1.0 if successes == trials else min(1.0, (centre + spread) / scale)
    return low, high


def byar(count: float, z: float = Z95) -> tuple[float, float]:
    """Byar's approximation to the exact Poisson interval of a count."""
    if count < 0:
        raise ValueError("a count cannot be negative")
    lower = 0.0 if count == 0 else count * (1 - 1 / (9 * count) - z / (3 * math.sqrt(count))) ** 3
    upper = (count + 1) * (1 - 1 / (9 * (count + 1)) + z / (3 * math.sqrt(count + 1))) ** 3
    return lower, upper


def garwood(count: float) -> tuple[float, float]:
    """The exact (Garwood) 95% interval of a Poisson count; Byar's approximation without scipy."""
    if count < 0:
        raise ValueError("a count cannot be negative")
    if _chi2 is None:
        return byar(count)
    lower = 0.0 if count == 0 else float(_chi2.ppf(0.025, 2 * count)) / 2
    upper = float(_chi2.ppf(0.975, 2 * count + 2)) / 2
    return lower, upper


def scale_of(unit: str | None) -> tuple[str, int] | None:
    """How a unit's value is formed: ("percent", 100) or ("rate", 100000 for "per 100,000 ..."); None if the
    unit says neither (no interval is drawn then)."""
    text = (unit or "").lower()
    if "percent" in text or "%" in text:
        return "percent", 100
    match = re.search(r"per\s+([\d,]+)", text)
    if match:
        return "rate", int(match.group(1).replace(",", ""))
    return None


def interval(numerator, denominator, unit: str | None) -> tuple[float, float] | None:
    """The 95% interval of a published value in its own unit, or None when it cannot be computed
    (suppressed numerator, no denominator, a unit that is neither a percentage nor a rate)."""
    kind = scale_of(unit)
    if kind is None or numerator is None or denominator is None or float(denominator) <= 0:
        return None
    numerator, denominator = float(numerator), float(denominator)
    method, scale = kind
    if method == "percent":
        if numerator > denominator:
            return None  # not a proportion (rounded counts can cross): no interval rather than a wrong one
        low, high = wilson(numerator, denominator)
    else:
        low, high = (bound / denominator for bound in garwood(numerator))
    return low * scale, high * scale
