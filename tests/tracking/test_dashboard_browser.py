"""optuna-dashboard in a real headless browser (marker ``browser``; `make test-browser`).

``evomerge dashboard`` is started on a run as a person starts it, and the link it prints is
opened in Debian's Chromium driven by Playwright: the study's page shows the run's study, its
Pareto front plot and, as best trials, the trials `evomerge front` lists; the trials list shows
every trial. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, chromium
from optuna_helpers import synthetic_run

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """A run and ``evomerge dashboard`` on it: yields (run directory, what it printed)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    run_dir = synthetic_run(tmp, "tiny-search")
    out = tmp / "out.txt"
    entry = Path(sys.executable).with_name("evomerge")
    command = [str(entry)] if entry.exists() else [sys.executable, "-m", "evomerge.cli"]
    with out.open("w") as o, out.with_suffix(".err").open("w") as e:
        proc = subprocess.Popen([*command, "dashboard", str(run_dir)], stdout=o, stderr=e, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "optuna-dashboard for" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.with_suffix(".err").read_text()[-3000:]
            time.sleep(0.2)
        yield run_dir, out.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 128 + signal.SIGTERM


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def test_the_printed_link_opens_the_study_with_its_front_and_trials(dashboard, browser):
    import optuna

    from evomerge.search.front import run_front
    from evomerge.tracking.optuna_mirror import TRIAL_KEY, open_storage

    run_dir, printed = dashboard
    link = re.search(r"(http://\S+/dashboard/studies/\d+)", printed).group(1)
    study = optuna.load_study(study_name="tiny-search", storage=open_storage(str(run_dir / "optuna.journal")))
    _, front, _, _ = run_front(run_dir)
    number = {t.user_attrs[TRIAL_KEY]: t.number for t in study.trials}
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(link)
    page.get_by_text("tiny-search (id=", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Pareto Front", exact=True).first.wait_for(timeout=30_000)
    page.get_by_text("Best Trials", exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "optuna_dashboard_study.png"))
    body = page.inner_text("body")
    best = {int(n) for n in re.findall(r"^Trial (\d+)$", body.split("Best Trials", 1)[1], re.M)}
    assert best == {number[e.trial] for e in front}

    page.goto(f"{link}/trials")
    page.get_by_text(f"{len(study.trials)} Trials", exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert {"Complete", "Pruned", "Fail"} <= set(body.split())
    page.screenshot(path=str(ARTIFACTS / "optuna_dashboard_trials.png"))
