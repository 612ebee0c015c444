"""Turn a config file's bytes into plain data, refusing anything that could hurt the loader.

`yaml.SafeLoader` already refuses python/* tags; on top of that this caps the file size, nesting depth,
alias count and alias expansion (billion-laughs documents and `<<` merge chains grow exponentially), and
rejects recursive aliases and duplicate keys, which YAML would otherwise resolve silently.
"""

import os

import yaml
from yaml.composer import ComposerError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

MAX_FILE_SIZE = 1 << 20
MAX_DEPTH = 32
MAX_ALIASES = 64
# Nodes after expanding every alias: generous for any real config, tiny next to a billion laughs.
MAX_NODES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return node.value
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Count nodes as if aliases were copies, without copying; iterative, as alias chains nest deeply."""
    sizes: dict[int, int] = {}
    ancestors: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        if finished:
            ancestors.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[id(node)] > MAX_NODES:
                raise ComposerError(
                    None, None, f"document expands to more than {MAX_NODES} nodes", node.start_mark
                )
        elif id(node) in ancestors:
            raise ComposerError(None, None, "recursive alias", node.start_mark)
        elif id(node) not in sizes:
            ancestors.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: object) -> Node:
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases", mark)
        self._depth += 1
        try:
            # The composer recurses per level; stop long before Python's recursion limit.
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise ComposerError(None, None, f"duplicate key {key.value!r}", key.start_mark)
                seen.add((key.tag, key.value))
        return node

    def construct_document(self, node: Node) -> object:
        _check_expansion(node)
        return super().construct_document(node)


def _describe_yaml_error(error: yaml.YAMLError) -> str:
    if not isinstance(error, yaml.MarkedYAMLError):
        return str(error)
    problem = ": ".join(part for part in (error.context, error.problem) if part)
    mark = error.problem_mark or error.context_mark
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; ConfigError if it is unreadable or larger than MAX_FILE_SIZE."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as error:
        raise ConfigError([f"cannot read: {error.strerror or error}"], os.fspath(path)) from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError([f"file is larger than {MAX_FILE_SIZE} bytes"], os.fspath(path))
    return data


def parse(data: bytes, source: str) -> object:
    """The YAML document in `data` as plain Python data; ConfigError for anything but one sane document."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError([f"not valid UTF-8 (byte {error.start})"], source) from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise ConfigError([_describe_yaml_error(error)], source) from None
    finally:
        loader.dispose()
