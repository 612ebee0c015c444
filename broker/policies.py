"""Policies and operator policies, as RabbitMQ 3.10 keeps them: per vhost, a name, a pattern (a regular
expression searched in queue and exchange names), what they apply to, a priority and a definition.

Of the policies matching an object, the one with the highest priority applies (ties: the first by name);
the same holds, separately, for operator policies. What an object follows is their merged definition (an
operator policy's value wins, but for the numeric limits, where the lower one does), and for a queue, that
against its own x-arguments (`queue_arguments`): the lower for the numeric limits, the argument's own value
for the rest. Pure: validation, matching and merging; broker/vhost.py applies them to live objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from leveret.broker.queues.arguments import MAX_EXPIRY_MS, TYPE_ARGUMENTS

APPLY_TO = ("queues", "exchanges", "all")
# The keys where the lower of two values wins: between a policy and an operator policy, and between the
# merged policy and a queue's x-argument. For every other key the x-argument wins over any policy.
LOWER_WINS = frozenset(
    {"expires", "message-ttl", "max-length", "max-length-bytes", "max-in-memory-length",
     "max-in-memory-bytes", "delivery-limit"}
)  # fmt: skip
# The keys an operator policy may set (RabbitMQ 3.10's operator_policy_validator registrations).
OPERATOR_KEYS = LOWER_WINS
# Keys RabbitMQ accepts for classic mirroring, which Leveret does not do: kept and shown, with no effect.
MIRRORING_KEYS = frozenset(
    {"ha-params", "ha-sync-mode", "ha-sync-batch-size", "ha-promote-on-shutdown", "ha-promote-on-failure",
     "queue-master-locator"}
)  # fmt: skip
HA_MODES = ("all", "exactly", "nodes")


class PolicyError(Exception):
    """A refused policy: RabbitMQ's 400 text ("Validation failed\\n\\n...")."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def erlang_term(value: Any) -> str:
    """A JSON value as RabbitMQ's validation texts print it: strings as Erlang binaries."""
    if isinstance(value, str):
        return '<<"' + value.replace("\\", "\\\\").replace('"', '\\"') + '">>'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(erlang_term(v) for v in value) + "]"
    if isinstance(value, dict):
        return "[" + ",".join(f"{{{erlang_term(k)},{erlang_term(v)}}}" for k, v in value.items()) + "]"
    return str(value)


