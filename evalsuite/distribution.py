"""The part this process plays in a pytest-xdist run, told without importing torch.

With ``-n N`` (N >= 1) the controller only hands node ids to the workers and
collects their reports; the workers collect and run the cases. The controller's
start-up is on the critical path of every gate run (the workers start after
it), so it must stay light: it imports no torch and leaves to the workers what
needs it, such as building the methods' hooks or checking that CUDA is there; it
reports a worker's refusal as its own usage error (:func:`worker_usage_error`).
"""

from __future__ import annotations

import re

import pytest


def runs_cases(config: pytest.Config) -> bool:
    """Whether this process collects and runs cases: an xdist worker or a run without workers; not a
    controller that hands them out. The controller's test is xdist's own: a distribution mode and
    ``--tx`` specs (``-n N`` sets both for N >= 1), and not ``--collect-only``."""
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return True
    distributes = config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))
    return not distributes or bool(config.getoption("collectonly"))


_USAGE_ERROR = re.compile(r"^(?:pytest|_pytest\.config\.exceptions)\.UsageError: (.*)\Z", re.MULTILINE | re.DOTALL)


def worker_usage_error(error: object) -> str | None:
    """The message of the ``pytest.UsageError`` a worker died of, from the traceback xdist reports
    (``error`` of ``pytest_testnodedown``), or None when it died of something else.

    >>> worker_usage_error('Traceback (most recent call last):\\n  File "x.py", line 1\\n'
    ...                    'pytest.UsageError: m.toml: [methods.tome]: bad\\n')
    'm.toml: [methods.tome]: bad'
    >>> worker_usage_error("Not properly terminated") is None
    True
    """
    found = _USAGE_ERROR.search(str(error or "").rstrip())
    return found[1] if found else None
