"""The allowed ranges of a policy's tunables, declared once as data: the policy checks its values with
them, and the worker's settings take their bounds from them."""
from __future__ import annotations

# name -> (lowest, highest or None for unbounded, what the value is)
Bounds = dict[str, tuple[float, float | None, str]]


def check_bounds(owner: str, values, bounds: Bounds) -> None:
    """Raises ValueError naming the first of `values`' attributes outside `bounds`.

    Examples:
        >>> check_bounds("gate", type("P", (), {"max_frames": 0})(), {"max_frames": (1, None, "frames")})
        Traceback (most recent call last):
        ValueError: gate max_frames 0: frames, at least 1
    """
    for name, (low, high, what) in bounds.items():
        value = getattr(values, name)
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{owner} {name} {value}: {what}, {allowed}")
