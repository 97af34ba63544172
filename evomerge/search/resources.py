"""Whether this machine and its storage can take a run: run directory, MLflow store, executor.

What ``evomerge search --dry-run`` checks besides the config, sources and tasks,
without writing anything: the run directory could be created (its nearest
existing folder is a writable folder; no run is there already), the MLflow store
can be written or reached, the executor's resources exist (CUDA when the device
is cuda, a Ray cluster at the address given, workers against cores). Each
problem is an ``EvomergeError`` naming the setting and the fix; what is merely
unwise (more worker threads than cores) comes back as a note.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from evomerge.config.tracking import tracking_uri
from evomerge.errors import EvomergeError
from evomerge.search.ledgers import find_ledger

PROBE_SECONDS = 3.0


def _nearest_folder(path: Path, what: str, fix: str) -> Path:
    """The nearest existing ancestor of ``path`` (itself included), which must be a writable folder."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise EvomergeError(f"{what} {path} cannot be created: {p} is a file, not a folder; {fix}.")
    if not os.access(p, os.W_OK | os.X_OK):
        raise EvomergeError(f"{what} {path} cannot be created: {p} is not writable by this user; {fix}.")
    if os.statvfs(p).f_flag & os.ST_RDONLY:  # os.access says yes to root even there
        raise EvomergeError(f"{what} {path} cannot be created: {p} is on a read-only file system; {fix}.")
    return p


def check_run_dir(run_dir: Path, ledger_kind: str) -> str:
    """The run directory can be made here and holds no run yet; returns a line for the plan."""
    if find_ledger(run_dir) is not None:
        raise EvomergeError(
            f"{run_dir} already holds a run; continue it with `evomerge resume {run_dir}` or "
            f"choose another --out."
        )
    fix = "choose another --out"
    _nearest_folder(run_dir, "The run directory", fix)
    where = "exists, writable" if Path(run_dir).is_dir() else "will be created (its folder is writable)"
    store = {"sqlite": "ledger.db", "journal": "ledger.jsonl"}.get(ledger_kind, f"a {ledger_kind} ledger")
    return f"{run_dir}: {where}; {store}"


def check_tracking(settings, run_dir: Path | None) -> str:
    """Where MLflow will write, checked without creating anything; returns a line for the plan."""
    if not settings.enabled:
        return "off (tracking.enabled: false)"
    if run_dir is None and not (settings.uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return "in the run directory (give --out to check it)"
    uri = tracking_uri(settings, run_dir or Path("."))
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    fix = "set tracking.uri to a store you can write (or tracking.enabled: false)"
    if scheme == "sqlite":
        path = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if path is not None:
            _nearest_folder(path.parent, "The MLflow store's folder", fix)
        return f"{uri} (writable)"
    if scheme in ("", "file"):
        _nearest_folder(Path(parsed.path or uri), "The MLflow store", fix)
        return f"{uri} (writable)"
    if parsed.hostname:
        port = parsed.port or {"https": 443, "http": 80, "postgresql": 5432, "mysql": 3306}.get(scheme)
        if port is None:
            return f"{uri} (not checked: no port)"
        _reach(parsed.hostname, port, f"The MLflow tracking server {uri}", fix)
        return f"{uri} (reachable)"
    return f"{uri} (not checked)"


def _reach(host: str, port: int, what: str, fix: str) -> None:
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
    except OSError as e:
        raise EvomergeError(f"{what} cannot be reached at {host}:{port} ({e}); {fix}.") from None


@dataclass
class Slots:
    """How many evaluations will run at once, and what the estimate assumes about it."""

    workers: int | None  # None: decided by the cluster at start
    parallel: float  # evaluations at once that the wall-time estimate assumes
    notes: list[str] = field(default_factory=list)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_executor(config, options) -> Slots:
    """``options``: the executor kind's validated options (``executor_class``)."""
    ex, kind, device = config.executor, config.executor.resolved_kind, config.device
    if kind == "ray":
        return _check_ray(ex, options, device)
    if device.startswith("cuda"):
        check_cuda(device)
    n = cores()
    workers = n if ex.workers == "auto" else int(ex.workers)
    notes = []
    if device.startswith("cuda"):
        return Slots(workers, float(workers), [f"{workers} worker(s) on {device}; the estimate assumes "
                                               "the GPU is not their bottleneck"])
    threads = ex.torch_threads or n  # torch's default: a thread per core
    parallel = max(1.0, min(workers, n / threads))
    if workers * threads > n:
        notes.append(
            f"{workers} worker(s) x {threads} torch thread(s) on {n} core(s): they share cores; "
            f"set executor.torch_threads: {max(1, n // workers)} to give each its own"
        )
    return Slots(workers, parallel, notes)


def check_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise EvomergeError(
            f"device: {device} but CUDA is not available on this machine; set device: cpu in the run "
            f"config, or run where a GPU is."
        )
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise EvomergeError(
            f"device: {device} but this machine has {torch.cuda.device_count()} GPU(s); use "
            f"device: cuda:0 .. cuda:{torch.cuda.device_count() - 1}."
        )


def _check_ray(ex, options, device: str) -> Slots:
    notes = []
    resources = getattr(options, "resources", None)
    if device.startswith("cuda") and resources is not None and resources.num_gpus <= 0:
        raise EvomergeError(
            "executor (ray): device is cuda but resources.num_gpus is 0; give each actor a GPU "
            "share (e.g. resources: {num_gpus: 1}, or 0.5 to pack two actors per GPU)."
        )
    address = getattr(options, "address", None)
    fix = "start the cluster (`ray start --head`), fix executor.address, or set it to null to start Ray here"
    if address is None:
        notes.append("Ray: a runtime started in the search's process")
    else:
        host, port = _ray_endpoint(address, fix)
        _reach(host, port, f"The Ray cluster (executor.address: {address})", fix)
        notes.append(f"Ray: cluster at {host}:{port} reachable")
    if ex.workers == "auto":
        notes.append("workers: auto under Ray is the number of actors the cluster fits, known only at "
                     "start: the estimate is for one slot (divide by the actors)")
        return Slots(None, 1.0, notes)
    return Slots(int(ex.workers), float(ex.workers), notes)


def _ray_endpoint(address: str, fix: str) -> tuple[str, int]:
    """``host:port`` of a Ray address: ``auto`` (RAY_ADDRESS, else this machine's running
    cluster), ``ray://HOST:PORT`` (a client server) or ``HOST:PORT`` (the cluster's GCS)."""
    if address == "auto":
        current = Path("/tmp/ray/ray_current_cluster")  # what `ray start` leaves for `auto`
        address = os.environ.get("RAY_ADDRESS") or (current.read_text().strip() if current.is_file() else "")
        if not address:
            raise EvomergeError(
                f"executor.address: auto joins a Ray cluster running on this machine, but none is "
                f"(no RAY_ADDRESS, no {current}); {fix}."
            )
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise EvomergeError(f"executor.address: {address!r} is not HOST:PORT or ray://HOST:PORT; {fix}.")
    return parsed.hostname, port
