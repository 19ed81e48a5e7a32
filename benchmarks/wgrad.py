"""Weight gradients of the model's stride-1 3x3 convolutions, computed five ways, timed side by side.

Usage: python benchmarks/wgrad.py [WIDTH] [fp32|bf16]   (defaults: 64 fp32; batch 128, channels_last)

For each stage's shape (WIDTH x 32x32, 2*WIDTH x 16x16, 4*WIDTH x 8x8, 8*WIDTH x 4x4) it times,
fastest of three calls each: oneDNN's weight gradient (what autograd runs), im2col and one matrix
product per image or per 4 images, nine matrix products over a zero-padded layout (a row offset per
kernel tap), and the weight gradient as a forward convolution with the batch as channels. It prints
milliseconds, GFLOP/s and each result's largest difference from oneDNN's (relative to its largest
entry). To see what an AVX2-only CPU would run on a newer one, restrict the libraries' kernels:
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2.
"""

import sys
import time

import torch
import torch.nn.functional as F

BATCH = 128


def onednn(x, gy):
    w = torch.empty(gy.shape[1], x.shape[1], 3, 3, dtype=x.dtype).to(memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0],
                                               1, [False, True, False])[1]


def im2col(chunk):
    def weight_grad(x, gy):
        n, c, h, w = x.shape
        xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # NHWC
        g = gy.permute(0, 2, 3, 1)
        out = torch.zeros(gy.shape[1], 9 * c)
        s = xp.stride()
        for i in range(0, n, chunk):
            k = min(chunk, n - i)
            cols = xp.as_strided((k, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]),
                                 xp.storage_offset() + i * s[0]).reshape(k * h * w, 9 * c)
            out.add_(g[i:i + k].reshape(k * h * w, -1).t() @ cols)
        return out.view(-1, 3, 3, c).permute(0, 3, 1, 2)
    return weight_grad


def shifted(x, gy, chunk=4):
    n, c, h, w = x.shape
    o = gy.shape[1]
    xp = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    gp = F.pad(gy, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()  # zero outside the image
    out = torch.zeros(3, 3, o, c)
    rows = chunk * (h + 2) * (w + 2)
    edge = w + 3  # the padded rows' first interior pixel
    for i in range(0, n, chunk):
        xf, gf = xp[i:i + chunk].reshape(-1, c), gp[i:i + chunk].reshape(-1, o)
        for kh in range(3):
            for kw in range(3):
                off = (kh - 1) * (w + 2) + (kw - 1)
                out[kh, kw].add_(gf[edge:rows - edge].t() @ xf[edge + off:rows - edge + off])
    return out.permute(2, 3, 0, 1)


def as_forward(x, gy):
    return F.conv2d(x.transpose(0, 1), gy.transpose(0, 1), padding=1).transpose(0, 1)


METHODS = {"oneDNN": onednn, "im2col/1": im2col(1), "im2col/4": im2col(4), "shifted/4": shifted,
           "as forward": as_forward}


def main():
    width = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    dtype = torch.bfloat16 if len(sys.argv) > 2 and sys.argv[2] == "bf16" else torch.float32
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads, batch {BATCH}, {str(dtype)[6:]}")
    for c, h in [(width, 32), (2 * width, 16), (4 * width, 8), (8 * width, 4)]:
        x, gy = (torch.randn(BATCH, c, h, h, dtype=dtype).to(memory_format=torch.channels_last)
                 for _ in range(2))
        ref = onednn(x, gy).float()
        flops = 2 * BATCH * h * h * c * c * 9
        cells = []
        for name, fn in METHODS.items():
            err = ((fn(x, gy).float() - ref).abs().max() / ref.abs().max()).item()
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(x, gy)
                times.append(time.perf_counter() - t)
            cells.append(f"{name} {min(times) * 1e3:.1f} ms {flops / min(times) / 1e9:.0f} GF/s "
                         f"(err {err:.0e})")
        print(f"{c} x {h}x{h}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
