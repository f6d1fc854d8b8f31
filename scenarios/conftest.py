"""Scenarios run against real labs (root, strongSwan, FRR); the vpnlab pytest plugin
(vpnlab.pytest_plugin, loaded through its entry point) provides `lab` and `scenario`."""
import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "scenarios" in item.path.parts:
            item.add_marker(pytest.mark.scenario)
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root: creates network namespaces"))

