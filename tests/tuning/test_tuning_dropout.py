"""The faster LoRA dropout masks: the same inverted dropout, replayed exactly by activation
recomputation, swapped in only for the length of a run."""

from __future__ import annotations

import pytest

from layered.tuning.config import ALL_LINEAR, TuneConfig
from layered.tuning.dropout import FastDropout, fast_lora_dropout


def test_fast_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_the_survivors():
    import torch

    x = torch.ones(1_000_003)  # not a multiple of 4: the last random word is cut
    drop = FastDropout(0.1).train()
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.9) < 0.002  # 1e6 draws: 6 standard deviations is 0.0018
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9), rtol=1e-4)
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # torch's generator: seeded, so replayable
    assert not torch.equal(drop(x), y)  # and a fresh mask on every call
    assert torch.equal(drop.eval()(x), x) and torch.equal(FastDropout(0.0).train()(x), x)
    for dtype in (torch.bfloat16, torch.float32):
        assert drop.train()(x.to(dtype)).dtype == dtype
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_the_gradient_is_the_mask_times_the_scale():
    import torch

    x = torch.randn(64, 32, requires_grad=True)
    torch.manual_seed(1)
    y = FastDropout(0.25).train()(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() / 0.75)


def _lora_model(tiny_model_dir, dropout: float):
    from transformers import AutoModelForCausalLM

    from layered.adapters.methods import apply_method

    config = TuneConfig(method="lora", rank=4, dropout=dropout, target_modules=list(ALL_LINEAR))
    return apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)


def test_swapped_in_for_a_run_then_the_original_modules_are_back(tiny_model_dir):
    import torch

    model = _lora_model(tiny_model_dir, 0.1)
    before = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    with fast_lora_dropout(model) as swapped:
        assert swapped == len(before) == 2 * len(ALL_LINEAR)  # 2 layers, every projection
        assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert [m for m in model.modules() if isinstance(m, torch.nn.Dropout)] == before
    with pytest.raises(RuntimeError), fast_lora_dropout(model):
        raise RuntimeError("a run that fails")
    assert [m for m in model.modules() if isinstance(m, torch.nn.Dropout)] == before
    with fast_lora_dropout(model, enabled=False) as swapped:
        assert swapped == 0


def test_activation_recomputation_replays_the_fast_masks_so_gradients_are_exact(tiny_model_dir):
    """Checkpointed layers recompute their forward in the backward pass; a mask drawn anew there
    would silently give a wrong gradient. Same seed, with and without recomputation: same grads."""
    import torch

    ids = torch.randint(5, 200, (2, 24))
    grads = []
    for recompute in (False, True):
        model = _lora_model(tiny_model_dir, 0.3)
        model.train()
        if recompute:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        with fast_lora_dropout(model):
            torch.manual_seed(7)
            model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert any(float(g.abs().sum()) > 0 for g in grads[0].values())
