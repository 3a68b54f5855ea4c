"""The gate: one test per model x method(+params) x dataset of the case matrix.

Cases come from the matrix files named by ``evalsuite_matrix`` in pytest.ini
(or ``--evalsuite-matrix``); limits from ``thresholds.toml``. Select with
``-k`` (``-k "tome and sroie"``) or markers (``-m gpu``).
"""


def test_case(case, evalsuite, request):
    result = evalsuite.evaluate(case, request.node)
    evalsuite.assert_passed(result)
