"""
Go-style durations, the one parser and normaliser every module uses.

Consul takes durations as Go ``time.Duration`` strings (``10s``, ``1m30s``,
``500ms``) and newer agents (1.15+) return check ``Interval``/``Timeout`` in
Go's canonical form (``1m0s`` for what was registered as ``60s``), so two
spellings of one duration must compare equal: compare :func:`seconds`, never
raw strings.

    >>> seconds("1m30s"), seconds(15), canonical("60s"), same("60s", "1m0s")
    (90.0, 15.0, '1m0s', True)

A bare number means seconds (what Salt users write in YAML).
"""

import re

# Go's units, in nanoseconds.
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:ns|us|µs|μs|ms|s|m|h))+")


class DurationError(ValueError):
    """Not a duration; the message says what was expected."""


def nanoseconds(value, what="duration"):
    """
    ``value`` (a Go duration string, or a number of seconds) as integer
    nanoseconds. Negative and boolean values are refused: no Consul setting
    takes a negative duration.
    """
    if isinstance(value, bool) or value is None:
        raise DurationError(f"{what} must be a duration such as '10s' or '1m30s', got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value in (float("inf"),):
            raise DurationError(f"{what} must be a non-negative duration, got {value!r}")
        return round(value * 1_000_000_000)
    if not isinstance(value, str):
        raise DurationError(f"{what} must be a duration such as '10s' or '1m30s', got {value!r}")
    text = value.strip()
    if text == "0":
        return 0
    if not _WHOLE.fullmatch(text):
        raise DurationError(f"{what} must be a duration such as '10s' or '1m30s', got {value!r}")
    total = 0
    for number, unit in _PART.findall(text):
        total += round(float(number) * _UNITS[unit])
    return total


def seconds(value, what="duration"):
    """``value`` in seconds (float). See :func:`nanoseconds`."""
    return nanoseconds(value, what) / 1_000_000_000


def for_consul(value, what="duration"):
    """
    The string to send Consul for ``value``: a valid duration string as given
    (so what the user wrote is what the agent shows), a number as ``<n>s``.
    Raises :class:`DurationError` for anything else.
    """
    nanoseconds(value, what)
    if isinstance(value, str):
        return value.strip()
    return f"{value:g}s"


def canonical(value, what="duration"):
    """Go's ``time.Duration.String()`` form: ``1m0s``, ``1h0m0s``, ``500ms``, ``0s``."""
    ns = nanoseconds(value, what)
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{_trim(ns / 1_000_000)}ms"
    hours, rest = divmod(ns, _UNITS["h"])
    minutes, rest = divmod(rest, _UNITS["m"])
    secs = _trim(rest / 1_000_000_000)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def same(left, right):
    """Whether two durations are equal, however each is spelled (None equals None only)."""
    if left is None or right is None:
        return left is None and right is None
    try:
        return nanoseconds(left) == nanoseconds(right)
    except DurationError:
        return False


def _trim(number):
    """9 significant decimals at most, no trailing zeros (Go prints ``1.5s``, ``2s``)."""
    text = f"{number:.9f}".rstrip("0").rstrip(".")
    return text or "0"