def _non_negative(what: str, upper: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = _is_int(value) and value >= 0 and (upper is None or value <= upper)
        return None if ok else f"{erlang_term(value)} is not a valid {what}"

    return check


def _positive(what: str, upper: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = _is_int(value) and value > 0 and (upper is None or value <= upper)
        return None if ok else f"{erlang_term(value)} is not a valid {what}"

    return check


def _name(what: str) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, str) else f"{erlang_term(value)} is not a valid {what}"


def _one_of(what: str, *choices: Any) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"{erlang_term(value)} is not a valid {what}"


def _anything(value: Any) -> str | None:
    return None


# RabbitMQ's validators and texts, by key.
VALIDATORS: dict[str, Callable[[Any], str | None]] = {
    "alternate-exchange": _name("alternate exchange name"),
    "dead-letter-exchange": _name("dead letter exchange name"),
    "dead-letter-routing-key": _name("dead letter routing key"),
    "dead-letter-strategy": _one_of("dead letter strategy", "at-most-once", "at-least-once"),
    "delivery-limit": _non_negative("delivery limit"),
    "expires": _positive("queue expiry", MAX_EXPIRY_MS),
    "max-length": _non_negative("maximum length"),
    "max-length-bytes": _non_negative("maximum length in bytes"),
    # RabbitMQ 3.10 says "memory in bytes" for both.
    "max-in-memory-length": _non_negative("maximum memory in bytes"),
    "max-in-memory-bytes": _non_negative("maximum memory in bytes"),
    "message-ttl": _non_negative("message TTL", MAX_EXPIRY_MS),
    "overflow": _one_of("overflow value", "drop-head", "reject-publish", "reject-publish-dlx"),
    "queue-mode": _one_of("queue-mode value", "default", "lazy"),
    "queue-version": _one_of("queue-version value", 1, 2),
    "ha-mode": _one_of("ha-mode value", *HA_MODES),
    "max-age": _name("max-age"),
    "stream-max-segment-size-bytes": _non_negative("stream max segment size in bytes"),
    "queue-leader-locator": _one_of("queue leader locator", "client-local", "balanced"),
    "initial-cluster-size": _positive("initial cluster size"),
    **{key: _anything for key in MIRRORING_KEYS},
}

# Python's texts for a bad pattern, as PCRE words the common ones.
_PCRE_TEXTS = {
    "unterminated character set": "missing terminating ] for character class",
    "missing ), unterminated subpattern": "missing )",
    "unbalanced parenthesis": "unmatched parentheses",
    "nothing to repeat": "nothing to repeat",
}
_PATTERN_PROBLEM = "pattern should be regular expression but is invalid: "


@dataclass(frozen=True)
class Policy:
    vhost: str
    name: str
    pattern: str
    apply_to: str
    priority: int
    definition: dict[str, Any]
    compiled: re.Pattern[str] = field(compare=False, repr=False)

    def applies_to(self, kind: str, name: str) -> bool:
        """`kind`: "queues" or "exchanges"."""
        return self.apply_to in ("all", kind) and self.compiled.search(name) is not None

    def record(self) -> dict[str, Any]:
        """As RabbitMQ's API and definitions show it."""
        return {
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "definition": dict(self.definition),
            "priority": self.priority,
        }


def parse_policy(vhost: str, name: str, body: dict[str, Any], *, operator: bool) -> Policy:
    """A policy from RabbitMQ's JSON (the API's body, a definitions file's entry), checked as RabbitMQ
    checks it: every problem found, one line each, in RabbitMQ's order. `body` has "pattern" and
    "definition"; "apply-to" defaults to all, "priority" to 0."""
    pattern, definition = body["pattern"], body["definition"]
    apply_to, priority = body.get("apply-to", "all"), body.get("priority", 0)
    problems = []
    definition_problem = _definition_problem(definition, operator)
    if definition_problem is not None:
        problems.append(definition_problem)
    if apply_to not in APPLY_TO:
        problems.append(f"apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'")
    compiled = None
    if not isinstance(pattern, str):
        problems.append(f"pattern should be a binary but was {erlang_term(pattern)}")
    else:
        try:
            compiled = re.compile(pattern)
        except re.error as error:
            text = _PCRE_TEXTS.get(error.msg, error.msg)
            # PCRE reports what is left open at the end of the pattern.
            at = len(pattern) if error.msg.startswith(("unterminated", "missing")) else error.pos or 0
            indent = " " * (len(_PATTERN_PROBLEM) + 1)
            problems.append(f'{_PATTERN_PROBLEM}{{"{text}",\n{indent}{at}}}')
    if not _is_int(priority):
        problems.append(f"priority should be a number, actually was {erlang_term(priority)}")
    if problems:
        text = "Validation failed\n\n" + "".join(p + "\n" for p in problems)
        # RabbitMQ escapes a policy's texts for HTML (an operator policy's not).
        raise PolicyError(text if operator else text.replace("<", "&lt;").replace(">", "&gt;"))
    assert compiled is not None and isinstance(definition, dict)
    return Policy(vhost, name, pattern, apply_to, priority, dict(definition), compiled)


def _definition_problem(definition: Any, operator: bool) -> str | None:
    if not isinstance(definition, dict):
        return f"{erlang_term(definition)} is not a valid policy definition"
    if not definition:
        return "no policy provided"
    known = OPERATOR_KEYS if operator else VALIDATORS.keys()
    for key in sorted(k for k in definition if k in known):
        problem = VALIDATORS[key](definition[key])
        if problem is not None:
            return problem
    unknown = sorted(k for k in definition if k not in known)
    if unknown:
        listed = ",".join(f"{{{erlang_term(k)},{erlang_term(definition[k])}}}" for k in unknown)
        return f"[{listed}] are not recognised policy settings"
    return None


def best(policies: Iterable[Policy], kind: str, name: str) -> Policy | None:
    """The policy that applies: the highest priority among those matching, the first by name on a tie."""
    found = None
    for policy in sorted(policies, key=lambda p: p.name):
        if policy.applies_to(kind, name) and (found is None or policy.priority > found.priority):
            found = policy
    return found


def effective_definition(policy: Policy | None, operator: Policy | None) -> dict[str, Any]:
    """What an object follows of its policy and operator policy together."""
    merged = dict(policy.definition) if policy is not None else {}
    if operator is not None:
        for key, value in operator.definition.items():
            current = merged.get(key)
            merged[key] = min(current, value) if key in LOWER_WINS and _is_int(current) else value
    return merged


def queue_arguments(arguments: dict[str, Any], definition: dict[str, Any]) -> dict[str, Any]:
    """The queue's x-arguments with the policy keys its type takes filled in from `definition`: the lower
    value for the numeric limits, the queue's own argument for the rest."""
    if not definition:
        return arguments
    allowed = TYPE_ARGUMENTS[_queue_type(arguments)]
    effective = dict(arguments)
    for key, value in definition.items():
        argument = "x-" + key
        if argument not in allowed:
            continue
        current = effective.get(argument)
        if current is None:
            effective[argument] = value
        elif key in LOWER_WINS and _is_int(current) and _is_int(value):
            effective[argument] = min(current, value)
    return effective


def _queue_type(arguments: dict[str, Any]) -> str:
    kind = arguments.get("x-queue-type")
    if isinstance(kind, bytes):
        kind = kind.decode("utf-8", "replace")
    return kind if kind in TYPE_ARGUMENTS else "classic"


class VhostPolicies:
    """A vhost's policies and operator policies, by name."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}
        self.operator: dict[str, Policy] = {}

    def of_kind(self, operator: bool) -> dict[str, Policy]:
        return self.operator if operator else self.policies

    def matching(self, kind: str, name: str) -> tuple[Policy | None, Policy | None]:
        """(the policy, the operator policy) that apply to the queue or exchange named `name`."""
        return best(self.policies.values(), kind, name), best(self.operator.values(), kind, name)

    def __bool__(self) -> bool:
        return bool(self.policies or self.operator)
