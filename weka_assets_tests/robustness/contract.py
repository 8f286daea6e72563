"""The reading contract every record must keep, whatever the input (asserted by the fuzz tests).

`iter_records(path)` yields, per record, a parsed trace or a `TraceError` carrying a
`Location`: the file always; the 1-based line for a `.jsonl[.gz]` record (a file-level
`truncated_file` error names the file only); the trace id, request and inner index when they
exist. Every error prints as one line. Nothing else is raised.
"""

from collections import Counter

import orjson

from weka_assets.errors import Location, TraceError
from weka_assets.traces.reader import Record, iter_records
from weka_assets.traces.scope import ScopeReport
from weka_assets_tests.robustness.strategies import BYTES, Corpus

# rules raised before a trace id can be known
NO_TRACE_RULES = {"invalid_json", "not_an_object", "truncated_file"}


def check_error(err, file: str, line: int | None, raw=BYTES, stored: bool = True) -> None:
    """One hard error: our type, located, one printable line, serialisable for the report
    (`stored`: values read from files; a Python caller's lone surrogates cannot be UTF-8)."""
    assert isinstance(err, TraceError), f"{type(err).__name__}: {err}"
    loc = err.location
    assert isinstance(loc, Location)
    assert loc.file == file, (loc.file, file)
    assert loc.line == line, (loc.line, line, err)
    assert isinstance(err.rule, str) and err.rule and err.rule.isidentifier(), err.rule
    assert isinstance(err.message, str) and err.message
    text = str(err)
    assert "\n" not in text and "\r" not in text, f"more than one line: {text!r}"
    assert f"[{err.rule}]" in text
    if stored:
        orjson.dumps(err.as_dict())  # what the scope report stores
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, str) and rid and err.rule not in NO_TRACE_RULES:
            assert loc.trace == rid, f"error does not name trace {rid!r}: {err}"
        if loc.request is not None:
            reqs = raw.get("requests")
            assert isinstance(reqs, list) and 0 <= loc.request < len(reqs), err
            if loc.inner is not None:
                sub = reqs[loc.request]
                assert isinstance(sub, dict) and isinstance(sub.get("requests"), list), err
                assert 0 <= loc.inner < len(sub["requests"]), err
    elif raw is not BYTES:
        assert loc.request is None and loc.inner is None, err
    if loc.inner is not None:
        assert loc.request is not None, err


def check_record(rec, raw=BYTES) -> None:
    assert isinstance(rec, Record), type(rec)
    assert (rec.trace is None) != (rec.error is None), rec
    if rec.error is not None:
        check_error(rec.error, rec.file, rec.line, raw)
        return
    t = rec.trace
    assert (t.file, t.line) == (rec.file, rec.line)
    if isinstance(raw, dict):
        assert t.id == raw["id"]
        assert len(t.parent_calls) + len(t.subagents) == len(raw["requests"])
    elif raw is not BYTES:
        raise AssertionError(f"a {type(raw).__name__} parsed as a trace: {raw!r:.200}")


def read_and_check(c: Corpus) -> list[Record]:
    """Read the corpus, check every record, and compare with what was written."""
    recs = list(iter_records(c.path))
    for rec in recs:
        # a damaged gzip can inflate to other bytes before its checksum fails at the end
        raw = BYTES if c.damaged else c.records.get((rec.file, rec.line), BYTES)
        check_record(rec, raw)
    if c.layout == "folder":
        # one record per *.json regular file, in file-name order
        assert [(r.file, r.line) for r in recs] == sorted(c.records), recs
        return recs
    file_errors = [r for r in recs if r.line is None]
    line_recs = [r for r in recs if r.line is not None]
    assert all(r.error.rule == "truncated_file" for r in file_errors), file_errors
    assert len(file_errors) <= 1 and (not file_errors or recs[-1] is file_errors[0])
    lines = [r.line for r in line_recs]
    assert lines == sorted(set(lines)), lines
    if c.layout == "jsonl" or not c.damaged:
        assert not file_errors, file_errors
        assert [(r.file, r.line) for r in line_recs] == sorted(c.records)
    else:
        # a damaged gzip: records up to the damage, then at most one file-level error
        assert all(r.file == str(c.path) for r in recs)
    return recs


def check_report(report: ScopeReport, recs: list[Record]) -> None:
    """The scope report lists every record's hard error instead of crashing on any of them."""
    assert isinstance(report, ScopeReport)
    assert report.traces == len(recs)
    bad = [r.error for r in recs if r.error is not None]
    have = Counter(e["rule"] for e in report.hard_errors)
    assert not Counter(e.rule for e in bad) - have, (have, [e.rule for e in bad])
    if bad:
        assert not report.passed and report.failure_reasons
    for e in report.hard_errors:
        assert e["file"] is not None and e["rule"] and e["message"]
    # stored and shown exactly as the CLI and the trace_scope asset do
    orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
    report.summary()
