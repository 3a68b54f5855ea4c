"""The end-of-run lines of the terminal report."""

from __future__ import annotations

import py_compile

from evalsuite.report.terminal import uncompiled_imports


def test_a_package_without_compiled_bytecode_is_pointed_out(tmp_path, monkeypatch):
    """Every worker and OCR process compiles such a package from source: the note names it and
    the way to keep its bytecode; once compiled, or where there is no such package, no note."""
    package = tmp_path / "slow_to_import"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))

    note = uncompiled_imports("slow_to_import")
    assert note is not None and note.startswith("slow_to_import has no compiled bytecode")
    assert "PYTHONPYCACHEPREFIX" in note
    py_compile.compile(str(package / "__init__.py"), doraise=True)  # where an import would write it
    assert uncompiled_imports("slow_to_import") is None
    assert uncompiled_imports("no_such_package_here") is None
