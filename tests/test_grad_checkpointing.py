"""timm's set_grad_checkpointing on the three DART model families: the same loss and gradients,
with each block's activations recomputed in the backward pass."""

from __future__ import annotations

import pytest
import torch
from tiny_dart_models import TINY_DART_MODELS, tiny_dart_model


def first_block(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward a checkpointed step runs twice: a ViT block, or a Mamba mixer."""
    return model.blocks[0] if hasattr(model, "blocks") else model.layers[0].mixer


def step(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Loss, gradients and how often the first block ran in one forward + backward (drop path
    drawn from the same seed each time)."""
    torch.manual_seed(1)
    calls = []
    handle = first_block(model).register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        loss = model(inputs).logsumexp(-1).sum()
        loss.backward()
    finally:
        handle.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(calls)


def seeded_forward(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(2)
    return model(inputs)


@pytest.mark.parametrize("name", sorted(TINY_DART_MODELS))
def test_checkpointing_recomputes_the_blocks_and_changes_no_number(name):
    plain, inputs = tiny_dart_model(name)
    checkpointed, _ = tiny_dart_model(name)
    checkpointed.set_grad_checkpointing(True)
    loss, grads, runs = step(plain, inputs)
    loss_c, grads_c, runs_c = step(checkpointed, inputs)
    assert (runs, runs_c) == (1, 2)  # kept activations vs. recomputed in the backward pass
    torch.testing.assert_close(loss_c, loss, rtol=0, atol=0)
    assert grads_c.keys() == grads.keys() and len(grads) > 3
    for key, grad in grads.items():
        torch.testing.assert_close(grads_c[key], grad, rtol=1e-6, atol=1e-7, msg=key)
    with torch.no_grad():  # nothing to recompute without gradients
        assert torch.equal(seeded_forward(checkpointed, inputs), seeded_forward(plain, inputs))
    checkpointed.set_grad_checkpointing(False)
    assert step(checkpointed, inputs)[2] == 1
