"""A client's limits: the request rate and burst, initialize per minute, and the sessions it may hold at once.

The server's settings give the defaults; an API key (a fourth field of the key file) or a JWT audience
(``ERLMCP_JWT_AUDIENCE_LIMITS``) may set some of them for its principals, written the same way in both places::

    rate=50,burst=200,initialize=600,sessions=500

What is left out keeps the server's default. The gate (:mod:`app.security.gate`) applies them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

__all__ = ["LIMIT_OPTIONS", "NO_OVERRIDES", "LimitOverrides", "Limits", "parse_limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one principal is held to."""

    rate: float  # requests per second on average (0: no request budget at all)
    burst: int  # requests at once before the rate holds
    initialize: int  # initialize requests per minute
    sessions: int  # sessions held at once (0: no quota)

    def __str__(self) -> str:
        """As the options are written: ``rate=20,burst=100,initialize=600,sessions=100``."""
        return ",".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self))


@dataclass(frozen=True, slots=True)
class LimitOverrides:
    """The limits a key or audience sets; None: the server's default."""

    rate: float | None = None
    burst: int | None = None
    initialize: int | None = None
    sessions: int | None = None

    def applied_to(self, defaults: Limits) -> Limits:
        """``defaults`` with what these set instead."""
        return Limits(
            rate=defaults.rate if self.rate is None else self.rate,
            burst=defaults.burst if self.burst is None else self.burst,
            initialize=defaults.initialize if self.initialize is None else self.initialize,
            sessions=defaults.sessions if self.sessions is None else self.sessions,
        )

    def __str__(self) -> str:
        """The options as they are written (``rate=50,burst=200``); empty when none is set."""
        return ",".join(
            f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name) is not None
        )


NO_OVERRIDES = LimitOverrides()  # the server's defaults hold throughout (shared: the gate knows it by identity)

_MOST = 1_000_000  # past this a limit means nothing, and a bucket's lifetime in Redis would overflow
# Each option: what it means, for the error that names a wrong value.
LIMIT_OPTIONS = {
    "rate": f"0 (no limit) or a number of requests a second on average, from 0.001 to {_MOST}",
    "burst": f"a whole number of requests at once, from 1 to {_MOST}",
    "initialize": f"a whole number of initialize requests a minute, from 1 to {_MOST}",
    "sessions": f"a whole number of sessions held at once, from 0 (no quota) to {_MOST}",
}
_LEAST = {"burst": 1, "initialize": 1, "sessions": 0}
_WHOLE = re.compile(r"^[0-9]{1,7}$")


def _value(name: str, text: str) -> float | int:
    wrong = ValueError(f"{name}={text!r} cannot be used: {name} must be {LIMIT_OPTIONS[name]}")
    if name == "rate":
        try:
            rate = float(text)
        except ValueError:
            raise wrong from None
        if not (rate == 0 or (math.isfinite(rate) and 0.001 <= rate <= _MOST)):
            raise wrong
        return rate
    if not _WHOLE.match(text) or not _LEAST[name] <= int(text) <= _MOST:
        raise wrong
    return int(text)


def parse_limits(text: str) -> LimitOverrides:
    """The limits of ``rate=50,burst=200,initialize=600,sessions=500`` (any of them, in any order).

    Raises:
        ValueError: an option is unknown, repeated, not ``name=value``, or its value is out of range; the message
            says which and what is expected.
    """
    given: dict[str, float | int] = {}
    for position, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        name, equals, value = item.partition("=")
        name = name.strip()
        if not equals:  # (not quoted: in a key file, a field out of place may be a key)
            raise ValueError(f"limit {position} is not name=value, e.g. rate=50 (options: {', '.join(LIMIT_OPTIONS)})")
        if name not in LIMIT_OPTIONS:
            raise ValueError(f"unknown option {name!r} (options: {', '.join(LIMIT_OPTIONS)})")
        if name in given:
            raise ValueError(f"the option {name!r} is given twice")
        given[name] = _value(name, value.strip())
    if not given:
        return NO_OVERRIDES
    rate, burst, initialize, sessions = (given.get(name) for name in LIMIT_OPTIONS)
    return LimitOverrides(
        rate=None if rate is None else float(rate),
        burst=None if burst is None else int(burst),
        initialize=None if initialize is None else int(initialize),
        sessions=None if sessions is None else int(sessions),
    )
