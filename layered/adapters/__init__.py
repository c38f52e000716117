"""The one home of adapters, one module per concern (in the manner of PEFT's package per method).

- :mod:`~layered.adapters.names`: the reserved names (``"base"``, ``"default"``), the one list
  of method names, adapter-name checks;
- :mod:`~layered.adapters.config`: :class:`~layered.adapters.config.AdapterConfig`, the method
  hyper-parameters (the training schedule is :class:`layered.tuning.config.TuneConfig`, which extends it);
- :mod:`~layered.adapters.methods`: one small module per method, all behind ``apply_method``;
- :mod:`~layered.adapters.runtime`: install, select and serve named adapters on one base model,
  read and write their weights;
- :mod:`~layered.adapters.export`: a PEFT LoRA as a llama.cpp GGUF LoRA adapter, or as a PEFT
  folder (with the base as a Hugging Face folder) for vLLM.

Generation and tuning both depend on this package; it depends on neither. Importing it stays
light (torch, PEFT and gguf load inside the functions that need them).
"""

from layered.adapters.names import BASE, DEFAULT, METHODS, PEFT_METHODS, Method, check_name

__all__ = ["BASE", "DEFAULT", "METHODS", "PEFT_METHODS", "Method", "check_name"]
