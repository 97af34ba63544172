"""PEFT LoRA adapters as tensor sources: the base model with the adapter merged in, per tensor.

mergekit merges a ``base+adapter`` reference by loading the whole base with transformers,
merging the adapter with peft's ``merge_and_unload`` and saving a dense copy first. Here an
adapter directory (``adapter_config.json`` plus ``adapter_model.safetensors``, memory-mapped,
never unpickled) is read and validated once, and ``AdaptedSource`` wraps a base ``TensorSource``
so that ``get(name)`` reads one base tensor and adds its low-rank delta with peft's operations
in peft's order: float32 results are bit-identical to peft's, with no peft at run time and no
dense copy on disk. What would merge differently and is not implemented (DoRA and the other
LoRA variants, trained biases, layer replication, inits that alter the base) is refused by name.

Keys (peft 0.21), for base tensor ``<m>.weight``, under ``base_model.model.``: ``<m>.lora_A.weight``
/ ``.lora_B.weight`` (Linear, Conv1D); ``<m>.lora_embedding_A`` / ``_B`` (Embedding); ``<m>.base_layer.<p>``
(a copy of ``<m>.<p>`` saved with a targeted embedding or head, loaded in its place); ``<m>.<p>``
for ``<m>`` in ``modules_to_save`` (the trained copy that replaces ``<m>.<p>``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from evomerge.errors import CheckpointError
from evomerge.io.checkpoint import TensorSource

PREFIX = "base_model.model."
_FACTORS = {  # key suffix -> (embedding?, which factor)
    ".lora_A.weight": (False, "A"), ".lora_B.weight": (False, "B"),
    ".lora_embedding_A": (True, "A"), ".lora_embedding_B": (True, "B"),
}
# Config fields that change the merged weights and are not implemented: refused when set.
_REFUSED = {
    "use_dora": "DoRA (weight-decomposed LoRA)", "lora_bias": "a trained bias on lora_B",
    "layer_replication": "layer replication (the adapter expects a model with repeated layers)",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable tokens", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA), which peft cannot merge either",
    "velora_config": "VeLoRA", "monteclora_config": "MonteCLoRA", "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
}
# Initialisations that move part of the weight out of the base: the adapter then fits only the
# residual base it was trained against, which the directory does not hold.
_BASE_ALTERING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass(frozen=True)
class LoraTarget:
    """One adapted module: its factors' keys in the file and the scale peft gives them."""

    module: str  # peft's module key, e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]  # (r, in_features); embeddings: (r, num_embeddings)
    b_shape: tuple[int, ...]  # (out_features, r); embeddings: (embedding_dim, r)
    embedding: bool
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora


@dataclass
class LoraAdapter:
    """A validated PEFT LoRA adapter directory; tensors are read from the file when asked for."""

    path: Path
    config: dict[str, Any]
    targets: dict[str, LoraTarget]  # base tensor name -> its LoRA factors
    replacements: dict[str, str]  # base tensor name -> key of the full tensor that replaces it
    shapes: dict[str, tuple[int, ...]]  # every key in the file -> its shape
    _handle: Any

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)


def _fail(message: str) -> CheckpointError:
    return CheckpointError(" ".join(message.split()))


