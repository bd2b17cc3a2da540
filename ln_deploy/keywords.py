"""Options objects built from an API call's keywords (``check_model``, ``convert_model``): one rule for all.

Part of the shared layer: imports no stage.
"""

from __future__ import annotations

from dataclasses import fields, replace


def options_with_keywords(cls, options, kwargs: dict, caller: str):
    """``options`` (an instance of the frozen dataclass ``cls``, or None for the defaults) with
    ``kwargs`` applied over it, validated again by ``cls``. A wrong ``options`` type or an unknown
    keyword is a ``TypeError`` naming ``caller``, as for any Python call."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, not {type(options).__name__}")
    unknown = sorted(set(kwargs) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"{caller}() got unexpected keyword argument(s) {', '.join(unknown)}")
    if options is None:
        return cls(**kwargs)
    return replace(options, **kwargs) if kwargs else options
