"""A hierarchical Mix-Transformer (MiT) encoder with an all-MLP decoder, after SegFormer.

Written for astroseg from the paper's description (Xie et al. 2021), not from the reference code.
Each stage downsamples with an overlapping patch embedding (stride 4, then 2), attends with keys
and values spatially reduced by `sr_ratio`, and mixes tokens with a 3x3 depthwise conv in the
feed-forward. The decoder projects every stage to `decoder_dim`, upsamples them to the first
stage's resolution (1/4 of the input by default, `first_stride`), fuses them and predicts logits that are upsampled to the input size. Any input whose sides
are multiples of the total stride (32 with four stages and first_stride 4) works.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from astroseg.models.layers import init_weights


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a random subset of samples while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


def _projection(dim: int, decoder_dim: int) -> nn.Conv2d:
    """A 1x1 conv without bias: the BatchNorm after it removes any. Besides doing nothing, a
    bias there drifts, as Adam turns its rounding-noise gradient into full-size steps."""
    conv = nn.Conv2d(dim, decoder_dim, 1)
    conv.bias = None   # drawn, then dropped: every other weight initialises as it always did
    return conv


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv, then LayerNorm over channels."""

    def __init__(self, in_dim: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


def _patchify(conv: nn.Conv2d, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`conv` (kernel = stride = r, no padding) of the (B, h*w, C) token map, as tokens.

    Computed as one matmul over the r x r patches: the same function as the conv, and on the
    CPU its backward is several times faster than oneDNN's for these few, large-kernel outputs.
    """
    B, N, C = tokens.shape
    r = conv.stride[0]
    if h % r or w % r:   # a map the patches do not tile: the conv drops the remainder
        return conv(tokens.transpose(1, 2).reshape(B, C, h, w)).flatten(2).transpose(1, 2)
    patches = tokens.reshape(B, h // r, r, w // r, r, C).permute(0, 1, 3, 5, 2, 4)
    return F.linear(patches.reshape(B, (h // r) * (w // r), C * r * r),
                    conv.weight.reshape(conv.out_channels, -1), conv.bias)


class EfficientAttention(nn.Module):
    """Self-attention whose keys/values come from the token map shrunk `sr_ratio` times per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio) if sr_ratio > 1 else None
        self.sr_norm = nn.LayerNorm(dim) if sr_ratio > 1 else None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, C = x.shape
        d = C // self.num_heads
        q = self.q(x).view(B, N, self.num_heads, d).transpose(1, 2)
        if self.sr is not None:
            x = self.sr_norm(_patchify(self.sr, x, h, w))
        k, v = self.kv(x).view(B, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)
        drop = self.attn_dropout if self.training else 0.0
        # Keys/values are few here (tens of tokens): CPU's flash kernel is ~3x slower than the
        # plain one for such shapes in the backward pass, but faster without one (1.3-1.6x a
        # 256x256 bf16 forward: FITS predict, evaluation), so the math kernel is for training.
        math = q.device.type == "cpu" and torch.is_grad_enabled()
        with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class MixFFN(nn.Module):
    """Linear -> 3x3 depthwise conv -> GELU -> Linear: the conv gives position without embeddings."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        B, N, C = x.shape
        x = self.dw(x.transpose(1, 2).reshape(B, C, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MiTBlock(nn.Module):
    """Pre-norm block: efficient attention and Mix-FFN, each a residual with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float,
                 drop_path: float, attn_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, num_heads, sr_ratio, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = MixFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.ffn(self.norm2(x), h, w))


