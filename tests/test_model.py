import pytest
import torch

from sweeper.model import PreActResNet, count_parameters


@pytest.mark.parametrize("size", [32, 28])
def test_output_shape_and_finite(size):
    model = PreActResNet([1, 1, 1, 1], width=8)
    out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_every_parameter_gets_a_gradient():
    model = PreActResNet([2, 1, 1, 2], width=8)
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


@pytest.mark.parametrize("blocks, millions", [([2, 2, 2, 2], 11.17), ([4, 5, 6, 3], 21.65)])
def test_parameter_counts_of_the_paper_models(blocks, millions):
    assert round(count_parameters(PreActResNet(blocks, width=64)) / 1e6, 2) == millions


def test_every_block_has_its_own_weights():
    """The seed reused one module per stage: adding a block added nothing. Each block must add weights."""
    base = count_parameters(PreActResNet([1, 1, 1, 1], width=8))
    for stage in range(4):
        blocks = [1, 1, 1, 1]
        blocks[stage] = 3
        model = PreActResNet(blocks, width=8)
        width = 8 * 2 ** stage
        block = 2 * (9 * width * width) + 4 * width  # two 3x3 convs and two BNs
        assert count_parameters(model) == base + 2 * block
        ids = {id(p) for p in model.parameters()}
        assert len(ids) == len(list(model.parameters()))


def test_stride_and_projection_at_the_start_of_stages_2_to_4():
    model = PreActResNet([2, 2, 2, 2], width=8)
    firsts = [stage[0] for stage in model.stages]
    assert firsts[0].projection is None
    for block in firsts[1:]:
        assert block.conv1.stride == (2, 2) and block.projection.kernel_size == (1, 1)
    assert all(stage[1].projection is None for stage in model.stages)
