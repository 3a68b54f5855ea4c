"""Project conftest: the evalsuite plugin itself is loaded through its ``pytest11``
entry point (``pip install -e .``). Project-specific extensions go here, e.g. a
``pytest_evalsuite_result(result, case)`` hook that adds KPIs or labels."""

import os


def pytest_evalsuite_result(result, case):
    # Team-level tag recorded with every row (ClickHouse `tenant_id` comes from EVALSUITE_TENANT).
    result.env.setdefault("ci", "true" if os.environ.get("CI") else "false")
