"""The MLflow UI in a real headless browser (marker ``browser``; `make test-browser`).

After a tiny search, ``evomerge ui`` is started as a person starts it and the links it prints
are opened in Debian's Chromium driven by Playwright. The first lands on the runs table (not
MLflow's GenAI overview) listing the front's members, one row each, best fitness first, with
the objectives as columns; the second lists every trial nested under the search's parent run;
the front plot's link shows the plot. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from browser_helpers import ARTIFACTS, chromium

pytestmark = pytest.mark.browser


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
        "space": "space.yaml", "objectives": [{"task": "digit_confidence"}, {"task": "zoo_text"}],
        "optimizer": {"name": "random"}, "budget": {"trials": 8}, "fidelity": 4,
    }))
    run_dir = tmp / "tiny-search"
    run_search(tmp / "run.yaml", run_dir, log=lambda s: None)
    return run_dir


@pytest.fixture(scope="module")
def ui(tracked_run, tmp_path_factory):
    """``evomerge ui`` itself, as a person starts it: yields what it printed (the runs-table
    link, the front plot line); SIGTERM stops it at the end."""
    out = tmp_path_factory.mktemp("ui-out") / "out.txt"
    entry = Path(sys.executable).with_name("evomerge")
    command = [str(entry)] if entry.exists() else [sys.executable, "-m", "evomerge.cli"]
    with out.open("w") as o, out.with_suffix(".err").open("w") as e:
        proc = subprocess.Popen([*command, "ui", str(tracked_run)], stdout=o, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # MLflow's server starts slowly on a busy machine
        while "front plot:" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.with_suffix(".err").read_text()[-3000:]
            time.sleep(0.5)
        yield out.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 128 + signal.SIGTERM


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_the_printed_link_opens_the_runs_table_with_objectives_and_trials_nested(tracked_run, ui, browser):
    from mlflow import MlflowClient

    from evomerge.tracking.ui import store_of

    client = MlflowClient(store_of(tracked_run))
    exp = client.get_experiment_by_name(tracked_run.name)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) >= 5 and all(name.startswith("trial-") for name in children)
    shown = dict(sorted(children.items())[-8:])  # the newest trials: on the table's first page
    objectives = [k.rsplit(" (", 1)[0] for k in parent.data.tags["evomerge.objectives"].split(", ")]
    front_link = re.search(r"best fitness first: (http://\S+/#/experiments/\S+/runs\?\S+)", ui).group(1)
    link = re.search(r"every trial, nested under run '[^']+': (http://\S+/#/experiments/\S+/runs\?\S+)", ui).group(1)
    plot_line = next(line for line in ui.splitlines() if line.startswith("front plot:"))
    assert f"run '{parent.info.run_name}'" in plot_line and "front/front.png" in plot_line
    plot_url = re.search(r"(http://\S+)$", plot_line).group(1)
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1800, "height": 1000})
    check_the_front_link(page, front_link, exp.experiment_id, parent, children, objectives)
    page.goto(link)
    parent_link = page.locator(f"a[href*='{parent.info.run_id}']").first
    parent_link.wait_for(timeout=120_000)
    # The objectives are columns without touching the column picker (the saved view applies
    # once the experiment's tags have loaded).
    for column in (*objectives, "fitness", "hypervolume", "pareto"):
        page.locator("div.ag-header", has_text=column).first.wait_for(timeout=60_000)
    total = len(children) + 1  # every trial and the parent; the UI loads 100 at a time
    page.get_by_text(f"{total} matching runs" if total <= 100 else "Load more").first.wait_for(timeout=60_000)
    # The runs table, not the GenAI overview a bare experiment link lands on in MLflow 3.17.
    assert f"/experiments/{exp.experiment_id}/runs" in page.url and "/overview" not in page.url
    body = page.inner_text("body")
    assert "Token Usage" not in body and "Observability" not in body, body[:2000]
    # Nested: the trials are rows under the parent, shown when it is expanded.
    assert page.locator("a", has_text="trial-").count() == 0
    page.locator("div[role='row']", has=parent_link).locator(
        "button[data-component-id*='runnamecellrenderer']").click()
    for name in shown:
        page.locator("a", has_text=name).first.wait_for(timeout=30_000)
    close_assistant(page)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_runs_table.png"))
    for name, child in shown.items():
        # ag-grid renders pinned and scrolling columns as separate rows with one row-id.
        row_id = page.locator("div[role='row']", has=page.locator("a", has_text=name)).first.get_attribute("row-id")
        for metric in objectives:
            cell = page.locator(f"div[role='row'][row-id='{row_id}'] div[role='gridcell'][col-id*='{metric}']").first
            value = cell.inner_text().strip()
            assert value not in ("", "-"), f"{name}: no {metric} in the table"
            expected = child.data.metrics[metric]
            assert abs(float(value) - expected) <= 1e-3 * max(1.0, abs(expected)), (name, metric, value)

    # A front member's run page shows its pareto tag.
    member = next(c for c in children.values() if c.data.tags.get("pareto") == "true")
    base = link.split("/#/")[0]
    page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{member.info.run_id}")
    page.get_by_text("pareto", exact=True).first.wait_for(timeout=60_000)
    close_assistant(page)
    page.screenshot(path=str(ARTIFACTS / "mlflow_front_member.png"))
    tags = page.locator("div", has=page.get_by_text("pareto", exact=True)).last.inner_text()
    assert "true" in tags

    page.goto(plot_url)  # the front plot's link `evomerge ui` printed
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


def run_link(page, name: str):
    return page.locator("a").filter(has_text=re.compile(f"^{re.escape(name)}$"))


def check_the_front_link(page, link, experiment_id, parent, children, objectives) -> None:
    """The first link: the front's members as rows of their own (no parent row to expand),
    the objectives as columns, ordered by fitness, best first."""
    members = {name: c for name, c in children.items() if c.data.tags.get("pareto") == "true"}
    assert 0 < len(members) < len(children)  # else the view would not show it leaves trials out
    page.goto(link)
    for column in (*objectives, "fitness"):
        page.locator("div.ag-header", has_text=column).first.wait_for(timeout=120_000)
    page.get_by_text(f"{len(members)} matching runs").first.wait_for(timeout=60_000)
    assert f"/experiments/{experiment_id}/runs" in page.url and "/overview" not in page.url
    for name in members:
        run_link(page, name).first.wait_for(timeout=30_000)
    close_assistant(page)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_front_members.png"))
    grid = page.locator("div[role='row']")
    assert grid.filter(has=page.locator(f"a[href*='/runs/{parent.info.run_id}']")).count() == 0  # no parent row
    assert all(run_link(page, name).count() == 0 for name in children if name not in members)
    rows = {}
    for name in members:
        row = page.locator("div[role='row']", has=run_link(page, name)).first
        rows[int(row.get_attribute("row-index"))] = name
    shown = [rows[i] for i in sorted(rows)]
    fitness = [members[name].data.metrics["fitness"] for name in shown]
    assert fitness == sorted(fitness, reverse=True), shown
