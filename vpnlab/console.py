"""Where the command line writes: data to stdout (tables, or one JSON object whose
first key versions its shape), progress and errors to stderr."""
from __future__ import annotations

import json

from rich.console import Console

out = Console()
err = Console(stderr=True)
API_VERSION = 1     # of every --json output's shape: a new key is compatible, a renamed one is not


def print_json(data: dict):
    """Data on stdout: one JSON object, the version of its shape first."""
    print(json.dumps({"api_version": API_VERSION, **data}, indent=1))
