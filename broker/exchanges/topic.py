"""Topic exchange: binding keys are dot-separated patterns where `*` is one word and `#` any number.

Words are split on every '.', so "a..b" has an empty middle word and "" has no words at all (only
"" and "#" match it). Binding patterns live in a trie; routing results are memoised per routing key
in a bounded LRU cache that any bind or unbind clears.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, ClassVar

from leveret.amqp.constants import PRECONDITION_FAILED
from leveret.amqp.errors import ChannelError
from leveret.broker.message import Message

from .base import Binding, Destination, Exchange
from .destinations import DestinationSet

# RabbitMQ 4.3.5 refuses binding keys with more '#' words: each one multiplies matching work.
MAX_HASH_WILDCARDS = 2
CACHE_SIZE = 4096


def split_words(key: str) -> list[str]:
    # RabbitMQ treats the empty key as zero words, not one empty word.
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "destinations")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.destinations: DestinationSet | None = None


class TopicExchange(Exchange):
    kind: ClassVar[str] = "topic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._root = _Node()
        self._cache: OrderedDict[str, tuple[Destination, ...]] = OrderedDict()

    def validate_binding(self, routing_key: str, arguments: dict[str, Any]) -> None:
        hashes = split_words(routing_key).count("#")
        if hashes > MAX_HASH_WILDCARDS:
            raise ChannelError(
                PRECONDITION_FAILED,
                f"Topic binding key '{routing_key}' uses {hashes} '#' wildcards, "
                f"at most {MAX_HASH_WILDCARDS} are allowed",
            )

    def route(self, message: Message) -> tuple[Destination, ...]:
        key = message.routing_key
        cache = self._cache
        result = cache.get(key)
        if result is not None:
            cache.move_to_end(key)
            return result
        result = self.match(key)
        cache[key] = result
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
        return result

    def match(self, routing_key: str) -> tuple[Destination, ...]:
        """Destinations whose binding pattern matches `routing_key`, bypassing the cache."""
        words = split_words(routing_key)
        found: dict[Destination, None] = {}
        # (node, position) pairs already explored: '#' reaches the same state by many paths.
        seen: set[tuple[int, int]] = set()

        def visit(node: _Node, i: int) -> None:
            state = (id(node), i)
            if state in seen:
                return
            seen.add(state)
            children = node.children
            if i == len(words):
                for destination in node.destinations or ():
                    found[destination] = None
            else:
                for word in (words[i], "*"):
                    child = children.get(word)
                    if child is not None:
                        visit(child, i + 1)
            hash_child = children.get("#")
            if hash_child is not None:
                for j in range(i, len(words) + 1):
                    visit(hash_child, j)

        visit(self._root, 0)
        return tuple(found)

    def _added(self, binding: Binding) -> None:
        node = self._root
        for word in split_words(binding.routing_key):
            child = node.children.get(word)
            if child is None:
                child = node.children[word] = _Node()
            node = child
        if node.destinations is None:
            node.destinations = DestinationSet()
        node.destinations.add(binding.destination)
        self._cache.clear()

    def _removed(self, binding: Binding) -> None:
        words = split_words(binding.routing_key)
        path = [self._root]
        for word in words:
            path.append(path[-1].children[word])
        destinations = path[-1].destinations
        assert destinations is not None, "an indexed binding ends at a node holding it"
        destinations.remove(binding.destination)
        if not destinations:
            path[-1].destinations = None
        # Prune the branch back to the first node still holding bindings or other branches.
        for depth in range(len(words), 0, -1):
            node = path[depth]
            if node.destinations is not None or node.children:
                break
            del path[depth - 1].children[words[depth - 1]]
        self._cache.clear()
