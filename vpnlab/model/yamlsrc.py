"""YAML loading that remembers where every value came from, for error messages, and that
no file can crash or hang: bounded size, depth and alias expansion, only the plain
YAML types (unknown tags are refused), merge keys (`<<: *anchor`) supported, and
YAML 1.1's surprises (yes/no booleans, octal and base-60 numbers) refused where they
would silently change a value."""
from __future__ import annotations

import contextlib
import gc
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# libyaml's parser where PyYAML has it (10x faster on large files), else PyYAML's own
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_BYTES = 32 * 1024 * 1024      # a 10,000-site design is about 3 MB
MAX_DEPTH = 64                    # a topology nests 8 levels deep
MAX_VALUES = 2_000_000            # values after alias expansion ("billion laughs")

PLAIN_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
MERGE = "tag:yaml.org,2002:merge"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
# a value `vpnlab import` could not know (a secure parameter, a Key Vault reference): every
# command refuses the file until it is filled in
REQUIRED_TAG = "!required"
# YAML 1.1 reads these plain scalars as booleans or numbers; YAML 1.2 (and most people)
# read them as text or decimal numbers. Refused so that `asn: yes` is not ASN 1.
YAML11_BOOL = re.compile(r"^(yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$")
YAML11_INT = re.compile(r"^[-+]?(0[0-7_]+|0o[0-7_]+|0b[01_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(:[0-5]?[0-9])+|[0-9]+_[0-9_]*)$")


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
        dotted = ".".join(shown(p) for p in loc) or "(top level)"
        return f"{self.path}:{line}: {dotted}" if line else f"{self.path}: {dotted}"


