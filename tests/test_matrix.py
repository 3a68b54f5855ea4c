"""Case matrices read in two steps: :func:`matrix.read` without torch (the xdist controller's
part), :func:`matrix.expand` building every method (the workers' part)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evalsuite import matrix

REPO = Path(__file__).resolve().parents[1]
MATRICES = [REPO / "cases" / "default.toml", REPO / "cases" / "gpu.toml"]


def test_case_ids_split_into_model_and_dataset_without_the_methods():
    """The controller schedules by model and dataset from the node ids alone: the split must agree
    with the cases the workers build."""
    files = matrix.read(MATRICES)
    model_ids = {m.id for f in files for m in f.models}
    dataset_ids = {d.id for f in files for d in f.datasets}
    cases = matrix.expand(files)
    assert len(cases) > 50 and {c.model.id for c in cases} == model_ids
    for case in cases:
        assert matrix.split_case_id(case.id, model_ids, dataset_ids) == (case.model.id, case.dataset.id)
    assert matrix.split_case_id("test_something_else", model_ids, dataset_ids) is None


def test_reading_imports_no_torch():
    code = ("import sys; from evalsuite import matrix; "
            f"files = matrix.read({[str(p) for p in MATRICES]!r}); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sum(len(f.methods) for f in files))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == len({(c.source, c.method_id) for c in matrix.load(MATRICES)})


def test_method_parameters_are_checked_when_expanded(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[models.dinov2_s14]\n[methods.tome]\nmerge_factor = [0.5, 1.5]\n[datasets.samples]\n")
    files = matrix.read([path])  # names only
    assert [m.params for m in files[0].methods] == [{"merge_factor": 0.5}, {"merge_factor": 1.5}]
    with pytest.raises(matrix.MatrixError, match=r"m\.toml: \[methods\.tome\]: tome: merge_factor must be in"):
        matrix.expand(files)
