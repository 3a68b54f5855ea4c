"""Hooks a ``conftest.py`` can implement to extend evalsuite."""

import pytest


@pytest.hookspec
def pytest_evalsuite_result(result, case):
    """Called on the worker with each :class:`~evalsuite.results.CaseResult` before its
    thresholds are checked and it is shipped to the controller: add KPIs, env entries or labels."""
