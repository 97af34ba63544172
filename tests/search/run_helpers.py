"""Run configs over the tests' mini zoo, and reading a run's ledger back (shared by search tests)."""

from __future__ import annotations

from pathlib import Path

import yaml

from evomerge.search.ledgers import open_ledger


def write_run(tmp_path: Path, zoo: Path, name: str = "run", *, methods=("task_arithmetic", "ties"), **run) -> Path:
    """A parameter space over the mini zoo's two experts and a run config ``name``.yaml using it;
    ``run`` overrides the config's fields (objectives: zoo_text perplexity, fidelity 4, tracking off)."""
    space = {"base_model": str(zoo / "base"), "models": [str(zoo / "add"), str(zoo / "rev")],
             "methods": list(methods),
             "parameters": {"weight": {"low": 0.0, "high": 1.0}, "density": {"low": 0.3, "high": 1.0}}}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config = {"space": str(tmp_path / "space.yaml"), "objectives": [{"task": "zoo_text"}], "fidelity": 4,
              "optimizer": {"name": "random"}, "budget": {"trials": 4}, "tracking": {"enabled": False},
              **run}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def evaluations(run_dir: Path, state: str | None = "complete", *, missing_ok: bool = False) -> list:
    """The run's evaluations in ``state`` (``None``: all), or [] if ``missing_ok`` and no ledger yet."""
    try:
        led = open_ledger(run_dir, readonly=True)
    except Exception:
        if missing_ok:
            return []
        raise
    try:
        return led.evaluations(state)
    finally:
        led.close()


def completions(run_dir: Path) -> list:
    led = open_ledger(run_dir, readonly=True)
    try:
        return led.completions()
    finally:
        led.close()


def as_from_a_terminal() -> None:
    """``preexec_fn`` of a search started as from a terminal: SIGINT and SIGHUP at their defaults.
    A shell starts background jobs with SIGINT ignored and ``nohup`` ignores SIGHUP; a child
    inherits both, and Python and evomerge then keep them ignored, which is right for the user
    who asked for it and wrong for a test that sends them."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
