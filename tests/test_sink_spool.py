"""The JSONL spool: round trip, file naming, moving ingested files aside."""

from __future__ import annotations

import math

import pytest

from evalsuite.results import Breach, CaseResult, RunInfo, SampleRecord
from evalsuite.sinks import spool
from evalsuite.sinks.spool import SpoolSink

RUN = RunInfo("2026-11-22T10:00/run 1", "2026-11-22T10:00:00Z", "abc", "box", "cpu", versions={"torch": "2.13"})
CASE = CaseResult("c1", "vit", "tome", {"r": 8}, "sroie", kpis={"ocr_wer": float("nan"), "emd": 0.2},
                  breaches=[Breach("emd", 0.2, 0.1, "<=", "t")],
                  samples=[SampleRecord("s1", "receipt", {"ocr_wer": 0.1}, {"text": "x"})], labels=["random-weights"])


def test_round_trip_keeps_everything(tmp_path):
    path = spool.append(spool.spool_file(tmp_path, RUN.run_id), RUN, [CASE])
    assert path.name == "2026-11-22T10_00_run_1.jsonl"
    [(run, [case])] = spool.load(path)
    assert run == RUN
    assert math.isnan(case.kpis.pop("ocr_wer"))
    expected = CaseResult.from_json(CASE.to_json())
    expected.kpis.pop("ocr_wer")
    assert case == expected


def test_appending_the_same_run_again_merges(tmp_path):
    sink = SpoolSink("spool://" + str(tmp_path))
    first = sink.write(RUN, [CASE])
    second = sink.write(RUN, [CASE])
    assert first.spooled and first.rows == 2 and first.where == second.where
    [(_, cases)] = spool.load(first.where)
    assert len(cases) == 2  # ingestion dedups them by row id


def test_mark_done_never_overwrites(tmp_path):
    paths = []
    for _ in range(2):
        path = spool.append(tmp_path / "r.jsonl", RUN, [CASE])
        paths.append(spool.mark_done(path))
    assert [p.name for p in paths] == ["r.jsonl", "r.1.jsonl"]
    assert all(p.parent == tmp_path / "done" for p in paths)
    assert not (tmp_path / "r.jsonl").exists()


def test_a_bad_line_names_file_and_line(tmp_path):
    path = spool.append(tmp_path / "r.jsonl", RUN, [CASE])
    with open(path, "a") as f:
        f.write('{"type": "case", "run_id": "nope", "case": {}}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:3"):
        spool.load(path)
