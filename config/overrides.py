"""Dotted-path overrides ({"listeners.amqp.port": 5673}) laid over the raw data before validation."""

from collections.abc import Mapping


def apply_overrides(
    data: Mapping[object, object], overrides: Mapping[str, object], errors: list[str]
) -> dict[object, object]:
    """A copy of `data` with each override set, creating mappings along the way.

    Mappings on an override's path are copied rather than changed in place: YAML aliases can share one
    mapping between several keys, and an override must reach only the key it names.
    """
    result = dict(data)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        if not all(keys):
            errors.append(f"{dotted!r}: not a dotted path of keys")
            continue
        node = result
        for depth, key in enumerate(keys[:-1], start=1):
            child = node.get(key)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                errors.append(f"{'.'.join(keys[:depth])}: cannot apply override {dotted!r} to a non-mapping")
                break
            node[key] = node = dict(child)
        else:
            node[keys[-1]] = value
    return result
