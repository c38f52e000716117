"""Export LoRA adapters for other engines: a llama.cpp GGUF adapter, or PEFT folders for vLLM.

**llama.cpp** (:func:`export_lora`).

llama.cpp applies a GGUF adapter at load time: for every adapted base tensor ``T`` it reads
``T.lora_a`` (rank x in) and ``T.lora_b`` (out x rank) and adds ``alpha / rank * B A``,
exactly PEFT's LoRA. Two mappings make the tensors line up with the base GGUF:

- names: ``model.layers.{i}.self_attn.q_proj`` -> ``blk.{i}.attn_q`` and so on;
- the rotary layout: GGUF stores the query/key projections of Llama models with their rows
  permuted (llama.cpp's converter does it; transformers undoes it when it loads a GGUF), so
  the ``B`` of q/k adapters gets the same row permutation. ``A`` is untouched (it acts on inputs).

Every adapted tensor is checked against the base GGUF's shapes before anything is written.

**PEFT folders** (:func:`export_peft`, :func:`export_for_serving`): ``adapter_config.json`` +
``adapter_model.safetensors``, what ``PeftModel.from_pretrained`` and vLLM
(``--enable-lora --lora-modules NAME=FOLDER``) load. layered's adapter files already hold
PEFT's state-dict keys, so the tensors are written unchanged; the config is PEFT's own
``LoraConfig`` for the adapter's recipe. A packaged GGUF base model is written beside them
as a Hugging Face folder (dequantised by transformers, exactly the weights layered's
transformers backend runs), because serving engines load LoRA onto such folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from layered.artifacts import atomic_path
from layered.errors import ConfigError

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
_NAMES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}


def _permute(rows: Any, n_head: int) -> Any:
    """llama.cpp's q/k row permutation (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ConfigError(f"the base GGUF has no {key!r}; cannot map a LoRA adapter onto it")
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types and field.types[0].name == "STRING" else value[0]


