"""The exports against the REAL aiperf (pinned: aiperf==0.13.0, the release formats.md
describes), installed once in a virtualenv of its own by scripts/cached-venv (the helper
scripts/vllm-cpu-server installs vLLM with), under ~/.cache/weka-assets/aiperf. The first run
installs it (about 70 s here); the tests skip only when the install is impossible (exit 3).

(a) `aiperf analyze-trace` on the Mooncake export of real traces reports a `cache_hit_rate`
equal to this project's `aiperf_analyze_trace_hit_rate` (the same float: its JSON report
prints the full repr). (b) aiperf's own Mooncake loader (`MooncakeTraceDatasetLoader`, which
validates every line with its `MooncakeTrace` model and groups sessions) reads the
aiperf-payload export, and every turn's prompt is exactly the call's expanded tokens.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from weka_assets.exports import export_dataset
from weka_assets.replay.corpus_wide import timeline_order
from weka_assets.replay.unbounded import replay_unbounded
from weka_assets_tests.corpora import REAL_SAMPLE, decoded, synthetic

pytestmark = [pytest.mark.live, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SPEC = os.environ.get("WEKA_AIPERF_SPEC", "aiperf==0.13.0")
VENV = (
    Path(os.environ.get("WEKA_AIPERF_HOME", Path.home() / ".cache" / "weka-assets" / "aiperf"))
    / "venv"
)

LOADER = r"""
import hashlib, json, sys
from types import SimpleNamespace

import numpy as np
from aiperf.dataset.loader.models import MooncakeTrace
from aiperf.dataset.loader.mooncake_trace import MooncakeTraceDatasetLoader

path = sys.argv[1]
lines = [MooncakeTrace.model_validate_json(line) for line in open(path, "rb")]
# payload lines need no prompt synthesis: a stand-in for the prompt generator's two hooks
pg = SimpleNamespace(
    tokenizer=None, _hash_id_corpus_rng=SimpleNamespace(set_trace_id=lambda t: None), _cache={}
)
loader = MooncakeTraceDatasetLoader(filename=path, prompt_generator=pg)
conversations = loader.convert_to_conversations(loader.load_dataset())
digest = lambda p: hashlib.sha256(np.asarray(p, dtype=np.int32).tobytes()).hexdigest()
print(json.dumps({
    "lines": len(lines),
    "all_payload": all(t.payload is not None for t in lines),
    "sessions": {
        c.session_id: [[digest(t.raw_payload["prompt"]), t.max_tokens, t.timestamp] for t in c.turns]
        for c in conversations
    },
}))
"""


@pytest.fixture(scope="module")
def aiperf() -> Path:
    run = subprocess.run(
        [str(ROOT / "scripts" / "cached-venv"), str(VENV), SPEC, "aiperf",
         "--stamp", ".weka-aiperf-installed", "--label", "aiperf"],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if run.returncode == 3:
        pytest.skip(f"aiperf cannot be installed here: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    return VENV / "bin"


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="real sample missing")
def test_analyze_trace_hit_rate_equals_ours(aiperf, tmp_path):
    # three real traces (509k blocks; both of the first ten that have subagents): aiperf's
    # analysis takes time in proportion to the blocks (about 38 s for the first ten here)
    ds = decoded(REAL_SAMPLE).head(3)
    ours, _ = replay_unbounded(ds)
    export_dataset(ds, "mooncake", tmp_path / "m.jsonl")
    report = tmp_path / "report.json"
    run = subprocess.run(
        [str(aiperf / "aiperf"), "analyze-trace", str(tmp_path / "m.jsonl"), "--block-size",
         str(ds.block_sizes[0]), "--output-file", str(report)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    theirs = json.loads(report.read_text())
    assert theirs["total_requests"] == ds.n_calls
    assert theirs["cache_hit_rate"] == ours.aiperf_analyze_trace_hit_rate
    # per-trace scope: the corpus-wide block-weighted rate is the per-trace one
    assert ours.corpus_wide_theoretical_hit_rate == ours.theoretical_hit_rate


def test_aiperf_loader_reads_the_exact_tokens(aiperf, tmp_path):
    ds = decoded(synthetic("semianalysis", traces=4, seed=3))  # 92 calls, 57 by subagents
    out = tmp_path / "p.jsonl"
    export_dataset(ds, "aiperf-payload", out)
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    run = subprocess.run(
        [str(aiperf / "python"), str(script), str(out)], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["lines"] == ds.n_calls and got["all_payload"]
    expected: dict[str, list] = {}
    t_abs = np.asarray(ds.calls["t_abs"])
    for i in timeline_order(ds).tolist():
        session = f"{ds.traces[int(ds.calls['trace'][i])]['id']}:{int(ds.calls['conv'][i])}"
        tokens = ds.expand_call(i)
        expected.setdefault(session, []).append(
            [hashlib.sha256(tokens.astype(np.int32).tobytes()).hexdigest(),
             int(ds.calls["tokens_out"][i]), int(np.rint(t_abs[i] * 1000))]
        )  # fmt: skip
    assert len(expected) > len(ds.traces)  # subagent conversations are sessions of their own
    assert got["sessions"] == expected
