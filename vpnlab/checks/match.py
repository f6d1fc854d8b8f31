"""JSON subset matching for routing state, as FRR's topotests compare it: every key of
`expected` must match, extra keys in `actual` are fine, and ABSENT (or None) means the
key must not be there. Lists match item by item, in order, up to the expected length."""
from __future__ import annotations

ABSENT = None


def differences(actual, expected, path: str = "$") -> list[str]:
    """Where actual does not contain expected; empty when it does."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {_short(actual)}"]
        out = []
        for key, want in expected.items():
            here = f"{path}.{key}"
            if want is ABSENT:
                if key in actual:
                    out.append(f"{here}: must be absent, got {_short(actual[key])}")
            elif key not in actual:
                out.append(f"{here}: missing (expected {_short(want)})")
            else:
                out += differences(actual[key], want, here)
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {_short(actual)}"]
        if len(actual) < len(expected):
            return [f"{path}: expected at least {len(expected)} items, got {len(actual)}"]
        return [d for i, want in enumerate(expected) for d in differences(actual[i], want, f"{path}[{i}]")]
    if actual != expected:
        return [f"{path}: expected {_short(expected)}, got {_short(actual)}"]
    return []


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
