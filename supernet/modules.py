"""Elastic layers: weights sized for the largest choice, run on a slice chosen per call.

Channels are always "first c kept" and kernels are a centre crop of the largest kernel, by default
without OFA's learned transform matrices (``transform_kernels`` adds them). The active sizes are
arguments of ``forward`` (input channels are read from the input itself), never module or class state, so
the same module serves any number of subnets and stays an ordinary ``nn.Module``.

Cost: a slice is a view of the shared parameter, taken once per forward; a full-size choice
uses the parameter itself, so the largest subnet runs exactly the ops of a static network.

Module and parameter names mirror ``supernet.static`` (``conv.weight``, ``bn.running_mean``,
``reduce.bias``...), so extraction is "crop every tensor of the elastic module to the shape of
the same-named tensor of the static module" (``load_cropped``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_fn

from supernet.space import BlockSpec
from supernet.static import ACT_NAMES

ActFn = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def act_fn(name: str | None) -> ActFn:
    return _identity if name is None else get_act_fn(ACT_NAMES[name])


def centre_crop(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    start = (weight.shape[-1] - kernel_size) // 2
    return weight[..., start:start + kernel_size, start:start + kernel_size]


class DynamicConv2d(nn.Module):
    """Dense conv: first ``in`` / ``out`` channels, centre-cropped kernel, 'same' padding."""

    def __init__(self, max_in: int, max_out: int, kernel_size: int = 1, stride: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.max_in, self.max_out, self.kernel_size, self.stride = max_in, max_out, kernel_size, stride
        self.weight = nn.Parameter(torch.empty(max_out, max_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, out_channels: int, kernel_size: int | None = None) -> torch.Tensor:
        w, b = self.weight, self.bias
        in_channels = x.shape[1]
        if out_channels != self.max_out or in_channels != self.max_in:
            w = w[:out_channels, :in_channels]
            b = None if b is None else b[:out_channels]
        k = self.kernel_size if kernel_size is None else kernel_size
        if k != self.kernel_size:
            w = centre_crop(w, k)
        return F.conv2d(x, w, b, self.stride, k // 2)


class DynamicDepthwiseConv2d(nn.Module):
    """Depthwise conv on the first ``x.shape[1]`` channels with a centre-cropped kernel.

    ``transform_kernels`` (OFA's elastic kernel): each smaller kernel size listed is the centre of
    the next larger one passed through a learned (k*k, k*k) matrix shared by all channels and
    started at the identity, so small-kernel subnets need not use exactly the centre weights the
    large-kernel ones use. Without it a small kernel is the raw centre crop.
    """

    def __init__(self, max_channels: int, kernel_size: int, stride: int = 1,
                 transform_kernels: Sequence[int] = ()) -> None:
        super().__init__()
        self.max_in = self.max_out = max_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.weight = nn.Parameter(torch.empty(max_channels, 1, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.transform_sizes = tuple(sorted({k for k in transform_kernels if k < kernel_size}, reverse=True))
        for k in self.transform_sizes:
            self.register_parameter(f"transform_{k}", nn.Parameter(torch.eye(k * k)))

    def kernel(self, channels: int, kernel_size: int) -> torch.Tensor:
        """The (channels, 1, k, k) kernel a subnet with these sizes runs (and a static copy holds)."""
        w = self.weight if channels == self.max_out else self.weight[:channels]
        if kernel_size == self.kernel_size:
            return w
        if not self.transform_sizes:
            return centre_crop(w, kernel_size)
        if kernel_size not in self.transform_sizes:
            raise ValueError(f"kernel {kernel_size} has no transform here (sizes {self.transform_sizes})")
        for k in self.transform_sizes:
            if k < kernel_size:
                break
            flat = centre_crop(w, k).reshape(channels, k * k) @ getattr(self, f"transform_{k}")
            w = flat.reshape(channels, 1, k, k)
        return w

    def forward(self, x: torch.Tensor, out_channels: int, kernel_size: int | None = None) -> torch.Tensor:
        c = x.shape[1]
        if out_channels != c:
            raise ValueError(f"depthwise conv keeps its channels: got {c} in, {out_channels} out")
        k = self.kernel_size if kernel_size is None else kernel_size
        return F.conv2d(x, self.kernel(c, k), None, self.stride, k // 2, 1, c)


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm on the first ``x.shape[1]`` channels of its affine parameters and running stats.

    The running stats are passed as views, so training-mode updates (including the cumulative
    average of ``momentum=None`` used by BN recalibration) land in the shared buffers' slice.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean[:c] if track and self.running_mean is not None else None,
            self.running_var[:c] if track and self.running_var is not None else None,
            None if self.weight is None else self.weight[:c],
            None if self.bias is None else self.bias[:c],
            use_batch_stats, factor, self.eps)


class DynamicLinear(nn.Module):
    """Linear layer on the first ``x.shape[-1]`` inputs (and optionally first outputs)."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__()
        self.max_in, self.max_out = max_in, max_out
        self.weight = nn.Parameter(torch.empty(max_out, max_in))
        self.bias = nn.Parameter(torch.zeros(max_out))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        out = self.max_out if out_features is None else out_features
        w, b = self.weight, self.bias
        if x.shape[-1] != self.max_in or out != self.max_out:
            w, b = w[:out, :x.shape[-1]], b[:out]
        return F.linear(x, w, b)


class ElasticConvBnAct(nn.Module):
    def __init__(self, conv: DynamicConv2d | DynamicDepthwiseConv2d, act: str | None) -> None:
        super().__init__()
        self.conv = conv
        self.bn = DynamicBatchNorm2d(conv.max_out)
        self.act = act_fn(act)

    def forward(self, x: torch.Tensor, out_channels: int, kernel_size: int | None = None) -> torch.Tensor:
        return self.act(self.bn(self.conv(x, out_channels, kernel_size)))


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-excite on the first channels; the bottleneck width follows the active channels."""

    def __init__(self, max_channels: int, max_se_channels: int) -> None:
        super().__init__()
        self.reduce = DynamicConv2d(max_channels, max_se_channels, 1, bias=True)
        self.expand = DynamicConv2d(max_se_channels, max_channels, 1, bias=True)

    def forward(self, x: torch.Tensor, se_channels: int) -> torch.Tensor:
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True), se_channels))
        return x * F.hardsigmoid(self.expand(s, x.shape[1]))


class ElasticMBConv(nn.Module):
    """Inverted-residual block with elastic kernel, expand ratio and in / out channels.

    Whether the expand conv runs, the kernel, every channel count and the residual come from the
    ``BlockSpec`` computed by ``SearchSpace.block_specs`` for the active arch.
    """

    def __init__(self, max_in: int, max_mid: int, max_out: int, max_se: int, max_kernel: int, stride: int,
                 has_expand: bool, act: str, transform_kernels: Sequence[int] = ()) -> None:
        super().__init__()
        self.expand = ElasticConvBnAct(DynamicConv2d(max_in, max_mid, 1), act) if has_expand else None
        self.dw = ElasticConvBnAct(DynamicDepthwiseConv2d(max_mid, max_kernel, stride, transform_kernels), act)
        self.se = DynamicSqueezeExcite(max_mid, max_se) if max_se else None
        self.project = ElasticConvBnAct(DynamicConv2d(max_mid, max_out, 1), None)

    def forward(self, x: torch.Tensor, spec: BlockSpec) -> torch.Tensor:
        h = x
        if spec.expand:
            h = self.expand(h, spec.mid_channels)
        h = self.dw(h, spec.mid_channels, spec.kernel)
        if spec.se_channels:
            h = self.se(h, spec.se_channels)
        h = self.project(h, spec.out_channels)
        return h + x if spec.residual else h


class ElasticFinalClassifier(nn.Module):
    """Elastic 1x1 expand (``final_width``) -> BN -> act -> pool -> dropout -> linear."""

    def __init__(self, max_in: int, max_width: int, num_classes: int, act: str) -> None:
        super().__init__()
        self.conv = ElasticConvBnAct(DynamicConv2d(max_in, max_width, 1), act)
        self.classifier = DynamicLinear(max_width, num_classes)

    def forward(self, x: torch.Tensor, width: int, dropout: float = 0.0) -> torch.Tensor:
        x = self.conv(x, width).mean((2, 3))
        if dropout > 0.0:
            x = F.dropout(x, dropout, self.training)
        return self.classifier(x)


def crop_to(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The part of a shared tensor an active layer uses: first entries along the channel dims
    (0 and 1), centre crop along the kernel dims (2 and 3)."""
    if t.shape == shape:
        return t
    if t.dim() != len(shape) or any(w > h for h, w in zip(t.shape, shape)):
        raise ValueError(f"cannot crop a tensor of shape {tuple(t.shape)} to {tuple(shape)}")
    index = tuple(slice(0, w) if d < 2 else slice((h - w) // 2, (h - w) // 2 + w)
                  for d, (h, w) in enumerate(zip(t.shape, shape)))
    return t[index]


@torch.no_grad()
def load_cropped(dst: nn.Module, src: nn.Module) -> None:
    """Copy into static ``dst`` the slices of elastic ``src`` that its tensors correspond to
    (a transformed depthwise kernel is copied as the subnet runs it)."""
    src_state = src.state_dict()
    dst_state = dst.state_dict()
    missing = [k for k in dst_state if k not in src_state]
    if missing:
        raise KeyError(f"{type(src).__name__} has no tensors {missing} needed by {type(dst).__name__}")
    for name, m in src.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(m, DynamicDepthwiseConv2d) and m.transform_sizes and key in dst_state:
            shape = dst_state[key].shape
            src_state[key] = m.kernel(shape[0], shape[-1])
    dst.load_state_dict({k: crop_to(src_state[k], v.shape) for k, v in dst_state.items()})