def read_adapter(adapter_dir: str | Path) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter directory (``CheckpointError`` naming what is wrong)."""
    path = Path(adapter_dir)
    if not path.is_dir():
        raise _fail(f"Adapter {path} is not a directory. Point at a PEFT adapter directory "
                    "(adapter_config.json plus adapter_model.safetensors, as peft's save_pretrained writes).")
    config_path = path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise _fail(f"Adapter directory {path} has no adapter_config.json. Point at a PEFT adapter "
                    "directory (adapter_config.json plus adapter_model.safetensors, as peft's "
                    "save_pretrained writes), not a model directory.") from None
    except json.JSONDecodeError as err:
        raise _fail(f"{config_path} is not valid JSON ({err}); fix or re-save the adapter.") from err
    if not isinstance(config, dict):
        raise _fail(f"{config_path} is not a JSON object; re-save the adapter with peft.")
    _check_config(config_path, config)

    file = path / "adapter_model.safetensors"
    if not file.exists():
        if (path / "adapter_model.bin").exists():
            raise _fail(f"Adapter directory {path} holds adapter_model.bin, a pickle file, which can run "
                        "arbitrary code when loaded and is not read. Convert it to safetensors where you "
                        "trust it (load it with peft and save_pretrained(..., safe_serialization=True)) "
                        "so the directory holds adapter_model.safetensors.")
        raise _fail(f"Adapter directory {path} has no adapter_model.safetensors. Copy or download the "
                    "adapter's weights into it (peft's save_pretrained writes that file).")
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
        keys = list(handle.keys())
    except Exception as err:  # safetensors raises its own error types
        raise _fail(f"Cannot read {file}: {err}. The file is truncated, corrupt or not safetensors; "
                    "re-download or re-save the adapter.") from err
    shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    targets, replacements = _classify(file, config, shapes)
    return LoraAdapter(path, config, targets, replacements, shapes, handle)


def _check_config(config_path: Path, config: dict[str, Any]) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise _fail(f"{config_path} has peft_type {peft_type!r}; only LoRA adapters (peft_type: LORA) "
                    "can be applied. Merge this adapter with peft and use the merged model instead.")
    for field, what in _REFUSED.items():
        if config.get(field):
            raise _fail(f"{config_path} sets {field}: {json.dumps(config[field])}, which is {what}; "
                        "applying it is not implemented and a plain LoRA merge would give different "
                        "weights. Merge the adapter with peft's merge_and_unload and use the merged "
                        "model, or use a plain LoRA adapter.")
    if config.get("bias", "none") != "none":
        raise _fail(f"{config_path} sets bias: {config['bias']!r}, so the adapter trains biases that a "
                    "LoRA merge here does not apply; only bias: \"none\" is supported. Merge the adapter "
                    "with peft's merge_and_unload and use the merged model instead.")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_ALTERING_INITS):
        raise _fail(f"{config_path} sets init_lora_weights: {init!r}; that initialisation moves part "
                    "of the weight out of the base, so the adapter fits only the residual base it was "
                    "trained on. Convert it to a plain LoRA with peft's save_pretrained(..., "
                    "path_initial_model_for_weight_conversion=...) and use the converted adapter.")
    for field in ("r", "lora_alpha"):
        value = config.get(field, 8)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise _fail(f"{config_path} has {field}: {json.dumps(value)}; it must be a positive "
                        "number. Fix the field or re-save the adapter with peft.")
    for field in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(field) or {}, dict):
            raise _fail(f"{config_path} has {field}: {json.dumps(config[field])}; it must map module "
                        "patterns to numbers. Fix the field or re-save the adapter with peft.")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern the module key ends with (a regex)."""
    return next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", module)), default)


