import copy

import pytest
import torch
import torch.nn.functional as F

from sweeper import convs
from sweeper.model import PreActBlock, PreActResNet, count_parameters, use_forward_weight_grads


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
        # parameters() lists a shared tensor once: count every module's own references
        every = [p for _, p in model.named_parameters(remove_duplicate=False)]
        assert len({id(p) for p in every}) == len(every)


def test_stride_and_projection_at_the_start_of_stages_2_to_4():
    model = PreActResNet([2, 2, 2, 2], width=8)
    firsts = [stage[0] for stage in model.stages]
    assert firsts[0].projection is None
    for block in firsts[1:]:
        assert block.conv1.stride == (2, 2) and block.projection.kernel_size == (1, 1)
    assert all(stage[1].projection is None for stage in model.stages)


@pytest.mark.parametrize("in_ch", [4, 16])  # subsampled by slicing below 16 channels
def test_projection_is_the_papers_strided_1x1_conv(in_ch):
    block = PreActBlock(in_ch, 2 * in_ch, stride=2).double()
    x = torch.randn(2, in_ch, 32, 32, dtype=torch.double)
    pre = F.relu(block.bn1(x))
    expected = F.conv2d(pre, block.projection.weight, stride=2)
    expected = expected + block.conv2(F.relu(block.bn2(block.conv1(pre))))
    assert torch.allclose(block(x), expected)


@pytest.mark.parametrize("width", [2, 4, 8, 16])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("forward_weight_grads", [0, convs.SMALL_MAP])
def test_gradients_match_float64_at_small_widths(width, channels_last, forward_weight_grads):
    """Fewer input channels than oneDNN's SIMD block (8 with AVX2, 16 with AVX-512) once gave
    wrong projection gradients (errors of 50x) or a segfault with channels_last. The weight
    gradients computed as forward convolutions must match too."""
    torch.manual_seed(1)
    model = PreActResNet([1, 2, 2, 2], width)
    reference = copy.deepcopy(model).double()
    use_forward_weight_grads(model, forward_weight_grads)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(reference(x.double()), y).backward()
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        error = (p.grad.double() - ref.grad).abs().max() / ref.grad.abs().max()
        assert error < 1e-3, f"{name}: relative error {error:.1e}"


def test_forward_weight_grads_are_used_for_the_small_maps_only(monkeypatch):
    """Stride-1 3x3 convs on maps of at most the pixels set (8x8 and 4x4, or 4x4 only: the last
    stages of a 32x32 input) while training; never the stem, the first two stages, a strided
    conv, or a forward without grad."""
    calls = []
    original = convs.weight_grad
    monkeypatch.setattr(convs, "weight_grad", lambda x, gy: calls.append(x.shape) or original(x, gy))
    model = PreActResNet([2, 2, 2, 2], width=4)
    assert use_forward_weight_grads(model, convs.SMALL_MAP) == 17  # the stem and two per block
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    # stage 3: the first block's second conv and both of the second's; the same in stage 4
    assert calls == [(2, 32, 4, 4)] * 3 + [(2, 16, 8, 8)] * 3
    calls.clear()
    use_forward_weight_grads(model, convs.TINY_MAP)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert calls == [(2, 32, 4, 4)] * 3
    calls.clear()
    use_forward_weight_grads(model, 0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert calls == []


def test_forward_weight_grads_under_autocast_match_the_library():
    """Under bf16 autocast the convolution runs in bf16, as autocast runs the library's, and each
    gradient lands in its parameter's dtype within bf16's rounding of the library's."""
    torch.manual_seed(0)
    model = PreActResNet([1, 1, 1, 2], width=8).to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    use_forward_weight_grads(model, convs.TINY_MAP)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    for net in (model, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = net(x)
        assert logits.dtype == torch.bfloat16
        F.cross_entropy(logits.float(), y).backward()
    conv = model.stages[3][1].conv1.weight  # on a 4x4 map: its weight gradient went the new way
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32
        error = (p.grad - ref.grad).abs().max() / ref.grad.abs().max()
        assert error < 0.02, f"{name}: relative error {error:.1e}"
    assert conv.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [4, 7, 8])  # the kernel is the whole map, of any size
def test_weight_grad_as_forward_conv_equals_the_library(size):
    torch.manual_seed(0)
    x = torch.randn(5, 6, size, size, dtype=torch.double, requires_grad=True)
    w = torch.randn(3, 6, 3, 3, dtype=torch.double, requires_grad=True)
    gy = torch.randn(5, 3, size, size, dtype=torch.double)
    F.conv2d(x, w, padding=1).backward(gy)
    expected = w.grad.clone(), x.grad.clone()
    x.grad = w.grad = None
    out = convs.conv3x3(x, w)
    assert torch.allclose(out, F.conv2d(x, w, padding=1))
    out.backward(gy)
    assert torch.allclose(w.grad, expected[0]) and torch.allclose(x.grad, expected[1])


@pytest.mark.parametrize("capability, isa_cap, amx, amp, device, expected", [
    ("AVX2", None, False, None, "cpu", convs.SMALL_MAP),
    ("AVX512", None, False, None, "cpu", 0),  # oneDNN's AVX-512 weight gradients win at every shape
    ("AVX512", "avx2", False, None, "cpu", convs.SMALL_MAP),  # oneDNN held to AVX2
    ("AVX512", "AVX512_CORE", False, None, "cpu", 0),
    ("AVX512", None, True, None, "cpu", 0),  # AMX, fp32: oneDNN's win
    ("AVX512", None, True, torch.bfloat16, "cpu", convs.TINY_MAP),  # AMX, bf16: 4x4 maps
    ("AVX512", "AVX512_CORE_BF16", True, torch.bfloat16, "cpu", 0),  # oneDNN held below AMX
    ("AVX512", None, False, torch.bfloat16, "cpu", 0),  # avx512_bf16 without AMX: 2 % or less
    ("AVX2", None, False, torch.bfloat16, "cpu", 0),
    ("AVX512", None, True, torch.float16, "cpu", 0),
    ("AVX2", None, False, None, "cuda", 0),
])
def test_forward_weight_grads_where_measured_faster(monkeypatch, capability, isa_cap, amx, amp,
                                                    device, expected):
    from tests.conftest import fake_amx

    fake_amx(monkeypatch, amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    if isa_cap is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    assert convs.forward_weight_grad_pixels(torch.device(device), amp) == expected
