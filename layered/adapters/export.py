"""Export a PEFT LoRA adapter as a llama.cpp GGUF LoRA adapter.

llama.cpp applies a GGUF adapter at load time: for every adapted base tensor ``T`` it reads
``T.lora_a`` (rank x in) and ``T.lora_b`` (out x rank) and adds ``alpha / rank * B A``,
exactly PEFT's LoRA. Two mappings make the tensors line up with the base GGUF:

- names: ``model.layers.{i}.self_attn.q_proj`` -> ``blk.{i}.attn_q`` and so on;
- the rotary layout: GGUF stores the query/key projections of Llama models with their rows
  permuted (llama.cpp's converter does it; transformers undoes it when it loads a GGUF), so
  the ``B`` of q/k adapters gets the same row permutation. ``A`` is untouched (it acts on inputs).

Every adapted tensor is checked against the base GGUF's shapes before anything is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

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
