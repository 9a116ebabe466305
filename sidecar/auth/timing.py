"""When a token is renewed and when it stops being sent: the token manager's timing rules."""

from __future__ import annotations

MIN_RENEWAL_GAP = 0.5  # two successful renewals are never closer than this: no busy loop


def renew_ahead(lifetime: float) -> float:
    """How long before expiry to renew: a 300 s token at 60 s left, a 2 s token at 1 s left."""
    return min(max(0.2 * lifetime, 30.0), 0.5 * lifetime)


def usable_margin(lifetime: float) -> float:
    """A token is not sent in its last second, or its last half for tokens under 2 s."""
    return min(1.0, 0.5 * lifetime)
