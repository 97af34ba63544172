"""The MLflow UI in a real headless browser (marker ``browser``; `make test-browser`).

After a tiny search, ``evomerge ui``'s server is opened in Debian's Chromium driven by
Playwright: the runs table lists every trial under the search's parent run with its
objectives, and the parent run holds the front plot. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    existing = os.environ.get("EVOMERGE_UI_RUN_DIR")  # check a real run instead, e.g. the quickstart's
    if existing:
        return Path(existing).resolve()
    from evomerge.run import run_search
    from evomerge.testing import mini_zoo_config
    from evomerge.zoo.build import build_zoo

    tmp = tmp_path_factory.mktemp("ui")
    zoo = build_zoo(tmp / "zoo", mini_zoo_config(), log=lambda s: None)
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": ["task_arithmetic", "ties"],
             "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    (tmp / "run.yaml").write_text(yaml.safe_dump({
        "space": "space.yaml", "objectives": [{"task": "addition"}, {"task": "reversal"}],
        "optimizer": {"name": "random"}, "budget": {"trials": 5}, "fidelity": 4,
    }))
    run_dir = tmp / "tiny-search"
    run_search(tmp / "run.yaml", run_dir, log=lambda s: None)
    return run_dir


@pytest.fixture(scope="module")
def ui(tracked_run):
    from evomerge.tracking.ui import start_ui, store_of, wait_until_up

    proc, url = start_ui(store_of(tracked_run))
    try:
        wait_until_up(url, proc)
    except Exception:
        proc.terminate()
        raise
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test-browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
        ])
        yield b
        b.close()


def test_runs_table_lists_every_trial_with_objectives_and_the_parent_holds_the_front(tracked_run, ui, browser):
    from mlflow import MlflowClient

    from evomerge.tracking.ui import store_of

    client = MlflowClient(store_of(tracked_run))
    exp = client.get_experiment_by_name(tracked_run.name)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) >= 5 and all(name.startswith("trial-") for name in children)
    shown = dict(sorted(children.items())[-8:])  # the newest trials: on the table's first page
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1800, "height": 1000})
    page.goto(f"{ui}/#/experiments/{exp.experiment_id}/runs")
    link = page.locator(f"a[href*='{parent.info.run_id}']").first
    link.wait_for(timeout=60_000)
    # Trials are nested under the search's parent run: expand it.
    page.locator("div[role='row']", has=link).locator("button[data-component-id*='runnamecellrenderer']").click()
    for name in shown:
        page.locator("a", has_text=name).first.wait_for(timeout=30_000)
    # Show the objectives as columns.
    page.get_by_role("button", name="Columns").click()
    for column in ("addition/exact_match", "reversal/exact_match", "Dataset", "Source", "Models"):
        page.get_by_text(column, exact=True).last.click()  # objectives on, empty attributes off
    page.keyboard.press("Escape")
    close_assistant(page)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_runs_table.png"))
    header = page.inner_text("div.ag-header")
    assert "addition/exact_match" in header and "reversal/exact_match" in header
    body = page.inner_text("body")
    total = len(children) + 1  # every trial and the parent; the UI loads 100 at a time
    assert f"{total} matching runs" in body or (total > 100 and "Load more" in body)
    for name, child in shown.items():
        # ag-grid renders pinned and scrolling columns as separate rows with one row-id.
        row_id = page.locator("div[role='row']", has=page.locator("a", has_text=name)).first.get_attribute("row-id")
        for metric in ("addition/exact_match", "reversal/exact_match"):
            cell = page.locator(f"div[role='row'][row-id='{row_id}'] div[role='gridcell'][col-id*='{metric}']").first
            shown = cell.inner_text().strip()
            assert shown not in ("", "-"), f"{name}: no {metric} in the table"
            assert abs(float(shown) - child.data.metrics[metric]) < 1e-3

    # A front member's run page shows its pareto tag.
    member = next(c for c in children.values() if c.data.tags.get("pareto") == "true")
    page.goto(f"{ui}/#/experiments/{exp.experiment_id}/runs/{member.info.run_id}")
    page.get_by_text("pareto", exact=True).first.wait_for(timeout=60_000)
    close_assistant(page)
    page.screenshot(path=str(ARTIFACTS / "mlflow_front_member.png"))
    tags = page.locator("div", has=page.get_by_text("pareto", exact=True)).last.inner_text()
    assert "true" in tags

    page.goto(f"{ui}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/front/front.png")
    img = page.locator("img[src^='blob:']").first  # the artifact preview
    img.wait_for(timeout=60_000)
    assert img.evaluate("i => i.naturalWidth") > 300  # the rendered plot, not an icon
    close_assistant(page)
    page.screenshot(path=str(ARTIFACTS / "mlflow_parent_front_plot.png"))
    page.close()


def close_assistant(page) -> None:
    """MLflow 3 opens an assistant side panel; close it so screenshots show the table."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
