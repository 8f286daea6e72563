"""The operator's path through the Dagster UI, clicked in a real headless Chromium against a
real `dagster dev` over a copy of the project:

1. a fresh instance: dismiss the first-run dialog; the discovery sensor registers the corpora;
2. Lineage, filter out the `live` group, Materialize all, pick the `sample` and `sample-kvt`
   corpora, Launch backfill; wait until the whole graph is materialized and its runs succeeded;
3. open `replay_benchmark`, partition `sample|deepseek`: the token-replay hit rate shown in its
   metadata is the one stored in the store's result.json, and its capacity plot renders;
4. raise MANIFEST_VERSION in the copy, Reload definitions: the decoding assets' partitions
   show as Unsynced (stale) on their Partitions view;
5. select the decoding groups, Materialize all, all partitions, Launch backfill: everything is
   rebuilt under the new manifest version, nothing is stale any more, and the blast radius of
   the bump (0 calls changed) shows with its plot.

A screenshot of every step goes to test-artifacts/ui/ (printed at the end of the session).
GraphQL is used only to wait and to cross-check what the page shows.
"""

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from weka_assets.defs.jobs import DECODE_ASSETS
from weka_assets.instance.staleness import STATUS
from weka_assets.versions import MANIFEST_VERSION
from weka_assets_tests.dagster_dev import DagsterDev, bump_manifest

pytestmark = [pytest.mark.ui, pytest.mark.live, pytest.mark.slow]

try:
    from playwright.sync_api import expect
except ImportError:  # the `page` fixture fails with the reason
    expect = None

CORPORA = ["sample", "sample-kvt"]
CORPUS_ASSETS = ["raw_traces", "trace_scope"]
DECODING_ASSETS = list(DECODE_ASSETS)
MULTI = [f"{c}|deepseek" for c in CORPORA]

NODE = """
query($key: [String!]!, $partitions: [String!]!) { assetNodeOrError(assetKey: {path: $key}) {
  ... on AssetNode { partitionKeys
    partitionStats { numMaterialized numFailed numMaterializing numPartitions }
    staleStatusByPartition(partitions: $partitions)
    assetMaterializations(partitions: $partitions, limit: 20) { partition runId
      metadataEntries { label
        ... on FloatMetadataEntry { floatValue }
        ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text } } } } } }"""

BACKFILL_RUNS = """
query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
  ... on Runs { results { runId status } } } }"""


class Shots:
    """Numbered screenshots of the steps, with the seconds since the test started."""

    def __init__(self, page, folder: Path):
        self.page, self.folder, self.n = page, folder, 0
        self.started = time.monotonic()

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        print(f"{time.monotonic() - self.started:6.1f}s {path}")
        return path


def node(server: DagsterDev, asset: str, partitions: list[str]) -> dict:
    return server.graphql(NODE, {"key": [asset], "partitions": partitions})["assetNodeOrError"]