def _targeted(config: dict[str, Any], module: str) -> bool:
    """Whether peft would put a LoRA layer on ``module`` (``check_target_module_exists``)."""
    exclude = config.get("exclude_modules")
    if isinstance(exclude, str) and re.fullmatch(exclude, module):
        return False
    if isinstance(exclude, list) and (module in exclude or any(module.endswith(f".{e}") for e in exclude)):
        return False
    targets = config.get("target_modules")
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    if module in targets:
        return True
    if not any(module.endswith(f".{t}") for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    regexes = [rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\." for p in patterns] or [r".*?\.[^.]*\.(?P<idx>\d+)\."]
    match = next(filter(None, (re.match(r, module) for r in regexes)), None)
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers


def _classify(
    file: Path, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, LoraTarget], dict[str, str]]:
    factors: dict[str, dict[str, tuple[bool, str]]] = {}  # module -> {"A"|"B": (embedding, key)}
    base_layer: dict[str, tuple[str, str]] = {}  # base tensor -> (module, key)
    replacements: dict[str, str] = {}
    unknown: list[str] = []
    to_save = config.get("modules_to_save") or []
    for key in shapes:
        rest = key.removeprefix(PREFIX) if key.startswith(PREFIX) else None
        suffix = next((s for s in _FACTORS if rest and rest.endswith(s)), None)
        if rest is None:
            unknown.append(key)
        elif suffix is not None:
            embedding, which = _FACTORS[suffix]
            factors.setdefault(rest[: -len(suffix)], {})[which] = (embedding, key)
        elif ".base_layer." in rest:
            module, _, param = rest.rpartition(".base_layer.")
            base_layer[f"{module}.{param}"] = (module, key)
        elif any(re.match(rf"(^|.*\.){m}($|\..*)", rest) for m in to_save) or (
            config.get("ensure_weight_tying") and rest.startswith("lm_head.")  # the copy's tied head
        ):
            replacements[rest] = key
        else:
            unknown.append(key)
    for tensor, (module, key) in base_layer.items():
        if module in factors:
            replacements[tensor] = key
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
        raise _fail(f"{file} holds unknown keys: {shown}. Only LoRA factors (lora_A/lora_B, "
                    "lora_embedding_A/B) and modules_to_save weights can be applied; these belong to an "
                    "adapter type or feature that is not implemented. Merge the adapter with peft's "
                    "merge_and_unload and use the merged model, or re-save a plain LoRA adapter.")

    targets: dict[str, LoraTarget] = {}
    r, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    for module, pair in factors.items():
        if set(pair) != {"A", "B"} or pair["A"][0] != pair["B"][0]:
            key = next(iter(pair.values()))[1]
            raise _fail(f"{file} holds {key} without its matching {'B' if 'A' in pair else 'A'} "
                        "factor. The file is incomplete or edited; re-save the adapter with peft.")
        if not _targeted(config, module):
            raise _fail(f"{file} holds LoRA factors for module {module}, which adapter_config.json's "
                        f"target_modules ({json.dumps(config.get('target_modules'))}) does not select, "
                        "so peft would not apply them. The config and the weights disagree; re-save the "
                        "adapter with peft.")
        (embedding, a_key), (_, b_key) = pair["A"], pair["B"]
        a_shape, b_shape = shapes[a_key], shapes[b_key]
        rank = _pattern_value(config.get("rank_pattern") or {}, module, r)
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise _fail(f"{file} holds LoRA factors of shapes {a_shape} and {b_shape} for {module}: "
                        "LoRA on convolution layers is not implemented. Merge the adapter with peft's "
                        "merge_and_unload and use the merged model instead.")
        if a_shape[0] != rank or b_shape[1] != rank:
            raise _fail(f"{file} holds {a_key} of shape {a_shape} and {b_key} of shape {b_shape}, but "
                        f"adapter_config.json gives {module} rank {rank} (r / rank_pattern). The config "
                        "and the weights disagree; re-save the adapter with peft.")
        a = _pattern_value(config.get("alpha_pattern") or {}, module, alpha)
        scale = a / math.sqrt(rank) if config.get("use_rslora") else a / rank
        targets[f"{module}.weight"] = LoraTarget(module, a_key, b_key, a_shape, b_shape, embedding, scale)
    return targets, replacements


class AdaptedSource:
    """A base ``TensorSource`` with a LoRA adapter merged in, one tensor at a time.

    Same tensor names, shapes and dtypes as the base. ``get(name)`` is, exactly as peft's
    ``merge_and_unload`` computes it (factors in float32, as peft holds them once loaded):

    * a LoRA target: ``W + delta`` where ``W`` is the base tensor (or the adapter's saved
      ``base_layer`` copy) and ``delta = T(B @ A) * scale``; ``T`` transposes for embeddings
      (``lora_embedding_A/B``) and for Conv1D-style weights stored (in, out) (``fan_in_fan_out``),
      else is the identity. Linear: ``(W + delta).to(W.dtype)``; embedding:
      ``W + delta.to(W.dtype)`` (peft's order; the same thing in float32);
    * a ``modules_to_save`` tensor: the adapter's trained copy, cast to the base tensor's dtype;
    * anything else: the base tensor, unchanged.
    """

    def __init__(self, base: TensorSource, adapter: LoraAdapter) -> None:
        self.base = base
        self.adapter = adapter
        self.name = f"{base.name}+{adapter.path}"
        self.config = base.config
        self._transposed: dict[str, bool] = {}
        problems: list[str] = []
        missing: list[str] = []
        for name, t in adapter.targets.items():
            if name not in base:
                missing.append(name)
                continue
            shape = tuple(base.shape(name))
            product, flip = (t.b_shape[0], t.a_shape[1]), (t.a_shape[1], t.b_shape[0])  # B @ A, its .T
            if t.embedding:
                fits, self._transposed[name] = shape == flip, True
            elif shape == product == flip:  # square: peft decides by module type, saved in the config
                fits, self._transposed[name] = True, bool(adapter.config.get("fan_in_fan_out"))
            else:  # peft forces fan_in_fan_out by module type, which the shape shows
                fits, self._transposed[name] = shape in (product, flip), shape == flip != product
            if not fits:
                problems.append(f"{name} is {shape} in the base but the adapter's lora_B {t.b_shape} "
                                f"@ lora_A {t.a_shape} gives {flip if t.embedding else product}")
        tied = self._tied_head(base) and adapter.config.get("ensure_weight_tying")
        for name, key in adapter.replacements.items():
            if name in base and tuple(base.shape(name)) != adapter.shapes[key]:
                problems.append(f"{name} is {tuple(base.shape(name))} in the base but {adapter.shapes[key]} in the adapter")
            elif name not in base and not (tied and name.startswith("lm_head.")):
                missing.append(name)  # (peft ties a tied base's head to the replaced embedding: skipped)
        hint = ""
        if missing:
            if any("lm_head" in n for n in missing) and base.config.get("tie_word_embeddings", True):
                hint = ("The base ties its output head to its input embedding (tie_word_embeddings), "
                        "so it has no head of its own to adapt. ")
            problems.insert(0, f"tensors it changes are missing from the base ({', '.join(missing[:3])}"
                            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''})")
        if problems:
            made_for = adapter.config.get("base_model_name_or_path")
            made_for = f" (adapter_config.json names base_model_name_or_path {made_for!r})" if made_for else ""
            raise _fail(f"Adapter {adapter.path} does not fit base model {base.name}: "
                        f"{'; '.join(problems[:3])}. {hint}The adapter was made for another base "
                        f"model{made_for}; apply it to the model it was trained on.")
        self._check_untying(base)

    @staticmethod
    def _tied_head(base: TensorSource) -> bool:
        own_head = any(n.startswith("lm_head") for n in base.tensor_names())
        return not own_head and bool(base.config.get("tie_word_embeddings", True))

    def _check_untying(self, base: TensorSource) -> None:
        """peft's modules_to_save copy of a tied embedding unties the head, unless
        ``ensure_weight_tying``; a checkpoint without a head of its own cannot hold that."""
        if not self._tied_head(base) or self.adapter.config.get("ensure_weight_tying"):
            return
        for name in self.adapter.replacements:
            if name not in self.adapter.targets and ("embed_tokens" in name or name.endswith("wte.weight")):
                raise _fail(f"Adapter {self.adapter.path} replaces {name} (modules_to_save) in base "
                            f"{base.name}, whose output head is tied to that embedding; peft's merge "
                            "would give the head the old embedding and the embedding the new one, which "
                            "a tied checkpoint cannot hold. Re-save the adapter with "
                            "ensure_weight_tying=True, or untie the base (tie_word_embeddings: false, "
                            "with lm_head.weight saved) first.")

    # -- TensorSource ----------------------------------------------------------

    def tensor_names(self) -> list[str]:
        return self.base.tensor_names()

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.base

    def shape(self, tensor: str) -> tuple[int, ...]:
        return self.base.shape(tensor)

    def dtype(self, tensor: str) -> torch.dtype:
        return self.base.dtype(tensor)

    def get(self, tensor: str) -> torch.Tensor:
        target = self.adapter.targets.get(tensor)
        key = self.adapter.replacements.get(tensor)
        dtype = self.base.dtype(tensor)
        weight = self.adapter.tensor(key).to(dtype) if key is not None else self.base.get(tensor)
        if target is None:
            return weight
        delta = self.delta(tensor)  # peft: embeddings add delta.to(dtype), Linear adds the float32 delta
        return weight + delta.to(dtype) if target.embedding else (weight + delta).to(dtype)

    # -- the adapter as factors ------------------------------------------------

    def _raw(self, tensor: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """(lora_B, lora_A, scale) as saved, in float32 (as peft holds them once loaded)."""
        if (t := self.adapter.targets.get(tensor)) is None:
            return None
        read = self.adapter.tensor
        return read(t.b_key).to(torch.float32), read(t.a_key).to(torch.float32), t.scale

    def delta(self, tensor: str) -> torch.Tensor | None:
        """The float32 LoRA delta ``get`` adds to ``tensor``, or None where it adds none."""
        if (raw := self._raw(tensor)) is None:
            return None
        b, a, scale = raw
        product = b @ a
        return (product.T if self._transposed[tensor] else product) * scale

    def factors(self, tensor: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(B, A, scale)`` in float32, oriented so that ``(B @ A) * scale`` has the base tensor's
        shape and equals ``delta(tensor)``: bitwise for an ordinary Linear; for a transposed target
        (embedding, fan_in_fan_out) ``B, A = lora_A.T, lora_B.T`` and ``B @ A`` equals peft's
        ``(lora_B @ lora_A).T`` up to float rounding. None where the adapter has no factors for
        ``tensor`` (a ``modules_to_save`` replacement has none: see ``replaced``)."""
        if (raw := self._raw(tensor)) is None:
            return None
        b, a, scale = raw
        return (a.T, b.T, scale) if self._transposed[tensor] else (b, a, scale)

    def replaced(self, tensor: str) -> bool:
        """Whether ``get`` starts from the adapter's saved tensor instead of the base's."""
        return tensor in self.adapter.replacements

    def exact_factors(self, tensor: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``factors`` if ``(W + (B @ A) * scale).to(W.dtype)`` is bitwise ``get`` (plain Linear)."""
        plain = tensor in self.adapter.targets and not self._transposed[tensor] and not self.replaced(tensor)
        return self.factors(tensor) if plain else None

    def close(self) -> None:  # the adapter file's handle; the base is the caller's to close
        self.adapter._handle = None

    def __repr__(self) -> str:
        return f"AdaptedSource({self.name!r}, {len(self.adapter.targets)} LoRA targets)"
