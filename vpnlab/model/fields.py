"""Field types of topology files, with messages that say what is wrong and what is
allowed: names, prefixes and addresses, and integers that YAML must not bend (a
boolean is not a number; Azure's integers are Int32 unless it says otherwise)."""
from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated

from pydantic import BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError

from vpnlab.model.yamlsrc import shown

INT32_MAX = 2**31 - 1
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_LEADING_ZERO = re.compile(r"(^|\.)0[0-9]")


def _name(value):
    if not isinstance(value, str):
        raise PydanticCustomError("name", "a name is text, got {value}", {"value": repr(value)})
    if NAME_RE.fullmatch(value):
        return value
    why = "1-40 letters, digits, '-' or '_', starting with a letter or digit"
    if "." in value:
        why += ("; Azure allows '.' in names, the lab does not: names become namespace, "
                "container and file names (use '-')")
    raise PydanticCustomError("name", "'{value}' is not a lab name: {why}",
                              {"value": shown(value), "why": why})


def _address_text(value, kind: str) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError(kind, "expected an IPv4 {what} as text, got {value}",
                                  {"what": kind, "value": repr(value)})
    if _LEADING_ZERO.search(value.split("/")[0]):
        raise PydanticCustomError(kind, "'{value}': leading zeros are not allowed in an address "
                                  "(some tools read them as octal)", {"value": shown(value)})
    return value


def _network(value):
    if isinstance(value, IPv4Network):
        return value
    text = _address_text(value, "prefix")
    try:
        return IPv4Network(text)
    except ValueError:
        pass
    try:
        loose = IPv4Network(text, strict=False)
    except ValueError:
        raise PydanticCustomError("prefix", "'{value}' is not an IPv4 prefix (a.b.c.d/len)",
                                  {"value": shown(text)}) from None
    raise PydanticCustomError("prefix", "'{value}' has host bits set: the prefix is {network}",
                              {"value": text, "network": str(loose)})


def _address(value):
    if isinstance(value, IPv4Address):
        return value
    text = _address_text(value, "address")
    try:
        return IPv4Address(text)
    except ValueError:
        raise PydanticCustomError("address", "'{value}' is not an IPv4 address (a.b.c.d)",
                                  {"value": shown(text)}) from None


Name = Annotated[str, BeforeValidator(_name)]
Prefix = Annotated[IPv4Network, BeforeValidator(_network)]
Address = Annotated[IPv4Address, BeforeValidator(_address)]
# strict: `true` is not 1; bounded: Azure's API takes Int32
Int32 = Annotated[int, Strict(), Field(le=INT32_MAX)]
Asn = Annotated[int, Strict(), Field(ge=1, le=4294967295)]
