from __future__ import annotations

from typer.testing import CliRunner

from evomerge.cli import app

runner = CliRunner()


def test_zoo_data_check_passes_on_the_committed_data():
    res = runner.invoke(app, ["zoo", "data", "--check"])
    assert res.exit_code == 0 and "0 file(s) differ" in res.output


def test_zoo_report_without_a_zoo_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOMERGE_ZOO", str(tmp_path / "nozoo"))
    res = runner.invoke(app, ["zoo", "report"])
    assert res.exit_code == 2 and "evomerge zoo build" in res.output


def test_zoo_build_names_the_families_when_given_an_unknown_one():
    res = runner.invoke(app, ["zoo", "build", "--family", "deep"])
    assert res.exit_code == 2 and "unknown family 'deep'" in res.output and "blocks" in res.output
