"""A quantized GGUF's weights widened to 16-bit floats, so llama.cpp computes what transformers computes.

transformers loads a GGUF by dequantizing it to float32; llama.cpp multiplies the quantized
blocks directly and, to do so, quantizes the activations to 8 bits (``Q8_1`` for ``Q4_1``
weights). On the packaged SmolLM2 Q4_1 model that rounding alone changes the first 16 greedy
tokens of 10 of 20 prompts; measured here. The same weights widened to F16 (llama.cpp's own
converter, exact for 4-bit blocks up to F16 rounding) keep activations in floating point: the
two backends then agree on 20 of 20, at 3% (with a LoRA) to 12-16% (without) fewer tokens/s
and 3x the weight memory of Q4_1.

The widened copy is made once (about a second for 135M parameters) and cached under
:func:`layered.models.cache_dir`, keyed by the source file's name, size and modification time.
"""

from __future__ import annotations

import logging
from pathlib import Path

from layered import models
from layered.artifacts import atomic_path
from layered.errors import ModelNotAvailableError

#: Tensor types llama.cpp multiplies without quantizing the activations.
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def quantized_types(path: Path) -> set[str]:
    """The quantized tensor types in a GGUF file (empty for a float model)."""
    import gguf

    return {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors} - FLOAT_TYPES


def widened(path: Path) -> Path:
    """``path`` itself when it holds no quantized tensor, else its cached F16 copy (made on first use).

    Raises :class:`ModelNotAvailableError` when the copy cannot be written or llama.cpp fails.
    """
    stat = path.stat()
    target = models.cache_dir() / "gguf" / f"{path.stem}.{stat.st_size}-{stat.st_mtime_ns}.f16.gguf"
    if target.is_file():
        return target
    if not quantized_types(path):  # reads the whole header (~2 s for a 49k-token vocabulary): after the cache check
        return path
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True  # "requantize" from Q4_1 to F16 is a widening: dequantize, round to F16
    quiet = logging.getLogger("llama-cpp-python")  # llama.cpp logs a line per tensor through this logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with atomic_path(target) as tmp:
            if llama_cpp.llama_model_quantize(str(path).encode(), str(tmp).encode(), params) != 0:
                raise ModelNotAvailableError(f"llama.cpp could not widen {path} to F16")
    except OSError as e:
        raise ModelNotAvailableError(f"cannot write the F16 copy of {path.name} to {target.parent} ({e.strerror}); "
                                     "set LAYERED_CACHE to a writable folder or serve with precision='native'") from e
    finally:
        quiet.setLevel(level)
    return target


def gguf_tokenizer(path: Path) -> object:
    """The transformers tokenizer stored in a GGUF file (with its chat template), cached as a
    tokenizer folder beside the widened weights: reading it from the GGUF takes ~5 s for a
    49k-token vocabulary, the cached folder ~0.1 s. Same token ids either way (tested)."""
    from transformers import AutoTokenizer

    def build(tmp: Path) -> None:
        AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True).save_pretrained(str(tmp))

    folder = models.cached_folder(path, "tokenizer", build)
    if folder is None:  # an unwritable cache only costs each start its ~5 s
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
