"""How a source model is named, and what it resolves to.

A model reference, wherever a recipe, a mergekit YAML, a space or a command takes one, is:

* a local model directory: as given (relative to the working directory), else relative to
  each search directory (e.g. the recipe's or the space file's folder);
* a Hugging Face Hub id, ``org/name`` or ``org/name@revision`` (``evomerge.io.hub``);
* ``MODEL+ADAPTER`` (mergekit's syntax): a PEFT LoRA adapter applied to a model, each side a
  path or a Hub id (``evomerge.io.adapter`` applies it, one tensor at a time).

A local directory wins over a Hub id of the same spelling, as in mergekit and Transformers.

Resolution happens once, where a command starts (a search's controller), and gives a mapping
``reference -> directory`` that workers use as it is: for ``MODEL+ADAPTER`` the directory is the
adapter's, and the mapping also holds ``MODEL`` itself (``resolve_sources``). ``open_source``
turns an entry of that mapping into a ``TensorSource``; ``pinned_ref`` gives the reference as
an export should record it: an absolute path, or the Hub id pinned to the commit it resolved to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from evomerge.errors import CheckpointError
from evomerge.io.hub import parse_hub_id, resolve_hub, snapshot_identity

ADAPTER_SEP = "+"


def split_adapter(ref: str) -> tuple[str, str | None]:
    """``(model, adapter)`` of ``MODEL+ADAPTER``; ``(ref, None)`` for a plain reference."""
    if ADAPTER_SEP not in ref:
        return ref, None
    model, _, adapter = ref.partition(ADAPTER_SEP)
    if not model.strip() or not adapter.strip() or ADAPTER_SEP in adapter:
        raise CheckpointError(
            f"Model reference {ref!r} is not MODEL+ADAPTER: "
            + ("nothing follows the '+'" if not adapter.strip() else
               "nothing comes before the '+'" if not model.strip() else "it has more than one '+'")
            + ". Name a model (a path or a Hub id), then '+', then a PEFT LoRA adapter (a path or a "
            "Hub id), e.g. `org/base+org/lora`; or drop the '+' for a plain model."
        )
    return model.strip(), adapter.strip()


def _local(ref: str, search_dirs: Sequence[Path]) -> Path | None:
    path = Path(ref).expanduser()
    if path.is_absolute() or path.exists():
        return path
    for d in search_dirs:
        if (Path(d) / path).exists():
            return Path(d) / path
    return None


def _whole_local(ref: str, search_dirs: Sequence[Path]) -> Path | None:
    """An existing local directory named ``ref`` as a whole (its name may hold a '+')."""
    found = _local(ref, search_dirs)
    return found if found is not None and found.exists() else None


def resolves_whole(ref: str, search_dirs: Sequence[Path]) -> bool:
    """Whether ``ref`` is an existing local path as a whole (a directory whose name holds '+')."""
    return _whole_local(ref, search_dirs) is not None


def resolve_part(ref: str, search_dirs: Sequence[Path] = (), *, adapter: bool = False,
                 allow_pickle: bool = False) -> Path:
    """One side of a reference (no '+') as a directory: local first, then the Hub."""
    found = _local(ref, search_dirs)
    if found is None:
        hub_id = parse_hub_id(ref)
        if hub_id is None:
            where = ", ".join(str(d) for d in search_dirs) or "the working directory"
            raise CheckpointError(
                f"{'Adapter' if adapter else 'Model'} {ref!r} was not found as a local directory "
                f"(relative to the working directory, then {where}), and it is not a Hugging Face "
                f"Hub id (org/name or org/name@revision). Fix the path."
            )
        found = resolve_hub(hub_id, adapter=adapter, allow_pickle=allow_pickle)
    if not adapter and is_bare_adapter(found):
        named = _adapter_base(found)
        raise CheckpointError(
            f"{ref!r} ({found}) is a PEFT LoRA adapter (adapter_config.json, no config.json of a "
            f"model), not a model. Name it after the model it adapts: `BASE+{ref}`"
            + (f" (its adapter_config.json names base_model_name_or_path {named!r})." if named else ".")
        )
    return found


def _adapter_base(path: Path) -> str | None:
    import json

    try:
        named = json.loads((Path(path) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return named if isinstance(named, str) and named else None


def is_bare_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def resolve_model_path(ref: str, search_dirs: Sequence[Path] = (), *, allow_pickle: bool = False) -> Path:
    """The directory holding ``ref``'s config and tokenizer: the model's (for ``MODEL+ADAPTER``,
    the model's, after checking that the adapter resolves too). Weights are opened with
    ``open_source``, which applies the adapter."""
    whole = _whole_local(ref, search_dirs)  # a local directory whose name holds a '+'
    if whole is not None:
        return whole
    model, adapter = split_adapter(ref)
    if adapter is not None:
        resolve_part(adapter, search_dirs, adapter=True)
    return resolve_part(model, search_dirs, allow_pickle=allow_pickle)


def resolve_sources(refs: Iterable[str], search_dirs: Sequence[Path] = (), *,
                    allow_pickle: bool = False) -> dict[str, Path]:
    """``reference -> directory`` for ``refs`` (see the module docstring): a ``MODEL+ADAPTER``
    maps to the adapter's directory and brings ``MODEL`` in as an entry of its own."""
    out: dict[str, Path] = {}
    for ref in refs:
        if ref in out:
            continue
        if _whole_local(ref, search_dirs) is not None:
            out[ref] = resolve_part(ref, search_dirs, allow_pickle=allow_pickle)
            continue
        model, adapter = split_adapter(ref)
        if adapter is None:
            out[ref] = resolve_part(ref, search_dirs, allow_pickle=allow_pickle)
            continue
        if model not in out:
            out[model] = resolve_part(model, search_dirs, allow_pickle=allow_pickle)
        out[ref] = resolve_part(adapter, search_dirs, adapter=True)
    return out


def is_adapter_entry(ref: str, sources: Mapping[str, Path]) -> bool:
    """Whether ``sources[ref]`` is an adapter directory (its model is ``sources[model]``)."""
    try:
        model, adapter = split_adapter(ref)
    except CheckpointError:
        return False
    return adapter is not None and model in sources and (Path(sources[ref]) / "adapter_config.json").is_file()


def model_dir(ref: str, sources: Mapping[str, Path]) -> Path:
    """The directory of ``ref``'s config and tokenizer in a resolved mapping."""
    if is_adapter_entry(ref, sources):
        return Path(sources[split_adapter(ref)[0]])
    return Path(sources[ref])


def open_source(ref: str, sources: Mapping[str, Path], *, allow_pickle: bool = False,
                check_finite: bool = False):
    """``sources[ref]`` opened lazily as a ``TensorSource`` (the adapter applied on read)."""
    from evomerge.io.checkpoint import Checkpoint

    if not is_adapter_entry(ref, sources):
        return Checkpoint(sources[ref], allow_pickle=allow_pickle, check_finite=check_finite)
    from evomerge.io.adapter import AdaptedSource, read_adapter

    base = Checkpoint(model_dir(ref, sources), allow_pickle=allow_pickle, check_finite=check_finite)
    adapted = AdaptedSource(base, read_adapter(Path(sources[ref])))
    adapted.path = base.path  # its config's and tokenizer's directory, as a Checkpoint's path is
    return adapted


def pinned_ref(ref: str, sources: Mapping[str, Path]) -> str:
    """``ref`` as an exported recipe should name it: a Hub id pinned to the commit it resolved
    to (``org/name@<commit>``), else the absolute local path; both sides of ``MODEL+ADAPTER``."""
    return ADAPTER_SEP.join(text for text, _ in _pins(ref, sources))


def hub_pins(refs: Iterable[str], sources: Mapping[str, Path]) -> dict[str, str]:
    """``ref -> pinned_ref`` for the references that name a Hub id (local paths left as given)."""
    return {ref: pinned_ref(ref, sources) for ref in refs if any(hub for _, hub in _pins(ref, sources))}


def _pins(ref: str, sources: Mapping[str, Path]) -> list[tuple[str, bool]]:
    """Each side of ``ref`` pinned, and whether it is a Hub id."""
    if is_adapter_entry(ref, sources):
        model, adapter = split_adapter(ref)
        return [_pin(model, Path(sources[model])), _pin(adapter, Path(sources[ref]))]
    return [_pin(ref, Path(sources[ref]))]


def _pin(side: str, path: Path) -> tuple[str, bool]:
    identity = snapshot_identity(path)
    hub_id = parse_hub_id(side)
    if identity is not None and hub_id is not None and hub_id.repo == identity[0]:
        return f"{identity[0]}@{identity[1]}", True
    return str(path.resolve()), False


def load_source_lm(ref: str, search_dirs: Sequence[Path] = (), *, device="cpu",
                   trust_remote_code: bool = False):
    """``(model, tokenizer)`` of a reference, for scoring it: the model directory loaded by
    ``evomerge.io.hf``, with an adapter's tensors written into it (``MODEL+ADAPTER``)."""
    import torch

    from evomerge.io.hf import load_causal_lm

    dirs = resolve_sources([ref], search_dirs)
    model, tokenizer = load_causal_lm(model_dir(ref, dirs), device=device, trust_remote_code=trust_remote_code)
    if is_adapter_entry(ref, dirs):
        source = open_source(ref, dirs)
        state = model.state_dict()
        changed = [*source.adapter.targets, *source.adapter.replacements]
        unknown = [n for n in changed if n not in state]
        if unknown:  # never score the base in the adapter's name
            raise CheckpointError(
                f"{ref}: the model loaded from {model_dir(ref, dirs)} has no parameter {unknown[0]}, "
                f"which the adapter changes (its checkpoint names differ from the model's); merge "
                f"the adapter into a model directory with `evomerge merge` and score that."
            )
        with torch.no_grad():
            for name in changed:
                state[name].copy_(source.get(name))
        source.close()
    return model, tokenizer
