"""Scenarios run against real labs (root, strongSwan, FRR). The vpnlab pytest plugin
(vpnlab.pytest_plugin, loaded through its entry point) provides `vpnlab_lab`,
`vpnlab_scenario` and `vpnlab_factory`; this suite calls them by short names."""
import os

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "scenarios" in item.path.parts:
            item.add_marker(pytest.mark.scenario)
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root: creates network namespaces"))


@pytest.fixture(scope="module")
def lab(vpnlab_lab):
    return vpnlab_lab


@pytest.fixture
def scenario(vpnlab_scenario):
    return vpnlab_scenario


@pytest.fixture(scope="session")
def lab_factory(vpnlab_factory):
    return vpnlab_factory