def shown(value) -> str:
    """A value as it can be read in a message: invisible and control characters are
    written as escapes (a name with a zero-width space looks like another)."""
    text = str(value)
    if all(ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zs") or ch == " " for ch in text):
        return text
    return text.encode("unicode_escape").decode("ascii").replace("\\\\", "\\")


class _Converter:
    """Turns PyYAML's node tree into plain data, noting each value's line and refusing
    duplicate keys (which plain YAML loading silently overwrites)."""

    def __init__(self, path: Path):
        self.path, self.lines = path, {}
        self.scalars = yaml.SafeLoader("")
        self.values = 0
        self.open: set[int] = set()          # nodes being converted: a cycle is an error

    def fail(self, node, message: str, loc: tuple = ()):
        field = ".".join(shown(p) for p in loc)
        raise SourceError(f"{self.path}:{node.start_mark.line + 1}: {field + ': ' if field else ''}{message}")

    def convert(self, node, loc: tuple = ()):
        self.values += 1
        if self.values > MAX_VALUES:
            self.fail(node, f"aliases expand to more than {MAX_VALUES:,} values; a topology "
                            "needs far fewer (is an anchor used inside itself many times over?)", loc)
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if len(loc) > MAX_DEPTH:
            self.fail(node, f"nested more than {MAX_DEPTH} levels deep; a topology nests far less", loc)
        if id(node) in self.open:
            self.fail(node, "an alias refers to a node that contains it (a recursive alias)", loc)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if node.tag not in PLAIN_TAGS:
            self.fail(node, f"tag {node.tag!r} is not allowed; topology files use plain "
                            "mappings, lists, text and numbers", loc)
        self.open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self.mapping(node, loc)
            return [self.convert(v, loc + (i,)) for i, v in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def mapping(self, node, loc: tuple) -> dict:
        out, merged = {}, {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                for key, value in self.merge_sources(value_node, loc):
                    merged.setdefault(key, value)
                continue
            key = self.key(key_node, loc)
            if key in out:
                self.fail(key_node, f"duplicate key '{shown(key)}'", loc + (key,))
            # a field's line is its key's: a nested mapping's value starts a line below
            self.lines.setdefault(loc + (key,), key_node.start_mark.line + 1)
            out[key] = self.convert(value_node, loc + (key,))
        for key, value in merged.items():       # explicit keys win over merged ones
            out.setdefault(key, value)
        return out

    def merge_sources(self, node, loc: tuple):
        """`<<: *anchor` or `<<: [*a, *b]` (the first one that has a key wins)."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                self.fail(source, "a merge key (<<) takes a mapping or a list of mappings", loc)
            yield from self.convert(source, loc).items()

    def key(self, node, loc: tuple):
        if not isinstance(node, yaml.ScalarNode):
            kind = "list" if isinstance(node, yaml.SequenceNode) else "mapping"
            self.fail(node, f"a mapping key must be a plain name or number, not a {kind}", loc)
        return self.scalar(node, loc)

    def scalar(self, node, loc: tuple):
        if node.tag == TIMESTAMP:       # a date-like value is text to the topology
            return node.value
        if node.tag == REQUIRED_TAG:
            self.fail(node, f"to fill in: vpnlab import could not know it ({node.value})", loc)
        if node.tag not in PLAIN_TAGS:
            self.fail(node, f"tag {node.tag!r} is not allowed; topology files use plain "
                            "mappings, lists, text and numbers", loc)
        if not node.style:             # plain (unquoted): where YAML 1.1 differs from 1.2
            if YAML11_BOOL.match(node.value):
                self.fail(node, f"'{node.value}' is a boolean in YAML 1.1 and text in YAML 1.2: "
                                "write true or false, or quote it for text", loc)
            if node.tag.endswith(":int") and YAML11_INT.match(node.value):
                self.fail(node, f"'{node.value}' is not a plain decimal number (YAML 1.1 reads "
                                "leading zeros as octal, ':' as base 60): write it in decimal, "
                                "or quote it for text", loc)
        return self.scalars.construct_object(node)


@contextlib.contextmanager
def paused_gc():
    """The cyclic garbage collector off while a file becomes a model: a large file makes
    hundreds of thousands of objects without cycles, and the collector's passes over
    them made validation grow faster than the file (10,000 sites: 1.9 s of 3)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise SourceError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise SourceError(f"{path}: {len(raw):,} bytes; a topology file may have at most {MAX_BYTES:,}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(raw) > 1 and b"\x00" in raw[:2]):
        raise SourceError(f"{path}: the file is UTF-16; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        start = raw.rfind(b"\n", 0, err.start) + 1
        end = raw.find(b"\n", err.start)
        text = raw[start:end if end >= 0 else len(raw)].decode("utf-8", "backslashreplace")
        raise SourceError(f"{path}:{line}: byte {err.start} (0x{raw[err.start]:02x}) in '{text[:80]}' "
                          "is not UTF-8; topology files are UTF-8") from None
    nul = text.find("\x00")
    if nul >= 0:
        raise SourceError(f"{path}:{text[:nul].count(chr(10)) + 1}: a NUL character (offset {nul}); "
                          "topology files are text")
    return text


def _check_depth(path: Path, text: str, loader=yaml.SafeLoader):
    """Deep nesting refused from the event stream, which is read iteratively, before the
    recursive composer sees it (libyaml's composer stops at its own limit, and this then
    names the field); the message names the field it reached."""
    stack: list[list] = []           # per open collection: [is_mapping, next_is_key, key or index]

    def item_starts(event):
        if not stack:
            return
        top = stack[-1]
        if top[0]:
            if top[1]:
                top[2] = event.value if isinstance(event, yaml.ScalarEvent) else "?"
            top[1] = not top[1]
        else:
            top[2] += 1

    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
            item_starts(event)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            item_starts(event)
            if len(stack) >= MAX_DEPTH:
                field = ".".join(shown(entry[2]) for entry in stack[:8]) + " ..."
                raise SourceError(f"{path}:{event.start_mark.line + 1}: {field}: nested more than "
                                  f"{MAX_DEPTH} levels deep; a topology nests far less")
            stack.append([True, True, None] if isinstance(event, yaml.MappingStartEvent)
                         else [False, False, -1])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()


def load(path: Path | str) -> Source:
    path = Path(path)
    text = _text(path)
    try:
        if FAST_LOADER is yaml.SafeLoader:     # PyYAML's own composer recurses: check first
            _check_depth(path, text)
        node = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.MarkedYAMLError as err:
        if "nesting depth" in str(err.problem):    # libyaml's own limit: find the field
            _check_depth(path, text, yaml.SafeLoader)
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise SourceError(f"{path}{line}: malformed YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:      # the reader's own errors (non-printable characters)
        raise SourceError(f"{path}: malformed YAML: {err}") from None
    converter = _Converter(path)
    data = converter.convert(node) if node is not None else None
    return Source(path, data, converter.lines)
