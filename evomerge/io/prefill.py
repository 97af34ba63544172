"""Warming the output file's page cache while the command line is still starting.

Writing into pages a file does not have yet is the slow part of writing a model on
some machines (VMs whose memory is backed lazily: first-touched pages cost several
times the copy). Overwriting pages already in the cache is a plain memcpy. The CLI
spends its first seconds importing torch on one core, so before that it starts this
thread on the other: the thread reads the recipe (``Recipe.load``), guesses the
output size from its models' safetensors headers and the recipe's dtype, and writes
that many zeros into the output shard-to-be. The writer later adopts the directory
(and waits for the thread before its first byte), so the zeros are always
overwritten or truncated away; when the thread guessed nothing (an unreadable
recipe, no model found) the directory is simply empty. A wrong guess costs only
idle-core time. Imports nothing heavy, and the recipe module only on the thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

PREFILL_MAX = 1 << 30  # bounded: dirty zeros older than the writeback age would reach the disk
_PIECE = 1 << 24
_ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
_DTYPE_ITEM = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}  # a recipe's canonical dtypes
SHARD_NAME = "model.safetensors"


class OutputPrefill:
    """A temporary output directory whose ``model.safetensors`` is being zero-filled.

    ``size`` runs on the thread and returns the bytes to write (capped at ``PREFILL_MAX``);
    if it raises or returns 0, the thread writes nothing.
    """

    def __init__(self, out: Path, size: Callable[[], int]) -> None:
        self.out = out
        self.nbytes = 0  # known once the thread has guessed it
        self.tmp_dir = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.claimed = False  # the writer owns tmp_dir from then on
        self._size = size
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
        try:
            self.nbytes = max(0, min(self._size(), PREFILL_MAX))
        except Exception:  # only an optimisation: never the reason a merge fails
            return
        if self.nbytes == 0 or self._stop.is_set():
            return
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


def guess_output_bytes(recipe_path: Path) -> int:
    """The size of the merge's output: its largest model's tensors, in the recipe's output
    dtype (``out_dtype``, else ``dtype``, else as stored); 0 when no model is found."""
    from evomerge.recipe import Recipe

    recipe = Recipe.load(recipe_path)
    dtype = recipe.out_dtype or recipe.dtype
    item = _DTYPE_ITEM.get(dtype) if dtype else None
    guess = 0
    for ref in recipe.referenced_models():
        for cand in (Path(ref).expanduser(), recipe_path.parent / ref):
            if cand.is_dir():
                guess = max(guess, _output_bytes(cand, item))
                break
    return guess


def start_output_prefill(recipe_path: Path, out: Path, force: bool) -> OutputPrefill | None:
    """Start warming ``out``'s shard (the recipe is read on the thread); ``None`` if not worth it."""
    try:
        if out.exists() and not force:
            return None  # the merge will refuse the output anyway
        if not out.parent.is_dir():
            return None
        return OutputPrefill(out, lambda: guess_output_bytes(recipe_path)).start()
    except Exception:  # only an optimisation: never the reason a merge fails
        return None
