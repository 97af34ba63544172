"""Checkpoint I/O: lazy reading of HF model directories and atomic, streaming writing."""

from evomerge.io.checkpoint import Checkpoint, StateDictSource, TensorSource
from evomerge.io.writer import CheckpointWriter, TensorSpec

__all__ = ["Checkpoint", "CheckpointWriter", "StateDictSource", "TensorSource", "TensorSpec"]