def wait_for(server: DagsterDev, what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert server.process.poll() is None, f"dagster dev exited:\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s: {what}"
        time.sleep(1)


def backfill_succeeded(server: DagsterDev, backfill_id: str, expected_runs: int) -> bool:
    """True once the backfill itself says it completed, with at least `expected_runs` runs,
    all succeeded; fails at once on a failed or canceled run. The backfill's status, not a
    count of runs: how many runs it launches depends on the daemon's cadence (with a 2 s
    loop it launches a step's runs as soon as their parents are done: more, smaller runs)."""
    runs = server.graphql(BACKFILL_RUNS, {"id": backfill_id})["runsOrError"]["results"]
    bad = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
    assert not bad, f"backfill {backfill_id}: runs {bad} failed"
    backfill = server.graphql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    assert backfill.get("status") not in ("FAILED", "COMPLETED_FAILED", "CANCELED"), backfill
    done = backfill.get("status") in ("COMPLETED", "COMPLETED_SUCCESS")
    return done and len(runs) >= expected_runs and all(r["status"] == "SUCCESS" for r in runs)


def latest_metadata(server: DagsterDev, asset: str, partition: str) -> dict:
    mats = node(server, asset, [partition])["assetMaterializations"]
    latest = next(m for m in mats if m["partition"] == partition)
    out = {}
    for e in latest["metadataEntries"]:
        for field in ("floatValue", "intValue", "text"):
            if field in e:
                out[e["label"]] = e[field]
    return out


def dismiss_first_run_dialog(page) -> None:
    """A fresh instance greets the first visit with "Join the Dagster community"."""
    dialog = page.get_by_text("Join the Dagster community")
    expect(dialog).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Skip").click()
    expect(dialog).to_be_hidden()


def open_lineage(page, url: str, selection: str) -> None:
    """Lineage, type an asset selection in the filter, expand the groups."""
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for()
    page.locator(".CodeMirror").first.click()
    page.keyboard.type(selection)
    page.keyboard.press("Enter")
    settings = page.get_by_role("button", name="settings", exact=True)
    settings.click()
    toggle = page.get_by_role("menuitem", name=re.compile("(Expand|Collapse) all groups"))
    if "Expand" in toggle.inner_text():  # the page remembers an earlier choice
        toggle.click()
    settings.click()  # the menu stays open after a choice
    expect(toggle).to_be_hidden()


def choose(page, dialog, values: list[str]) -> None:
    """Tick partitions in the dialog's (only) "Select a partition" box."""
    box = dialog.get_by_text("Select a partition or create one")
    expect(box).to_have_count(1)  # a second, transient box shows while the dialog loads
    box.click()
    page.get_by_placeholder("Filter partitions").wait_for()
    for value in values:
        page.get_by_text(value, exact=True).filter(visible=True).last.click()
    page.keyboard.press("Escape")
    for value in values:
        expect(dialog.get_by_text(value, exact=True).first).to_be_visible()


def select_all(dialog, dimensions: int, partitions: int, tries: int = 6) -> None:
    """Click every dimension's "All" until the dialog counts `partitions` partitions. "All"
    selects the partitions the dialog has loaded, so a click before they are loaded selects
    none (seen once under load); clicking it again is harmless."""
    buttons = dialog.get_by_role("button", name="All", exact=True)
    expect(buttons).to_have_count(dimensions)
    summary = dialog.get_by_text(f"{partitions} partitions", exact=True)
    for _ in range(tries - 1):
        for i in range(dimensions):
            buttons.nth(i).click()
        try:
            expect(summary).to_be_visible(timeout=5_000)
            return
        except AssertionError:
            continue
    for i in range(dimensions):
        buttons.nth(i).click()
    expect(summary).to_be_visible()


def launch_backfill(page, dialog) -> str:
    """Click Launch backfill; the backfill id from the toast."""
    dialog.get_by_role("button", name="Launch backfill").click()
    toast = page.get_by_text(re.compile(r"^Created backfill \w+$"))
    expect(toast).to_be_visible()
    return toast.inner_text().split()[-1]


def open_partition(page, url: str, asset: str, corpus: str) -> None:
    """The asset's Partitions view, partition `<corpus>|deepseek` clicked in both columns."""
    page.goto(f"{url}/assets/{asset}?view=partitions")
    page.get_by_text(corpus, exact=True).first.click()
    page.get_by_text("deepseek", exact=True).first.click()
    expect(page.get_by_text(f"{corpus}|deepseek", exact=True).first).to_be_visible()


def metadata_value(page, label: str) -> str:
    """The value cell of one row of the partition's metadata table."""
    cell = page.get_by_role("cell", name=label, exact=True).first
    expect(cell).to_be_visible()
    return cell.locator("xpath=..").locator("td").nth(1).inner_text().strip()


def highlight(page, label: str) -> None:
    """Outline one metadata row, so the screenshot shows what the test read."""
    cell = page.get_by_role("cell", name=label, exact=True).first
    cell.locator("xpath=..").evaluate("row => { row.style.outline = '3px solid #e5484d'; }")


def show_plot(page, label: str, shot: Shots, name: str) -> None:
    """Open a plot entry ([Show Markdown]): the PNG must render; screenshot it, close."""
    row = page.get_by_role("cell", name=label, exact=True).first.locator("xpath=..")
    row.get_by_text("[Show Markdown]").click()
    dialog = page.get_by_role("dialog").filter(has_text=label)
    image = dialog.locator("img[src^='data:image/png']")
    expect(image).to_be_visible()
    width = image.evaluate("img => img.complete ? img.naturalWidth : 0")
    assert width > 300, f"{label}: the PNG did not render ({width} px)"
    shot(name)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_operate_the_chain_from_the_ui(ui_server, page, artifacts):
    server, project, store = ui_server
    url = server.url
    shot = Shots(page, artifacts)
    try:
        _walk_through(server, project, store, page, url, shot)
    except BaseException:
        shot("failure")
        print(f"dagster dev log ({server.log_path}):\n{server.log_tail(6000)}")
        raise


def _walk_through(server, project, store, page, url, shot):
    # 1. a fresh instance; the discovery sensor registers the registry's corpora
    page.goto(url)
    dismiss_first_run_dialog(page)
    wait_for(
        server,
        "the discovery sensor to add the corpus partitions",
        lambda: set(node(server, "raw_traces", [])["partitionKeys"]) >= set(CORPORA),
        90,
    )

    # 2. the whole graph (without `live`), both corpora, one backfill
    open_lineage(page, url, "not group:live and not group:exports")
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog").filter(
        has_text=f"Launch runs to materialize {2 + len(DECODING_ASSETS)} assets"
    )
    expect(dialog.get_by_text("raw_traces", exact=True)).to_be_visible()
    choose(page, dialog, CORPORA)
    shot("launch-the-whole-graph")
    first = launch_backfill(page, dialog)
    # one run per corpus for raw_traces + trace_scope, one per corpus x tokenizer after them
    wait_for(
        server,
        f"backfill {first} to materialize the graph",
        lambda: backfill_succeeded(server, first, 4),
        240,
    )
    for asset, parts in [(a, CORPORA) for a in CORPUS_ASSETS] + [
        (a, MULTI) for a in DECODING_ASSETS
    ]:
        stats = node(server, asset, parts)["partitionStats"]
        assert stats["numMaterialized"] == len(parts) and not stats["numFailed"], (asset, stats)
    open_lineage(page, url, "not group:live and not group:exports")
    shot("materialized-graph")
    # the gate's checks, on its node alone (the whole graph is drawn too small for the label)
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for()
    page.locator(".CodeMirror").first.click()
    page.keyboard.type("key:trace_scope")
    page.keyboard.press("Enter")
    expect(page.get_by_text(re.compile(r"^10 / 10 Passed$"))).to_be_visible()
    shot("scope-checks-passed")

    # 3. the hit rate in replay_benchmark's metadata is the stored one
    open_partition(page, url, "replay_benchmark", "sample")
    shown = metadata_value(page, "token_replay_hit_rate")
    decode_key = metadata_value(page, "decode_key")
    assert metadata_value(page, "manifest_version") == str(MANIFEST_VERSION)
    stored = json.loads((store / "replay" / decode_key / "result.json").read_text())
    assert float(shown) == stored["token_replay_hit_rate"] and 0.5 < float(shown) < 1
    assert (
        float(shown)
        == latest_metadata(server, "replay_benchmark", MULTI[0])["token_replay_hit_rate"]
    )
    highlight(page, "token_replay_hit_rate")
    shot("replay-benchmark-hit-rate")
    show_plot(page, "capacity_plot", shot, "capacity-plot")

    # 4. a manifest bump in the copy, definitions reloaded: stale partitions in the UI
    new_version = bump_manifest(project)
    assert new_version == MANIFEST_VERSION + 1
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Reload definitions").click()
    wait_for(
        server,
        "the reloaded code to make the decoding partitions stale",
        lambda: all(
            node(server, a, MULTI)["staleStatusByPartition"] == ["STALE", "STALE"]
            for a in DECODING_ASSETS
        ),
        90,
    )
    assert node(server, "trace_scope", CORPORA)["staleStatusByPartition"] == ["FRESH", "FRESH"]
    for asset, corpus in [("decoded_dataset", "sample"), ("replay_benchmark", "sample-kvt")]:
        open_partition(page, url, asset, corpus)
        unsynced = page.get_by_text(re.compile(r"^Unsynced"))
        expect(unsynced.first).to_be_visible()
        unsynced.first.hover()
        expect(page.get_by_text("has a new code version").first).to_be_visible()
        shot(f"stale-{asset}")

    # 5. the stale partitions rebuilt by one backfill launched from the UI
    open_lineage(page, url, "group:decoded or group:replay")
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog").filter(
        has_text=f"Launch runs to materialize {len(DECODING_ASSETS)} assets"
    )
    select_all(dialog, dimensions=2, partitions=len(MULTI))  # corpus, then tokenizer
    expect(dialog.get_by_role("button", name="Launch backfill")).to_be_enabled()
    shot("launch-the-stale-backfill")
    second = launch_backfill(page, dialog)
    assert second != first
    wait_for(
        server,
        f"backfill {second} to rebuild the stale partitions",
        lambda: (
            backfill_succeeded(server, second, 2)
            and all(
                node(server, a, MULTI)["staleStatusByPartition"] == ["FRESH", "FRESH"]
                for a in DECODING_ASSETS
            )
        ),
        180,
    )
    for asset in DECODING_ASSETS:
        for partition in MULTI:
            md = latest_metadata(server, asset, partition)
            assert md["manifest_version"] == new_version, (asset, partition, md)
    open_partition(page, url, "decoded_dataset", "sample")
    assert metadata_value(page, "manifest_version") == str(new_version)
    expect(page.get_by_text(re.compile(r"^Unsynced"))).to_have_count(0)
    highlight(page, "manifest_version")
    shot("rebuilt-under-the-new-manifest")
    # the blast radius of the bump: compared with the v1 dataset, nothing changed
    open_partition(page, url, "manifest_blast_radius", "sample")
    expect(page.get_by_text(re.compile(rf"\(manifest v{MANIFEST_VERSION}\)")).first).to_be_visible()
    expect(page.get_by_text(re.compile(r"^0 of \d+ calls change tokens")).first).to_be_visible()
    highlight(page, "summary")
    shot("blast-radius-of-the-bump")
    show_plot(page, "plot", shot, "blast-radius-plot")
    page.goto(f"{url}/runs/b/{second}")
    expect(page.get_by_text(second).first).to_be_visible()
    shot("backfill")
