"""timm's set_grad_checkpointing on the three DART model families: the same loss and gradients,
with each block's activations recomputed in the backward pass (drop path included: the
recomputation replays the same random draws)."""

from __future__ import annotations

import pytest
import torch
from tiny_dart_models import TINY_DART_MODELS, tiny_dart_model


def first_block(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward a checkpointed step runs twice: a ViT block, or a Mamba mixer."""
    return model.blocks[0] if hasattr(model, "blocks") else model.layers[0].mixer


def step(model: torch.nn.Module, run) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, gradients and how often the first block ran in one forward (``run(model)``) +
    backward, drop path drawn from the same seed each time."""
    torch.manual_seed(1)
    calls = []
    handle = first_block(model).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        loss = run(model).logsumexp(-1).sum()
        loss.backward()
    finally:
        handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


def assert_same_step(plain, checkpointed, run):
    loss, grads, runs = step(plain, run)
    loss_c, grads_c, runs_c = step(checkpointed, run)
    assert (runs, runs_c) == (1, 2)  # kept activations vs. recomputed in the backward pass
    torch.testing.assert_close(loss_c, loss, rtol=0, atol=0)
    assert grads_c.keys() == grads.keys() and len(grads) > 3
    for key, grad in grads.items():
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", sorted(TINY_DART_MODELS))
def test_checkpointing_recomputes_the_blocks_and_changes_no_number(name):
    plain, inputs = tiny_dart_model(name, drop_path_rate=0.5, depth=3)
    checkpointed, _ = tiny_dart_model(name, drop_path_rate=0.5, depth=3)
    checkpointed.set_grad_checkpointing(True)
    torch.manual_seed(1)
    assert not torch.equal(plain(inputs), plain(inputs))  # drop path draws differ from call to call
    assert_same_step(plain, checkpointed, lambda model: model(inputs))
    with torch.inference_mode():  # nothing to recompute: a plain forward
        torch.manual_seed(2)
        want = plain(inputs)
        torch.manual_seed(2)
        assert torch.equal(checkpointed(inputs), want)
    checkpointed.set_grad_checkpointing(False)
    assert step(checkpointed, lambda model: model(inputs))[2] == 1


def test_checkpointed_vit_blocks_keep_the_attention_mask():
    plain, inputs = tiny_dart_model("deit_tiny_dart_patch16_448", drop_path_rate=0.5, depth=3)
    checkpointed, _ = tiny_dart_model("deit_tiny_dart_patch16_448", drop_path_rate=0.5, depth=3)
    checkpointed.set_grad_checkpointing(True)
    length = plain.num_prefix_tokens + plain.patch_embed.num_tokens
    mask = torch.ones(length, length, dtype=torch.bool).tril()  # causal: differs from no mask

    def masked(model):
        return model.forward_head(model.forward_features(inputs, attn_mask=mask))

    assert_same_step(plain, checkpointed, masked)
    torch.manual_seed(1)
    unmasked = plain.forward_head(plain.forward_features(inputs))
    torch.manual_seed(1)
    assert not torch.allclose(masked(plain), unmasked)