def export_lora(weights: Mapping[str, Any], config: Mapping[str, Any], base_gguf: str | Path, out: str | Path) -> Path:
    """Write the LoRA ``weights`` (PEFT state dict, adapter name removed) as a GGUF adapter at ``out``.

    ``config`` is the adapter's TuneConfig dump (its ``alpha`` is stored; llama.cpp scales by
    alpha / rank like PEFT). Raises :class:`ConfigError` for DoRA or other methods, unknown
    module names, or shapes that do not match ``base_gguf``.
    """
    import gguf
    import numpy as np

    if config.get("method") != "lora" or config.get("dora"):
        raise ConfigError(f"only plain LoRA adapters can be exported to llama.cpp (this one is {config.get('method')}"
                          f"{' with DoRA' if config.get('dora') else ''})")
    reader = gguf.GGUFReader(str(base_gguf))
    arch = str(_field(reader, "general.architecture"))
    if arch != "llama":
        raise ConfigError(f"LoRA export knows the llama tensor layout; the base GGUF is {arch!r}")
    n_head, n_kv = int(_field(reader, f"{arch}.attention.head_count")), int(_field(reader, f"{arch}.attention.head_count_kv"))
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}  # GGUF order: (in, out)
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        m = _KEY.search(key)
        if m is None or m.group(2) not in _NAMES:
            raise ConfigError(f"cannot map adapter tensor {key!r} to a llama.cpp tensor")
        layer, module, side = m.groups()
        name = f"blk.{layer}.{_NAMES[module]}.weight"
        array = tensor.detach().float().cpu().numpy()
        if side == "B" and module in ("q_proj", "k_proj"):
            array = _permute(array, n_head if module == "q_proj" else n_kv)
        pairs.setdefault(name, {})[side] = np.ascontiguousarray(array, dtype=np.float32)
    if not pairs:
        raise ConfigError("the adapter has no LoRA tensors to export")
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{name}: the adapter has only lora_{''.join(pair)}")
        if name not in shapes:
            raise ConfigError(f"the base GGUF has no tensor {name!r}")
        n_in, n_out = shapes[name]
        if pair["A"].shape[1] != n_in or pair["B"].shape[0] != n_out or pair["A"].shape[0] != pair["B"].shape[1]:
            raise ConfigError(f"{name}: adapter shapes {pair['A'].shape} / {pair['B'].shape} do not fit the base tensor ({n_out} x {n_in})")
    out = Path(out)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["alpha"]))
        for name, pair in sorted(pairs.items()):
            writer.add_tensor(f"{name}.lora_a", pair["A"])
            writer.add_tensor(f"{name}.lora_b", pair["B"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


# -- PEFT folders (vLLM) -------------------------------------------------------------------

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
BASE_DIR = "base"
ADAPTERS_DIR = "adapters"
_PEFT_KEY = re.compile(r"^base_model\.model\.(?:.+\.)?(\w+)\.lora_([AB])\.weight$")


def export_peft(weights: Mapping[str, Any], config: Mapping[str, Any], out: str | Path, *, base_model: str = "") -> Path:
    """Write the LoRA ``weights`` (PEFT state dict, adapter name removed) and ``config`` (its
    TuneConfig dump) as a PEFT folder at ``out``; returns ``out``.

    Refuses (:class:`ConfigError`, nothing written) DoRA and other methods (vLLM serves plain
    LoRA), keys that are not PEFT LoRA keys, unpaired or mis-shaped ``A``/``B`` and modules
    outside the recipe's ``target_modules``. ``base_model`` goes to ``base_model_name_or_path``.
    """
    from safetensors.torch import save_file

    from layered.adapters.config import AdapterConfig
    from layered.adapters.methods.lora import peft_config

    adapter = AdapterConfig.of(config)
    if adapter.method != "lora" or adapter.dora:
        raise ConfigError(f"only plain LoRA adapters can be exported as PEFT folders for serving engines (this one is "
                          f"{adapter.method}{' with DoRA' if adapter.dora else ''})")
    pairs: dict[str, dict[str, Any]] = {}
    for key, tensor in weights.items():
        m = _PEFT_KEY.match(key)
        if m is None:
            raise ConfigError(f"{key!r} is not a PEFT LoRA tensor (base_model.model....lora_A.weight / lora_B.weight)")
        if m.group(1) not in adapter.target_modules:
            raise ConfigError(f"{key!r} adapts {m.group(1)!r}, which is not in the recipe's target_modules {adapter.target_modules}")
        pairs.setdefault(key[: m.start(2) - len("lora_")], {})[m.group(2)] = tensor
    if not pairs:
        raise ConfigError("the adapter has no LoRA tensors to export")
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{module}: the adapter has only lora_{''.join(pair)}")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != adapter.rank or b.shape[1] != adapter.rank:
            raise ConfigError(f"{module}: shapes {tuple(a.shape)} / {tuple(b.shape)} are not a rank-{adapter.rank} LoRA pair")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lora = peft_config(adapter)
    lora.base_model_name_or_path = base_model
    lora.inference_mode = True
    lora.save_pretrained(str(out))
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    return out


def export_base_model(model: str, out: str | Path) -> Path:
    """The base ``model`` (a packaged name or a local path) as a Hugging Face folder a serving
    engine loads: a GGUF file is dequantised by transformers and saved (float32 safetensors with
    its tokenizer and chat template) at ``out``; a folder is already one and is returned as is."""
    from layered import models

    path = models.resolve(model)
    if path.is_dir():
        return path
    out = Path(out)
    models.save_dequantized(path, out)
    return out


@dataclass
class ServingExport:
    """A folder written by :func:`export_for_serving`: the base model folder, one PEFT folder
    per adapter, and the vLLM launch that serves them."""

    folder: Path
    base: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    def vllm_args(self, served_name: str = "base") -> list[str]:
        """Arguments after ``vllm serve``: the base under ``served_name``, every adapter by its name."""
        args = [str(self.base), "--served-model-name", served_name]
        if self.adapters:
            args += ["--enable-lora", "--max-lora-rank", str(max(self.ranks.values())), "--max-loras", str(len(self.adapters)),
                     "--lora-modules", *(f"{name}={path}" for name, path in self.adapters.items())]
        return args


def export_for_serving(adapters: Mapping[str, tuple[Mapping[str, Any] | str | Path, Mapping[str, Any]]], base_model: str,
                       out: str | Path, *, base_folder: str | Path | None = None) -> ServingExport:
    """Write ``adapters`` (name -> (PEFT weights or their safetensors file, TuneConfig dump)) as
    PEFT folders under ``out/adapters/NAME``, and the base model as a Hugging Face folder under
    ``out/base`` (see :func:`export_base_model`; a ``base_model`` that is already a folder is
    referenced, not copied). ``base_folder`` names an existing Hugging Face folder of the same
    base instead (an earlier export's ``base``): nothing is written for the base then. The whole
    folder is swapped in atomically, with a manifest."""
    from safetensors.torch import load_file

    from layered.adapters.names import check_name
    from layered.artifacts import save_folder_atomically

    for name in adapters:
        check_name(name)
    if base_folder is not None and not (Path(base_folder) / "config.json").is_file():
        raise ConfigError(f"{base_folder} is not a Hugging Face model folder (no config.json)")
    target = Path(out).resolve()
    result = ServingExport(folder=target, base=Path(base_folder).resolve() if base_folder is not None else target / BASE_DIR)

    def write(tmp: Path) -> None:
        if base_folder is None:
            written = export_base_model(base_model, tmp / BASE_DIR)
            if written != tmp / BASE_DIR:  # already a folder: point at it, copy nothing
                result.base = written
        for name, (weights, config) in adapters.items():
            tensors = load_file(str(weights)) if isinstance(weights, (str, Path)) else weights
            export_peft(tensors, config, tmp / ADAPTERS_DIR / name, base_model=str(result.base))
            result.adapters[name] = target / ADAPTERS_DIR / name
            result.ranks[name] = int(config.get("rank", 8))

    save_folder_atomically(target, write, manifest_extra={"kind": "peft-export", "base_model": base_model})
    return result


def generator_adapters(generator: Any, names: Sequence[str] | None = None) -> dict[str, tuple[Any, dict[str, Any]]]:
    """The LoRA adapters of a (transformers) ``generator`` as :func:`export_for_serving` takes
    them: ``names`` (default: all), each its saved weights file while it is not loaded yet,
    else its weights read from the model."""
    if not hasattr(generator, "adapter_weights"):
        raise ConfigError(f"a {getattr(generator, 'kind', type(generator).__name__)} generator does not hold PEFT adapter weights; "
                          "export from the pipeline's transformers generator (how `layered index` and Pipeline.fit save it)")
    installed: dict[str, dict[str, Any]] = dict(generator.adapters)
    if not installed:
        raise ConfigError("this generator has no adapters to export")
    unknown = sorted(set(names or ()) - set(installed))
    if unknown:
        raise ConfigError(f"no adapter named {unknown[0]!r} (known: {', '.join(installed)})")
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name in names or list(installed):
        source = generator.adapter_source(name) if hasattr(generator, "adapter_source") else None
        out[name] = (source if source is not None else generator.adapter_weights(name), installed[name])
    return out
