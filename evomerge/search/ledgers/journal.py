"""The ledger as an append-only journal file (``ledger.jsonl``), for run directories on shared storage.

SQLite's write-ahead log needs shared memory on one host, so a run directory on
a network file system (a cluster's home or scratch) is safer with a plain
journal: one JSON line per event (an evaluation started, finished, or was
abandoned), flushed and fsynced before the controller goes on. Opening replays
the lines; a line torn by a crash mid-write is dropped. Same interface and
guarantees as the SQLite ledger. Journals written before evaluations and trials
had their own names (``number``, ``candidate``) read as they are; new lines use
``id`` and ``trial``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

from evomerge.errors import EvomergeError
from evomerge.search.ledgers import EvaluationRecord, Session

FILENAME = "ledger.jsonl"


class JournalLedger:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._rows: dict[int, EvaluationRecord] = {}
        self._sessions: list[Session] = []
        self._seq = 0
        good = 0
        if self.path.exists():
            data = self.path.read_bytes()
            lines = data.splitlines(keepends=True)
            for i, line in enumerate(lines):
                if not line.endswith(b"\n"):
                    if line[:5] != b'{"op"'[: len(line[:5])]:  # not a line of ours cut short
                        raise EvomergeError(
                            f"{self.path}: line {i + 1} is not a journal line (it does not start "
                            f'with {{"op"); the file is not an evomerge ledger or is damaged, and '
                            f"nothing was changed. Put back the run's own ledger.jsonl, or start a "
                            f"new run with `evomerge search` and another --out."
                        )
                    break  # the last line, torn by a crash mid-write (or being written now)
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError) as e:
                    raise EvomergeError(
                        f"{self.path}: line {i + 1} of the journal is damaged ({e}); the lines before it "
                        f"are intact: keep a copy and cut the file there to continue."
                    ) from None
                good += len(line)
            # Only the search's own writer repairs a torn tail; a reader never changes the file.
            if good < len(data) and not readonly:
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self._file = None
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (Path(run_dir) / FILENAME).is_file()

    @classmethod
    def open(cls, run_dir: Path, options: dict, *, readonly: bool = False, take_over: bool = False) -> JournalLedger:
        if options:
            raise EvomergeError(f"ledger: the journal ledger takes no options (got {sorted(options)}).")
        return cls(Path(run_dir) / FILENAME, readonly=readonly)

    def _apply(self, ev: dict) -> None:
        op = ev["op"]
        if "number" in ev:  # a line from before the rename
            ev = dict(ev)
            ev["id"] = ev.pop("number")
            if "candidate" in ev:
                ev["trial"] = ev.pop("candidate")
        if op == "start":
            self._rows[ev["id"]] = EvaluationRecord(
                id=ev["id"], trial=ev["trial"], rung=ev["rung"], recipe_hash=ev["recipe_hash"],
                genome=ev["genome"], recipe=ev["recipe"], state="running", fidelity=ev["fidelity"], scores=None,
                error=None, started=ev["started"], finished=None, seconds=None, seq=None,
            )
        elif op == "finish":
            self._rows[ev["id"]] = replace(
                self._rows[ev["id"]], state="complete" if ev["error"] is None else "failed",
                scores=ev["scores"], error=ev["error"], finished=ev["finished"], seconds=ev["seconds"], seq=ev["seq"],
            )
            self._seq = max(self._seq, ev["seq"] + 1)
        elif op == "session":
            self._sessions.append(Session(ev["start"], ev["budget"], None))
        elif op == "close_asks":
            last = self._sessions[-1]
            self._sessions[-1] = Session(last.start, last.budget, ev["asks"])
        elif op == "abandon":
            for n in ev["numbers"]:
                self._rows[n] = replace(self._rows[n], state="abandoned")
        else:
            raise KeyError(op)

    def _write(self, ev: dict) -> None:
        if self._file is None:
            raise EvomergeError(f"{self.path} was opened read-only.")
        self._file.write(json.dumps(ev, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._apply(ev)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def begin_session(self, budget: int) -> None:
        start = sum(1 for r in self._rows.values() if r.seq is not None)
        self._write({"op": "session", "start": start, "budget": budget})

    def close_asks(self, asks: int) -> None:
        self._write({"op": "close_asks", "asks": asks})

    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def start(
        self, trial: int, rung: int, recipe_hash: str, genome: list[float], recipe: str, fidelity: int | None
    ) -> int:
        id = max(self._rows, default=0) + 1
        self._write({"op": "start", "id": id, "trial": trial, "rung": rung,
                     "recipe_hash": recipe_hash, "genome": genome, "recipe": recipe, "fidelity": fidelity,
                     "started": time.time()})
        return id

    def finish(
        self, id: int, scores: dict[str, float] | None, error: str | None = None, seconds: float | None = None
    ) -> None:
        self._write({"op": "finish", "id": id, "scores": scores, "error": error,
                     "finished": time.time(), "seconds": seconds, "seq": self._seq})

    def get(self, id: int) -> EvaluationRecord:
        return self._rows[id]

    def completions(self) -> list[EvaluationRecord]:
        return sorted((r for r in self._rows.values() if r.seq is not None), key=lambda r: r.seq)

    def abandon_running(self) -> int:
        running = [n for n, r in self._rows.items() if r.state == "running"]
        if running:
            self._write({"op": "abandon", "numbers": running})
        return len(running)

    def evaluations(self, state: str | None = None) -> list[EvaluationRecord]:
        return [r for _, r in sorted(self._rows.items()) if state is None or r.state == state]