class SegFormer(nn.Module):
    """MiT encoder + all-MLP decoder; logits at the input's size."""

    def __init__(self, image_size: tuple[int, int] | None = None, in_channels: int = 1,
                 num_classes: int = 1, dims: tuple[int, ...] = (32, 64, 160, 256),
                 depths: tuple[int, ...] = (2, 2, 2, 2), heads: tuple[int, ...] = (1, 2, 5, 8),
                 sr_ratios: tuple[int, ...] = (8, 4, 2, 1), mlp_ratio: float = 4.0,
                 decoder_dim: int = 256, drop_path: float = 0.1, attn_dropout: float = 0.0,
                 dropout: float = 0.1, first_stride: int = 4, refine_dim: int = 0):
        super().__init__()
        self.stride = first_stride * 2 ** (len(dims) - 1)
        # Any size that is a multiple of the stride works; the training size is only checked.
        if image_size is not None and any(s % self.stride for s in image_size):
            raise ValueError(f"image size {image_size[0]}x{image_size[1]} is not a multiple of "
                             f"the segformer's total stride {self.stride} "
                             "(first_stride x 2^(stages - 1))")
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.in_channels = in_channels   # bands: what predict checks inputs against
        in_dim = in_channels
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.embeds.append(PatchEmbed(in_dim, dim, 7 if i == 0 else 3,
                                          first_stride if i == 0 else 2))
            first = sum(depths[:i])
            self.stages.append(nn.ModuleList(
                MiTBlock(dim, heads[i], sr_ratios[i], mlp_ratio, rates[first + j], attn_dropout)
                for j in range(depth)))
            # The last stage's norm feeds only the decoder's projections and BatchNorm, which
            # removes any constant per channel: a bias there could not change the output.
            self.norms.append(nn.LayerNorm(dim, bias=i < len(dims) - 1))
            in_dim = dim
        # The all-MLP decoder projects each stage to decoder_dim, upsamples, concatenates and fuses
        # with a 1x1 conv. Projection and fusion are both linear, so each stage's share of the
        # fusion is folded into its projection: the same function, without the 4x-wide concat.
        self.project = nn.ModuleList(_projection(dim, decoder_dim) for dim in dims)
        self.fuse = nn.Sequential(nn.BatchNorm2d(decoder_dim), nn.ReLU(inplace=True),
                                  nn.Dropout2d(dropout))
        self.head = nn.Conv2d(decoder_dim, num_classes, 1)
        if refine_dim:
            # Pixel-precise edges: the image's first_stride^2 pixel blocks, as channels beside the
            # fused features, predict a sub-pixel correction of the upsampled logits. All of it
            # runs at the decoder's resolution, not at full resolution.
            s = first_stride
            self.unshuffle, self.shuffle = nn.PixelUnshuffle(s), nn.PixelShuffle(s)
            self.refine = nn.Sequential(
                nn.Conv2d(decoder_dim + in_channels * s * s, refine_dim, 3, padding=1), nn.GELU(),
                nn.Conv2d(refine_dim, num_classes * s * s, 1))
        else:
            self.refine = None
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, H and W multiples of `self.stride` -> (B, classes, H, W) logits."""
        H, W = x.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(f"input size {H}x{W} is not a multiple of the model stride {self.stride}")
        image = x
        features = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            x = norm(tokens).transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            features.append(x)
        size = features[0].shape[-2:]
        # Summed from the first projection, not from Python's 0: one full-size add fewer.
        fused = self.project[0](features[0])
        for p, f in zip(self.project[1:], features[1:]):
            fused = fused + F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
        fused = self.fuse(fused)
        out = F.interpolate(self.head(fused), size=(H, W), mode="bilinear", align_corners=False)
        if self.refine is None:
            return out
        # The image's blocks joined to the features in their dtype and layout (bf16 under
        # autocast, channels-last like the token maps): the conv would cast the joined tensor
        # anyway, and a mixed layout sent the backward pass down slow strided kernels.
        blocks = self.unshuffle(image).to(fused.dtype, memory_format=torch.channels_last)
        return out + self.shuffle(self.refine(torch.cat([fused, blocks], dim=1)))


def fold_decoder_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict from before the decoder lost its pre-BatchNorm biases, made loadable.

    The biases added a constant per channel to the BatchNorm's input; subtracting it from the
    running mean gives the same output in eval mode.
    """
    if "project.0.bias" not in state:
        return state
    state = dict(state)
    n = sum(1 for k in state if k.startswith("project.") and k.endswith(".weight"))
    shift = sum(state.pop(f"project.{i}.bias") for i in range(n))
    last = f"norms.{n - 1}.bias"
    if last in state:
        shift = shift + state[f"project.{n - 1}.weight"].flatten(1) @ state.pop(last)
    state["fuse.0.running_mean"] = state["fuse.0.running_mean"] - shift
    return state
