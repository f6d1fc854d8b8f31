"""Errors every layer may raise. The CLI maps LabError to exit code 1 and SourceError
(bad input, vpnlab/model/yamlsrc.py) to exit code 2."""


class LabError(Exception):
    """A lab operation failed; the message says what, and what was seen last."""


class RuntimeFailure(LabError):
    """A node or daemon could not be set up."""
