"""Warming the output file's page cache while the command line is still starting.

Writing into pages a file does not have yet is the slow part of writing a model on
some machines (VMs whose memory is backed lazily: first-touched pages cost several
times the copy). Overwriting pages already in the cache is a plain memcpy. The CLI
spends its first seconds importing torch on one core, so before that it starts this
thread on the other: it guesses the output size from the input headers and writes
that many zeros into the output shard-to-be. The writer later adopts the file (and
waits for the thread before its first byte), so the zeros are always overwritten or
truncated away. A wrong guess costs only idle-core time. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import threading
import uuid
from pathlib import Path
from typing import Any

PREFILL_MAX = 1 << 30  # bounded: dirty zeros older than the writeback age would reach the disk
_PIECE = 1 << 24
_ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
_DTYPE_SIZES = {
    "float32": 4,
    "fp32": 4,
    "float": 4,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "bfloat16": 2,
    "bf16": 2,
    "float64": 8,
    "fp64": 8,
}
SHARD_NAME = "model.safetensors"


class OutputPrefill:
    """A temporary output directory whose ``model.safetensors`` is being zero-filled."""

    def __init__(self, out: Path, nbytes: int) -> None:
        self.out = out
        self.nbytes = nbytes
        self.tmp_dir = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.claimed = False  # the writer owns tmp_dir from then on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="evomerge-prefill", daemon=True)

    @property
    def file(self) -> Path:
        return self.tmp_dir / SHARD_NAME

    def start(self) -> OutputPrefill:
        self.tmp_dir.mkdir()
        self._thread.start()
        return self

    def _run(self) -> None:
        zeros = memoryview(bytes(_PIECE))  # calloc'd: reading it costs no memory
        with contextlib.suppress(OSError):
            fd = os.open(self.file, os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                for pos in range(0, self.nbytes, _PIECE):
                    if self._stop.is_set():
                        break
                    os.pwrite(fd, zeros[: min(_PIECE, self.nbytes - pos)], pos)
            finally:
                os.close(fd)

    def wait(self) -> None:
        self._thread.join()

    def discard(self) -> None:
        """Stop, and remove the directory unless a writer adopted it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if not self.claimed:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _model_refs(node: Any) -> list[str]:
    refs = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("model", "base_model") and isinstance(value, str):
                refs.append(value)
            else:
                refs += _model_refs(value)
    elif isinstance(node, list):
        for value in node:
            refs += _model_refs(value)
    return refs


def _output_bytes(model: Path, item: int | None) -> int:
    """Bytes of the model's tensors (in ``item``-byte elements if given) plus a header."""
    total = 0
    for file in sorted(model.glob("*.safetensors")):
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        total += 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            size = end - start
            if item and meta["dtype"] in _ITEM:
                size = size // _ITEM[meta["dtype"]] * item
            total += size
    return total


def start_output_prefill(recipe_path: Path, out: Path, force: bool) -> OutputPrefill | None:
    """Start warming ``out``'s shard if its size can be guessed; ``None`` if not worth it."""
    try:
        import yaml

        if out.exists() and not force:
            return None  # the merge will refuse the output anyway
        if not out.parent.is_dir():
            return None
        spec = yaml.safe_load(recipe_path.read_text())
        if not isinstance(spec, dict):
            return None
        dtype = spec.get("out_dtype") or spec.get("dtype")
        item = _DTYPE_SIZES.get(str(dtype).lower()) if dtype else None
        guess = 0
        for ref in dict.fromkeys(_model_refs(spec)):
            for cand in (Path(ref).expanduser(), recipe_path.parent / ref):
                if cand.is_dir():
                    guess = max(guess, _output_bytes(cand, item))
                    break
        if guess <= 0:
            return None
        return OutputPrefill(out, min(guess, PREFILL_MAX)).start()
    except Exception:  # only an optimisation: never the reason a merge fails
        return None
