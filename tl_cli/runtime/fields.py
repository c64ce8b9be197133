"""Type checks for the frozen config dataclasses, for library callers.

The CLI's options arrive typed (typer converts them), but `FinetuneConfig(epochs="3")` or
`epochs=2.5` from Python would fail deep inside training with a TypeError, or run 3 epochs while
the saved config says 2.5. Each config's `__post_init__` calls `check_field_types` first, so a
wrong type is one ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
import numbers

from tl_cli.errors import ConfigError

# Annotation (as the string `from __future__ import annotations` leaves) -> accepted types. numpy
# scalars count (np.int64 is an Integral); a bool is not a number here, though Python says it is.
_ACCEPTED = {"int": (numbers.Integral,), "float": (numbers.Real,), "str": (str,), "bool": (bool,)}


def check_field_types(config) -> None:
    """Raise ConfigError for the first field whose value does not match its annotation.

    Fields annotated with anything but int, float, str, bool (optionally `| None`) are left to the
    class's own checks.
    """
    for f in dataclasses.fields(config):
        parts = [p.strip() for p in str(f.type).split("|")]
        kinds = [p for p in parts if p != "None"]
        if not kinds or any(k not in _ACCEPTED for k in kinds):
            continue
        value = getattr(config, f.name)
        if value is None and "None" in parts:
            continue
        accepted = tuple(t for k in kinds for t in _ACCEPTED[k])
        if isinstance(value, bool) and "bool" not in kinds or not isinstance(value, accepted):
            raise ConfigError(f"{type(config).__name__}.{f.name} must be {' or '.join(parts)}, "
                              f"got {value!r} ({type(value).__name__})")
