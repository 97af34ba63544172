"""``evomerge ui``: the MLflow UI for a run's store, on 127.0.0.1 and a free port by default."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from evomerge.errors import EvomergeError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def store_of(run_dir: Path) -> str:
    """The tracking URI a run logged to (its run.yaml, else its own mlflow.db)."""
    from evomerge.config.run import RunConfig
    from evomerge.config.tracking import tracking_uri

    config_path = Path(run_dir) / "run.yaml"
    if not config_path.is_file():
        raise EvomergeError(f"{run_dir} is not a search run (no run.yaml); give the run directory.")
    uri = tracking_uri(RunConfig.load(config_path).tracking, Path(run_dir))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise EvomergeError(f"{run_dir} has no MLflow store yet ({uri}); run or resume the search with tracking on.")
    return uri


def ui_command(uri: str, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1"]


def start_ui(uri: str, host: str = "127.0.0.1", port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port(host)
    proc = subprocess.Popen(ui_command(uri, host, port))
    return proc, f"http://{host}:{port}"


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once ``url``/health answers; raise if the server exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise EvomergeError(f"the MLflow server for {url} exited with code {proc.returncode}.") from None
            if time.monotonic() > deadline:
                raise EvomergeError(f"the MLflow server for {url} did not answer within {timeout:.0f} s.") from None
            time.sleep(0.5)
