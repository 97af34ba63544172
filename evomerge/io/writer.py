"""Writing a model directory atomically, streaming tensors straight to disk.

Every output tensor's name, shape and dtype are known from the merge plan
before any is computed, so each shard's safetensors header can be written
first and tensor bytes appended as they are produced: memory stays bounded by
the tensor in hand, whatever the model size. Everything goes to a temporary
directory beside the output, which is renamed into place only when complete;
an interrupted write leaves no half-written model behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import queue
import shutil
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from evomerge.errors import CheckpointError, DiskFullError, OutputExistsError
from evomerge.io.checkpoint import SAFETENSORS_DTYPES
from evomerge.io.compat import check_writable
from evomerge.io.prefill import OutputPrefill

_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for s in self.shape:
            n *= s
        return n


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse an existing output before any compute is spent."""
    if out.exists() and not force:
        raise OutputExistsError(
            f"Output {out} already exists. Choose another --out, or pass --force to replace it."
        )
    if out.exists() and not out.is_dir():
        raise OutputExistsError(
            f"Output {out} exists and is not a directory; remove it or choose another --out."
        )
    check_writable(out)


class _Shard:
    def __init__(self, path: Path, specs: list[TensorSpec]) -> None:
        self.path = path
        self.offsets: dict[str, tuple[int, int]] = {}
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        pos = 0
        for spec in specs:
            self.offsets[spec.name] = (pos, pos + spec.nbytes)
            header[spec.name] = {
                "dtype": _DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [pos, pos + spec.nbytes],
            }
            pos += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self._header = raw
        self.data_start = 8 + len(raw)
        self.size = pos
        self.file: BinaryIO | None = None
        self.written: set[str] = set()

    def open(self) -> None:
        """Create the file, or adopt a pre-warmed one (overwritten, cut to size)."""
        self.file = open(self.path, "r+b" if self.path.exists() else "wb")  # noqa: SIM115
        self.file.write(struct.pack("<Q", len(self._header)))
        self.file.write(self._header)
        self.file.truncate(self.data_start + self.size)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        start, end = self.offsets[name]
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != end - start:
            raise CheckpointError(
                f"Tensor {name}: produced {data.nbytes} bytes, planned {end - start}."
            )
        assert self.file is not None
        self.file.seek(self.data_start + start)
        self.file.write(data)
        self.written.add(name)

    def close(self, durable: bool) -> None:
        if self.file is None:
            self.open()
        assert self.file is not None
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())
        self.file.close()


class CheckpointWriter:
    """Write a model directory: planned tensors, streamed; then config and extra files.

    Use as a context manager; leaving it by an exception removes everything it wrote.
    """

    def __init__(
        self,
        out: str | Path,
        specs: list[TensorSpec],
        *,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        force: bool = False,
        durable: bool = False,
        prefill: OutputPrefill | None = None,
    ) -> None:
        self.out = Path(out)
        self._prefill = prefill
        self.specs = specs
        self.max_shard_bytes = max_shard_bytes
        self.force = force
        self.durable = durable
        self._tmp: Path | None = None
        self._shards: list[_Shard] = []
        self._shard_of: dict[str, _Shard] = {}
        # Disk writes run on a background thread, overlapping the next tensor's merge; the
        # bounded queue keeps memory at a few tensors.
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> CheckpointWriter:
        check_output_dir(self.out, self.force)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        groups: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in self.specs:
            if groups[-1] and size + spec.nbytes > self.max_shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(spec)
            size += spec.nbytes
        n = len(groups)
        prefill, self._prefill = self._prefill, None
        if prefill is not None and n == 1 and prefill.out == self.out:
            prefill.claimed = True  # its directory and warmed shard become ours
            self._prefill = prefill
            self._tmp = prefill.tmp_dir
        else:
            if prefill is not None:
                prefill.discard()
            self._tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
            self._tmp.mkdir()
        for i, group in enumerate(groups):
            name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            shard = _Shard(self._tmp / name, group)
            self._shards.append(shard)
            for spec in group:
                self._shard_of[spec.name] = shard
        self._thread = threading.Thread(target=self._drain, name="evomerge-writer", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        try:
            if self._prefill is not None:
                self._prefill.wait()  # no byte of ours before its last zero
            for shard in self._shards:
                shard.open()
        except BaseException as err:
            self._error = err
        while (item := self._queue.get()) is not None:
            name, tensor, done = item
            if self._error is None:
                try:
                    self._shard_of[name].write(name, tensor)
                except BaseException as err:  # reported to the producer at its next call
                    self._error = err
            del item, tensor
            if done is not None and self._error is None:
                done()

    def _flush(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error

    @property
    def tmp_dir(self) -> Path:
        assert self._tmp is not None, "use CheckpointWriter as a context manager"
        return self._tmp

    def write(
        self, name: str, tensor: torch.Tensor, done: Callable[[], None] | None = None
    ) -> None:
        """Queue ``tensor`` for writing; ``done()`` is called once its bytes are in the file."""
        if self._error is not None:
            raise self._error
        if name not in self._shard_of:
            raise CheckpointError(f"Tensor {name} was not planned for this output.")
        self._queue.put((name, tensor, done))

    def write_json(self, filename: str, data: dict[str, Any]) -> None:
        (self.tmp_dir / filename).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_text(self, filename: str, text: str) -> None:
        (self.tmp_dir / filename).write_text(text)

    def copy_file(self, src: Path, filename: str | None = None) -> None:
        shutil.copyfile(src, self.tmp_dir / (filename or src.name))

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            self._raise_if_disk_full(exc)
            return
        try:
            self._commit()
        except BaseException as err:
            self._abort()
            self._raise_if_disk_full(err)
            raise

    def _raise_if_disk_full(self, err: BaseException) -> None:
        """A full disk (or quota) becomes one message naming the file of the output being
        written, not the temporary path the OS reported."""
        if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return
        name = Path(err.filename).name if err.filename else "a file"
        total = sum(s.nbytes for s in self.specs)
        size = f"{total / 1e9:.2f} GB" if total >= 1e8 else f"{total / 1e6:.1f} MB"
        kept = f" {self.out} was left as it was." if self.out.exists() else ""
        raise DiskFullError(
            f"The disk filled up while writing {name} of {self.out} ({err.strerror}); the "
            f"partial output was removed.{kept} Its weights need {size}; free space "
            f"on {self.out.absolute().parent} (or choose another --out) and run the command again."
        ) from err

    def _commit(self) -> None:
        self._flush()
        missing = [s.name for s in self.specs if s.name not in self._shard_of[s.name].written]
        if missing:
            raise CheckpointError(
                f"Output incomplete: {len(missing)} planned tensors were never written ({missing[0]}, ...)."
            )
        for shard in self._shards:
            shard.close(self.durable)
        if len(self._shards) > 1:
            weight_map = {name: shard.path.name for name, shard in self._shard_of.items()}
            total = sum(s.size for s in self._shards)
            self.write_json(
                "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map},
            )
        check_output_dir(self.out, self.force)  # it may have appeared while we merged
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, old)
        os.replace(self.tmp_dir, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def _abort(self) -> None:
        with contextlib.suppress(
            BaseException
        ):  # already failing; the first error is the one reported
            self._flush()
        if self._prefill is not None:
            self._prefill.discard()
        for shard in self._shards:
            if shard.file is not None and not shard.file.closed:
                shard.file.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
