"""ARM template expressions: "[concat(parameters('prefix'), '-gw')]" and the like.

Only what names, addresses and settings need: parameters(), variables(), string and
array functions, resourceId() and the resource group. A value the template cannot give
here (reference() of a deployed resource, a secure parameter without a value, a Key
Vault reference) is an Unknown, which the import writes as a placeholder to fill in.
ARM's language is small and this project needs a fraction of it, so it is evaluated
here rather than through a dependency (no maintained Python evaluator exists).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from vpnlab.model.names import SUBSCRIPTION

RESOURCE_GROUP = {"name": "vpnlab-import", "location": "westeurope",
                  "id": f"/subscriptions/{SUBSCRIPTION}/resourceGroups/vpnlab-import"}


class ArmError(Exception):
    """An expression that cannot be read or evaluated; the message says which."""


@dataclass(frozen=True)
class Unknown:
    """A value the template does not give here, and why."""
    why: str

    def __str__(self):
        return f"<{self.why}>"


TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                   r"|(?P<punct>[()\[\],.]))")


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise ArmError(f"cannot read the expression at '{text[pos:pos + 20]}'")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class Evaluator:
    def __init__(self, parameters: dict, variables: dict):
        self.parameters = parameters      # name -> value (Unknown where none)
        self.variable_sources = variables
        self.variable_values: dict = {}
        self.copy_index: int | None = None      # in a resource's copy loop: its index

    # ---------------------------------------------------------------- values

    def value(self, v):
        """A template value with every expression in it evaluated."""
        if isinstance(v, str):
            return self.string(v)
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        return v

    def string(self, s: str):
        if s.startswith("[[") or not (s.startswith("[") and s.endswith("]")):
            return s[1:] if s.startswith("[[") else s        # "[[" escapes a literal "["
        toks = tokens(s[1:-1])
        result, rest = self._expr(toks, 0)
        if rest != len(toks):
            raise ArmError(f"unexpected '{toks[rest][1]}' in {s}")
        return result

    def variable(self, name: str):
        if name not in self.variable_values:
            if name not in self.variable_sources:
                raise ArmError(f"variables('{name}'): no such variable")
            self.variable_values[name] = Unknown(f"variable {name} refers to itself")
            self.variable_values[name] = self.value(self.variable_sources[name])
        return self.variable_values[name]

    # ---------------------------------------------------------------- parsing

    def _expr(self, toks, i):
        kind, text = toks[i]
        if kind == "str":
            value, i = text[1:-1].replace("''", "'"), i + 1
        elif kind == "num":
            value, i = int(text), i + 1
        elif kind == "name":
            if i + 1 >= len(toks) or toks[i + 1][1] != "(":
                raise ArmError(f"'{text}' is not a function call")
            args, i = [], i + 2
            while toks[i][1] != ")":
                arg, i = self._expr(toks, i)
                args.append(arg)
                if toks[i][1] == ",":
                    i += 1
            value, i = self.call(text, args), i + 1
        else:
            raise ArmError(f"unexpected '{text}'")
        while i < len(toks) and toks[i][1] in (".", "["):
            if toks[i][1] == ".":
                key, i = toks[i + 1][1], i + 2
            else:
                key, i = self._expr(toks, i + 1)
                i += 1                                # "]"
            value = self.member(value, key)
        return value, i

    @staticmethod
    def member(value, key):
        if isinstance(value, Unknown):
            return value
        try:
            if isinstance(value, dict):
                match = next((k for k in value if k.lower() == str(key).lower()), key)
                return value[match]
            return value[key]
        except (KeyError, IndexError, TypeError):
            raise ArmError(f"no '{key}' in {json.dumps(value)[:60]}") from None

    # ---------------------------------------------------------------- functions

    def call(self, name: str, args: list):
        fn = FUNCTIONS.get(name.lower())
        if fn is None:
            raise ArmError(f"the template function {name}() is not evaluated by vpnlab import")
        if name.lower() not in PASSES_UNKNOWN and any(isinstance(a, Unknown) for a in args):
            return next(a for a in args if isinstance(a, Unknown))
        return fn(self, *args)


def _parameters(ev: Evaluator, name: str):
    if name not in ev.parameters:
        raise ArmError(f"parameters('{name}'): no such parameter")
    return ev.parameters[name]


def _resource_id(ev: Evaluator, *parts):
    """resourceId([subscription, group,] 'Namespace/type[/child]', name[, child name])."""
    i = next(k for k, p in enumerate(parts) if isinstance(p, str) and "/" in p)
    types, names = parts[i].split("/"), list(parts[i + 1:])
    path = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP['name']}/providers/{types[0]}"
    for t, n in zip(types[1:], names):
        path += f"/{t}/{n}"
    return path


def _copy_index(ev, *args):
    if ev.copy_index is None:
        raise ArmError("copyIndex() outside a resource's copy loop (property loops are not evaluated)")
    offset = next((a for a in args if isinstance(a, int)), 0)
    return ev.copy_index + offset


def _format(ev, fmt: str, *args):
    def one(m):
        value = args[int(m.group(1))]
        return str(value).lower() if isinstance(value, bool) else str(value)
    return re.sub(r"\{(\d+)(?::[^}]*)?\}", one, fmt)


def _concat(ev, *args):
    if args and all(isinstance(a, list) for a in args):
        return [x for a in args for x in a]
    return "".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args)


def _unique_string(ev, *args):
    return hashlib.sha256("-".join(map(str, args)).encode()).hexdigest()[:13]


def _if(ev, cond, yes, no):
    if isinstance(cond, Unknown):
        return cond
    return yes if cond else no


FUNCTIONS = {
    "parameters": _parameters,
    "variables": lambda ev, name: ev.variable(name),
    "concat": _concat,
    "format": _format,
    "resourceid": _resource_id,
    "resourcegroup": lambda ev: dict(RESOURCE_GROUP),
    "subscription": lambda ev: {"subscriptionId": SUBSCRIPTION, "id": f"/subscriptions/{SUBSCRIPTION}"},
    "reference": lambda ev, *a: Unknown(f"reference({a[0] if a else ''}) of a deployed resource"),
    "tolower": lambda ev, s: s.lower(),
    "toupper": lambda ev, s: s.upper(),
    "string": lambda ev, v: json.dumps(v) if isinstance(v, (dict, list)) else
    (str(v).lower() if isinstance(v, bool) else str(v)),
    "int": lambda ev, v: int(v),
    "bool": lambda ev, v: v if isinstance(v, bool) else str(v).lower() == "true",
    "true": lambda ev: True,
    "false": lambda ev: False,
    "not": lambda ev, v: not v,
    "and": lambda ev, *a: all(a),
    "or": lambda ev, *a: any(a),
    "equals": lambda ev, a, b: a == b,
    "if": _if,
    "empty": lambda ev, v: not v,
    "length": lambda ev, v: len(v),
    "first": lambda ev, v: v[0],
    "last": lambda ev, v: v[-1],
    "split": lambda ev, s, sep: s.split(sep) if isinstance(sep, str) else re.split("|".join(map(re.escape, sep)), s),
    "replace": lambda ev, s, a, b: s.replace(a, b),
    "substring": lambda ev, s, start, length=None: s[start:] if length is None else s[start:start + length],
    "createarray": lambda ev, *a: list(a),
    "array": lambda ev, v: v if isinstance(v, list) else [v],
    "createobject": lambda ev, *a: dict(zip(a[::2], a[1::2])),
    "json": lambda ev, s: json.loads(s),
    "union": lambda ev, *a: ({k: v for d in a for k, v in d.items()} if all(isinstance(d, dict) for d in a)
                             else list(dict.fromkeys(x for lst in a for x in lst))),
    "contains": lambda ev, c, v: v in c,
    "coalesce": lambda ev, *a: next((x for x in a if x is not None), None),
    "add": lambda ev, a, b: a + b,
    "sub": lambda ev, a, b: a - b,
    "mul": lambda ev, a, b: a * b,
    "uniquestring": _unique_string,
    "copyindex": _copy_index,
    "guid": lambda ev, *a: "-".join((_unique_string(ev, *a) * 3)[i:j] for i, j in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))),
}
# functions that decide on an Unknown themselves (if(): only the chosen branch matters)
PASSES_UNKNOWN = {"if", "coalesce", "createarray", "createobject"}
