"""metav1.Conditions on a FineTuneJob status: set one, keep the order `kubectl describe` shows."""

from __future__ import annotations

from datetime import datetime

from kubetune_api.status import Condition, ConditionType

_ORDER = {str(type_): index for index, type_ in enumerate(ConditionType)}


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    ok: bool | None,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> list[Condition]:
    """A new list with `type_` set (`ok` None: Unknown). lastTransitionTime moves only when the status flips."""
    value = "Unknown" if ok is None else "True" if ok else "False"
    previous = next((c for c in conditions if c.type == type_), None)
    transition = previous.last_transition_time if previous and previous.status == value else now
    updated = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:32768],
        observed_generation=observed_generation,
        last_transition_time=transition,
    )
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: _ORDER.get(c.type, len(_ORDER)))
