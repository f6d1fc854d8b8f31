"""YAML loading that remembers where every value came from, for error messages."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml


class SourceError(Exception):
    """Bad input: the message names the file, the field path and what is allowed."""


@dataclass
class Source:
    path: Path
    data: object
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, loc: tuple) -> int | None:
        """Line of the deepest known ancestor of a field path (1-based)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return None

    def where(self, loc: tuple) -> str:
        line = self.line(loc)
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        return f"{self.path}:{line}: {dotted}" if line else f"{self.path}: {dotted}"


class _Converter:
    """Turns PyYAML's node tree into plain data, noting each value's line and refusing
    duplicate keys (which plain YAML loading silently overwrites)."""

    def __init__(self, path: Path):
        self.path, self.lines = path, {}
        self.scalars = yaml.SafeLoader("")

    def convert(self, node, loc: tuple = ()):
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = self.scalars.construct_object(key_node)
                if key in out:
                    raise SourceError(f"{self.path}:{key_node.start_mark.line + 1}: "
                                      f"duplicate key '{key}'")
                out[key] = self.convert(value_node, loc + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(v, loc + (i,)) for i, v in enumerate(node.value)]
        return self.scalars.construct_object(node)


def load(path: Path | str) -> Source:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SourceError(f"{path}: cannot read: {err.strerror}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SourceError(f"{path}{line}: malformed YAML: {err.problem or err}") from None
    converter = _Converter(path)
    data = converter.convert(node) if node is not None else None
    return Source(path, data, converter.lines)
