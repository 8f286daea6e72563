"""A Bailian file against the real aiperf 0.13.0 (installed as `weka_assets_tests/exports/
test_aiperf.py` installs it): where both compute the same definition, the figures agree.

(a) `aiperf analyze-trace FILE --block-size 16` reads the Bailian lines (it needs only
`input_length` and `hash_ids`) and reports the mean over requests, in file order, of the
leading run of already-seen ids over len(hash_ids): our `aiperf_analyze_trace_hit_rate` on the
decoded dataset (the same requests on the corpus timeline, which is file order here) is the
same float. (b) aiperf's own Bailian loader (`BailianTraceDatasetLoader`) groups the lines into
the same sessions, in the same turn order, as our reader."""

import json
import subprocess

import numpy as np
import pytest

from weka_assets.pipeline import decode_corpus, replay
from weka_assets.traces.reader import iter_records
from weka_assets_tests.bailian import bailian_requests, write_bailian
from weka_assets_tests.exports.test_aiperf import aiperf  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.live, pytest.mark.slow]

GROUP = r"""
import json, sys
from aiperf.dataset.loader.bailian_trace import BailianTraceDatasetLoader
from aiperf.dataset.loader.models import BailianTrace

items = [BailianTrace.model_validate_json(line) for line in open(sys.argv[1], "rb")]
groups = BailianTraceDatasetLoader._group_into_sessions(None, items)
print(json.dumps({root: [t.chat_id for t in ts] for root, ts in groups.items()}))
"""


def test_aiperf_reads_the_same_sessions_and_hit_rate(aiperf, tmp_path):  # noqa: F811
    reqs = bailian_requests(60, turns=(1, 8), seed=2)
    path = write_bailian(tmp_path / "b.jsonl", reqs)
    report = tmp_path / "report.json"
    run = subprocess.run(
        [str(aiperf / "aiperf"), "analyze-trace", str(path), "--block-size", "16",
         "--output-file", str(report)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = json.loads(report.read_text())
    out = decode_corpus(path, tmp_path / "ds")
    ours, _ = replay(out.path)
    assert theirs["total_requests"] == len(reqs)
    assert theirs["cache_hit_rate"] == ours.aiperf_analyze_trace_hit_rate

    script = tmp_path / "group.py"
    script.write_text(GROUP)
    run = subprocess.run(
        [str(aiperf / "python"), str(script), str(path)], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    groups = json.loads(run.stdout.strip().splitlines()[-1])
    chat_of_line = {i + 1: r["chat_id"] for i, r in enumerate(reqs)}
    (rec,) = list(iter_records(path))
    table, mine = rec.trace, {}
    for s, root in enumerate(table.session_roots.tolist()):
        k = np.flatnonzero(table.session == s)
        k = k[np.argsort(table.position[k])]
        mine[str(root)] = [chat_of_line[int(line)] for line in table.line[k]]
    assert mine == groups
