"""INT8 inference modules: ``Int8Linear``, ``Int8Conv2d`` and ``Int8Conv1d``.

Each holds its weights packed in a TorchScript custom class (``torch.classes.torchqat.
PackedLinear`` / ``PackedConv2d``: int8 weights, per-channel scales, bias, folded BatchNorm),
the input quantizer's scale and zero point (buffers) and its integer range, and the activation
fused into the epilogue. The forward is one call of ``torch.ops.torchqat.int8_linear`` /
``int8_conv2d``::

    q_x  = clamp(round_half_even(x * (1/s_x)) + z_x, quant_min, quant_max)   # fake_quantize's q
    acc  = sum (q_x - z_x) * q_w                                              # int32, exact
    y    = act((acc * (s_x * s_w[c]) + bias[c]) * out_multiplier[c] + out_shift[c])

which is the QAT layer ``act(bn(conv(fq(x), fq(W)) + b))`` in eval mode up to float rounding of
the epilogue (``docs/convert.md``). Build them with ``from_qat`` or, for a whole model, with
:func:`torchqat.convert`. They script (``torch.jit.script``), save and load; the saved packed
weights re-pack for the loading machine.
"""

import functools
from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .. import _ops  # noqa: F401  (loads the operator library)
from ..quantizers import FakeQuantizer
from .conv import QuantConv1d, QuantConv2d
from .linear import QuantLinear

__all__ = ["Int8Linear", "Int8Conv2d", "Int8Conv1d", "ACTIVATIONS", "unsupported_reason"]

#: Activations the INT8 epilogue can apply.
ACTIVATIONS = ("none", "relu", "silu")

_BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)


def _dtype_name(dtype: torch.dtype) -> str:
    # str(dtype) is an integer code inside TorchScript; spell out the common ones.
    if dtype == torch.float64:
        return "torch.float64"
    if dtype == torch.float32:
        return "torch.float32"
    if dtype == torch.float16:
        return "torch.float16"
    if dtype == torch.bfloat16:
        return "torch.bfloat16"
    if dtype == torch.uint8:
        return "torch.uint8"
    if dtype == torch.int8:
        return "torch.int8"
    if dtype == torch.int32:
        return "torch.int32"
    if dtype == torch.int64:
        return "torch.int64"
    if dtype == torch.bool:
        return "torch.bool"
    return "dtype code " + str(dtype)


@functools.lru_cache(maxsize=None)
def _direct_op(name: str):
    """The compiled entry of ``torch.ops.torchqat.<name>.default`` (what its Python ``__call__``
    ends in), or the overload itself if this torch has no such attribute."""
    overload = getattr(torch.ops.torchqat, name).default
    return getattr(overload, "_op", overload)


def _is_float_input(input: torch.Tensor) -> bool:
    return (input.dtype == torch.float32 or input.dtype == torch.float16
            or input.dtype == torch.bfloat16)


def _float_input_message(input: torch.Tensor) -> str:
    return ": input must be float32, float16 or bfloat16, got " + _dtype_name(input.dtype)


# -- what can be converted ----------------------------------------------------------------------


def _quantizer_reason(q: nn.Module, role: str, weight_dim: int) -> Optional[str]:
    """Why quantizer ``q`` (of a QAT layer) cannot feed an INT8 kernel, or None."""
    if not isinstance(q, FakeQuantizer):
        return f"its {role} is not quantized ({role} spec None)"
    if q.mode != "fake_quantize":
        return f"its {role} quantizer is in mode {q.mode!r}, not 'fake_quantize'"
    spec = q.spec
    if spec.bits > 8:
        return f"its {role} spec has {spec.bits} bits; the INT8 kernels take at most 8"
    if role == "weight":
        if not spec.symmetric:
            return "its weight spec is affine; the INT8 kernels need symmetric int8 weights"
        if spec.per_channel and q.axis not in (0, -weight_dim):
            return (f"its weight is quantized per channel along axis {q.axis}; the INT8 kernels "
                    "need the output-channel axis 0")
        if bool((q.effective_zero_point() != 0).any()):
            return "its weight zero point is not 0"
    else:
        if spec.per_channel:
            return "its input is quantized per channel; the INT8 kernels quantize per tensor"
    return None


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why the QAT layer ``module`` cannot become an INT8 module (None when it can). Used by
    :func:`torchqat.convert` to log what it keeps as a fake-quant layer."""
    if isinstance(module, QuantLinear):
        pass
    elif isinstance(module, (QuantConv1d, QuantConv2d)):
        if not hasattr(torch.ops.torchqat, "int8_conv2d"):
            return "this build of torchqat has no int8_conv2d operator"
        if module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r}; the INT8 kernels pad with zeros only"
        if _conv_padding(module) is None:
            return ("padding='same' needs asymmetric padding here (even dilation * "
                    "(kernel_size - 1)); the INT8 kernels pad symmetrically")
    else:
        return f"{type(module).__name__} has no INT8 kernel"
    for q, role in ((module.weight_quantizer, "weight"), (module.input_quantizer, "input")):
        reason = _quantizer_reason(q, role, module.weight.dim())
        if reason is not None:
            return reason
    return None


def _conv_padding(module: nn.Module) -> Optional[List[int]]:
    """The symmetric padding of a QAT convolution, or None when 'same' padding is asymmetric."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return [0] * len(module.kernel_size)
        out = []
        for d, k in zip(module.dilation, module.kernel_size):
            total = d * (k - 1)
            if total % 2:
                return None
            out.append(total // 2)
        return out
    return list(padding)


# -- shared construction ------------------------------------------------------------------------


def _activation_name(activation: Union[str, nn.Module, None]) -> str:
    if activation is None:
        return "none"
    if isinstance(activation, nn.ReLU):
        return "relu"
    if isinstance(activation, nn.SiLU):
        return "silu"
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return activation
    raise ValueError(f"activation must be one of {ACTIVATIONS}, None, nn.ReLU or nn.SiLU, got "
                     f"{activation!r}")


@torch.no_grad()
def _fold_batch_norm(bn: nn.Module, out_channels: int, where: str
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out_multiplier, out_shift)`` of BatchNorm ``bn`` in eval mode:
    ``bn(y) = y * m + (beta - mean * m)`` with ``m = gamma / sqrt(var + eps)``, computed in
    float64 and rounded once to float32."""
    if not isinstance(bn, _BatchNorm):
        raise ValueError(f"{where}: bn must be an nn.BatchNorm1d or nn.BatchNorm2d, got "
                         f"{type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{where}: bn has no running statistics (track_running_stats=False) "
                         "and normalises with batch statistics; it cannot be folded")
    if bn.num_features != out_channels:
        raise ValueError(f"{where}: bn has {bn.num_features} features, the layer "
                         f"{out_channels} output channels")
    var = bn.running_var.detach().cpu().double()
    mean = bn.running_mean.detach().cpu().double()
    gamma = bn.weight.detach().cpu().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().cpu().double() if bn.bias is not None else torch.zeros_like(var)
    mult = gamma / torch.sqrt(var + bn.eps)
    shift = beta - mean * mult
    return mult.float(), shift.float()


@torch.no_grad()
def _quantized_weight(qat: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """The int8 weight (``torchqat.int8.quantize``: fake_quantize's own rounding, so that
    ``q_w * s_w == fq(W)`` bit for bit) and the float32 per-output-channel scales."""
    reason = unsupported_reason(qat)
    if reason is not None:
        raise ValueError(f"{where}: cannot convert {type(qat).__name__}: {reason}")
    wq: FakeQuantizer = qat.weight_quantizer
    if not wq.is_calibrated and not bool(wq.calibrated.item()):
        raise ValueError(f"{where}: the weight quantizer was never calibrated")
    weight = qat.weight_to_quantize().detach().cpu()
    scale = wq.effective_scale().cpu().float()
    zero_point = wq.effective_zero_point().cpu()
    axis = wq.axis
    q = torch.ops.torchqat.quantize(weight, scale, zero_point, wq.quant_min, wq.quant_max, axis)
    if q.dtype != torch.int8:
        raise ValueError(f"{where}: weight range [{wq.quant_min}, {wq.quant_max}] does not fit "
                         "int8")
    out_channels = weight.size(0)
    if scale.numel() == 1:
        scale = scale.expand(out_channels)
    return q.contiguous(), scale.contiguous()


def _input_qparams(qat: nn.Module, where: str) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    iq: FakeQuantizer = qat.input_quantizer
    if not iq.is_calibrated and not bool(iq.calibrated.item()):
        raise ValueError(f"{where}: the input quantizer was never calibrated; run "
                         "torchqat.calibrate(model, batches) first")
    scale = iq.effective_scale().cpu().float().reshape(1).clone()
    zero_point = iq.effective_zero_point().cpu().reshape(1).clone()
    return scale, zero_point, int(iq.quant_min), int(iq.quant_max)


def _bias_of(qat: nn.Module) -> Optional[torch.Tensor]:
    return None if qat.bias is None else qat.bias.detach().cpu().float()


def _scale_range(t: torch.Tensor) -> str:
    return f"[{t.min().item():.4g}, {t.max().item():.4g}]"


def _describe(packed: torch.ScriptObject, input_scale: torch.Tensor,
              input_zero_point: torch.Tensor, quant_min: int, quant_max: int, activation: str,
              source: List[str]) -> List[str]:
    in_dtype = "uint8" if quant_min >= 0 else "int8"
    parts = [
        f"input={in_dtype}[{quant_min}, {quant_max}] scale={input_scale.item():.4g} "
        f"zero_point={int(input_zero_point.item())}",
        f"weight=int8 scale={_scale_range(packed.weight_scale())}",
        f"bias={packed.bias() is not None}",
        f"folded_bn={packed.out_multiplier() is not None}",
        f"activation={activation}",
        f"kernel={packed.kernel_for_input(quant_min, quant_max)}",
    ]
    if source:
        parts.append("from=" + " + ".join(source))
    return parts


class _Int8Base(nn.Module):
    """What the INT8 modules share: buffers, attributes, checks of the activation."""

    quant_min: int
    quant_max: int
    activation: str
    name: str
    source: List[str]

    def _init_common(self, input_scale: torch.Tensor, input_zero_point: torch.Tensor,
                     quant_min: int, quant_max: int, activation: str, name: str,
                     source: Optional[List[str]]) -> None:
        where = type(self).__name__
        if activation not in ACTIVATIONS:
            raise ValueError(f"{where}: activation must be one of {ACTIVATIONS}, got "
                             f"{activation!r}")
        if input_scale.numel() != 1 or input_zero_point.numel() != 1:
            raise ValueError(f"{where}: input_scale and input_zero_point must have one element "
                             f"each (per-tensor), got shapes {tuple(input_scale.shape)} and "
                             f"{tuple(input_zero_point.shape)}")
        self.register_buffer("input_scale", input_scale.detach().float().reshape(1).clone())
        self.register_buffer("input_zero_point",
                             input_zero_point.detach().to(torch.int32).reshape(1).clone())
        self.quant_min = int(quant_min)
        self.quant_max = int(quant_max)
        self.activation = activation
        self.name = name
        self.source = list(source) if source else []

    def _call_op(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(self._type_name() + "._call_op")

    @torch.jit.unused
    def _call_direct(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(self._type_name() + "._call_direct")

    @torch.jit.unused
    def _eager_call(self, input: torch.Tensor) -> torch.Tensor:
        # Eager calls of an operator taking a TorchScript class (the packed weights) probe that
        # object for __torch_function__; the probe raises and catches a C++ exception inside
        # PyTorch, which cost ~20-40 us per layer here (measured on the detector: eager INT8
        # 24 ms against 15 ms in TorchScript). With a plain-Tensor input there is no subclass
        # whose __torch_function__ could apply, so the probe is skipped (modes still apply).
        if type(input) is torch.Tensor:
            with torch._C.DisableTorchFunctionSubclass():
                # torch.ops' Python entry also walks the arguments for the fake script objects
                # of torch.export's tracing: another ~17 us per layer (a tiny conv: 35 -> 17 us),
                # ~8 % of the detector's eager INT8 forward. Outside tracing (a real packed
                # object, not compiling) the operator's compiled entry is called directly.
                if isinstance(self.packed, torch.ScriptObject) and \
                        not torch.compiler.is_compiling():
                    return self._call_direct(input)
                return self._call_op(input)
        return self._call_op(input)

    def _where(self) -> str:
        if self.name == "":
            return self._type_name()
        return self._type_name() + "(" + self.name + ")"

    def _type_name(self) -> str:
        return "Int8Module"


class Int8Linear(_Int8Base):
    """INT8 ``nn.Linear``: ``y = act(int8_linear(x))`` on ``[*, in_features]`` float input.

    Args:
        packed: a ``torch.classes.torchqat.PackedLinear`` (``torchqat.int8.pack_linear``).
        input_scale, input_zero_point: the input quantizer's per-tensor parameters.
        quant_min, quant_max: the input's 8-bit range.
        activation: ``"none"``, ``"relu"`` or ``"silu"``, fused into the epilogue.
        name: the layer's name in its model (for error messages and repr).
        source: names of the modules it replaces (for repr).
    """

    in_features: int
    out_features: int

    def __init__(self, packed: torch.ScriptObject, input_scale: torch.Tensor,
                 input_zero_point: torch.Tensor, quant_min: int, quant_max: int,
                 activation: str = "none", name: str = "",
                 source: Optional[List[str]] = None) -> None:
        super().__init__()
        self.packed = packed
        self.in_features = int(packed.in_features())
        self.out_features = int(packed.out_features())
        self._init_common(input_scale, input_zero_point, quant_min, quant_max, activation, name,
                          source)

    def _type_name(self) -> str:
        return "Int8Linear"

    @classmethod
    def from_qat(cls, qat_module: nn.Module, bn: Optional[nn.Module] = None,
                 activation: Union[str, nn.Module, None] = None, name: str = "",
                 source: Optional[List[str]] = None, kernel: str = "auto") -> "Int8Linear":
        """The INT8 twin of a calibrated ``QuantLinear``: its weight quantized with the weight
        quantizer's exact rounding, its input quantizer's scale and zero point. ``bn`` folds a
        ``BatchNorm1d`` applied to the ``[N, out_features]`` output (eval-mode statistics);
        ``activation`` fuses a ReLU / SiLU that follows."""
        where = f"Int8Linear.from_qat({name})" if name else "Int8Linear.from_qat"
        if not isinstance(qat_module, QuantLinear):
            raise ValueError(f"{where}: expected a QuantLinear, got {type(qat_module).__name__}")
        w, s_w = _quantized_weight(qat_module, where)
        s_x, z_x, qmin, qmax = _input_qparams(qat_module, where)
        mult = shift = None
        if bn is not None:
            mult, shift = _fold_batch_norm(bn, w.size(0), where)
        packed = torch.classes.torchqat.PackedLinear(w, s_w, _bias_of(qat_module), mult, shift,
                                                     kernel)
        return cls(packed, s_x, z_x, qmin, qmax, _activation_name(activation), name, source)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The module's name is only put together for an error message: forward is hot.
        if not _is_float_input(input):
            raise ValueError(self._where() + _float_input_message(input))
        if input.dim() < 1 or input.size(-1) != self.in_features:
            raise ValueError(self._where() + ": input must have shape [*, "
                             + str(self.in_features) + "] (in_features last), got shape "
                             + str(list(input.shape)))
        if torch.jit.is_scripting():
            return self._call_op(input)
        return self._eager_call(input)

    def _call_op(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_linear(input, self.input_scale, self.input_zero_point,
                                              self.quant_min, self.quant_max, self.packed,
                                              self.activation)

    @torch.jit.unused
    def _call_direct(self, input: torch.Tensor) -> torch.Tensor:
        return _direct_op("int8_linear")(input, self.input_scale, self.input_zero_point,
                                         self.quant_min, self.quant_max, self.packed,
                                         self.activation)

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}"]
        parts += _describe(self.packed, self.input_scale, self.input_zero_point, self.quant_min,
                           self.quant_max, self.activation, self.source)
        return ", ".join(parts)


def _pack_conv(qat_module: nn.Module, bn: Optional[nn.Module], where: str, kernel: str,
               as_2d: bool) -> torch.ScriptObject:
    """The conv's packed weights. With ``kernel="auto"`` the packed object picks per call: the
    direct kernel for depthwise layers, the best GEMM kernel for this CPU, and on AVX2 CPUs
    without VNNI the ``avx2_u7`` kernel for a 7-bit unsigned input range (its
    ``kernel_for_input``)."""
    w, s_w = _quantized_weight(qat_module, where)
    mult = shift = None
    if bn is not None:
        mult, shift = _fold_batch_norm(bn, w.size(0), where)
    padding = _conv_padding(qat_module)
    stride = list(qat_module.stride)
    dilation = list(qat_module.dilation)
    if as_2d:  # Conv1d as a Conv2d over [N, C, 1, L]
        w = w.unsqueeze(2)
        padding, stride, dilation = [0] + padding, [1] + stride, [1] + dilation
    groups = int(qat_module.groups)
    return torch.classes.torchqat.PackedConv2d(w, s_w, _bias_of(qat_module), mult, shift,
                                               stride, padding, dilation, groups, kernel)


class Int8Conv2d(_Int8Base):
    """INT8 ``nn.Conv2d`` (zero padding, any stride / dilation / groups) on ``[N, C, H, W]``
    float input; returns float32 in channels_last memory format.

    Args: as :class:`Int8Linear`, with ``packed`` a ``torch.classes.torchqat.PackedConv2d``
    (``torchqat.int8.pack_conv2d``).
    """

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int

    def __init__(self, packed: torch.ScriptObject, input_scale: torch.Tensor,
                 input_zero_point: torch.Tensor, quant_min: int, quant_max: int,
                 activation: str = "none", name: str = "",
                 source: Optional[List[str]] = None) -> None:
        super().__init__()
        self.packed = packed
        self.in_channels = int(packed.in_channels())
        self.out_channels = int(packed.out_channels())
        k, s, p, d = (packed.kernel_size(), packed.stride(), packed.padding(), packed.dilation())
        self.kernel_size = (int(k[0]), int(k[1]))
        self.stride = (int(s[0]), int(s[1]))
        self.padding = (int(p[0]), int(p[1]))
        self.dilation = (int(d[0]), int(d[1]))
        self.groups = int(packed.groups())
        self._init_common(input_scale, input_zero_point, quant_min, quant_max, activation, name,
                          source)

    def _type_name(self) -> str:
        return "Int8Conv2d"

    @classmethod
    def from_qat(cls, qat_module: nn.Module, bn: Optional[nn.Module] = None,
                 activation: Union[str, nn.Module, None] = None, name: str = "",
                 source: Optional[List[str]] = None, kernel: str = "auto") -> "Int8Conv2d":
        """The INT8 twin of a calibrated ``QuantConv2d``, with BatchNorm2d ``bn`` (eval-mode
        statistics) folded into the epilogue and ``activation`` (ReLU / SiLU) fused."""
        where = f"Int8Conv2d.from_qat({name})" if name else "Int8Conv2d.from_qat"
        if not isinstance(qat_module, QuantConv2d):
            raise ValueError(f"{where}: expected a QuantConv2d, got {type(qat_module).__name__}")
        packed = _pack_conv(qat_module, bn, where, kernel, as_2d=False)
        s_x, z_x, qmin, qmax = _input_qparams(qat_module, where)
        return cls(packed, s_x, z_x, qmin, qmax, _activation_name(activation), name, source)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The module's name is only put together for an error message: forward is hot.
        if not _is_float_input(input):
            raise ValueError(self._where() + _float_input_message(input))
        if input.dim() != 4 or input.size(1) != self.in_channels:
            raise ValueError(self._where() + ": input must have shape [N, "
                             + str(self.in_channels) + ", H, W], got shape " + str(list(input.shape)))
        if torch.jit.is_scripting():
            return self._call_op(input)
        return self._eager_call(input)

    def _call_op(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.torchqat.int8_conv2d(input, self.input_scale, self.input_zero_point,
                                              self.quant_min, self.quant_max, self.packed,
                                              self.activation)

    @torch.jit.unused
    def _call_direct(self, input: torch.Tensor) -> torch.Tensor:
        return _direct_op("int8_conv2d")(input, self.input_scale, self.input_zero_point,
                                         self.quant_min, self.quant_max, self.packed,
                                         self.activation)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
                 f"stride={self.stride}", f"padding={self.padding}"]
        if self.dilation != (1, 1):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        parts += _describe(self.packed, self.input_scale, self.input_zero_point, self.quant_min,
                           self.quant_max, self.activation, self.source)
        return ", ".join(parts)


class Int8Conv1d(_Int8Base):
    """INT8 ``nn.Conv1d`` on ``[N, C, L]`` float input, run as a convolution over
    ``[N, C, 1, L]`` (kernel ``1 x k``) by the INT8 Conv2d kernels. Returns float32 ``[N, out,
    L_out]``."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int]
    stride: Tuple[int]
    padding: Tuple[int]
    dilation: Tuple[int]
    groups: int

    def __init__(self, packed: torch.ScriptObject, input_scale: torch.Tensor,
                 input_zero_point: torch.Tensor, quant_min: int, quant_max: int,
                 activation: str = "none", name: str = "",
                 source: Optional[List[str]] = None) -> None:
        super().__init__()
        k = packed.kernel_size()
        if int(k[0]) != 1:
            raise ValueError(f"Int8Conv1d: packed must hold a 1 x k kernel, got {list(k)}")
        self.packed = packed
        self.in_channels = int(packed.in_channels())
        self.out_channels = int(packed.out_channels())
        self.kernel_size = (int(k[1]),)
        self.stride = (int(packed.stride()[1]),)
        self.padding = (int(packed.padding()[1]),)
        self.dilation = (int(packed.dilation()[1]),)
        self.groups = int(packed.groups())
        self._init_common(input_scale, input_zero_point, quant_min, quant_max, activation, name,
                          source)

    def _type_name(self) -> str:
        return "Int8Conv1d"

    @classmethod
    def from_qat(cls, qat_module: nn.Module, bn: Optional[nn.Module] = None,
                 activation: Union[str, nn.Module, None] = None, name: str = "",
                 source: Optional[List[str]] = None, kernel: str = "auto") -> "Int8Conv1d":
        """The INT8 twin of a calibrated ``QuantConv1d`` (``bn``: a BatchNorm1d to fold)."""
        where = f"Int8Conv1d.from_qat({name})" if name else "Int8Conv1d.from_qat"
        if not isinstance(qat_module, QuantConv1d):
            raise ValueError(f"{where}: expected a QuantConv1d, got {type(qat_module).__name__}")
        packed = _pack_conv(qat_module, bn, where, kernel, as_2d=True)
        s_x, z_x, qmin, qmax = _input_qparams(qat_module, where)
        return cls(packed, s_x, z_x, qmin, qmax, _activation_name(activation), name, source)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The module's name is only put together for an error message: forward is hot.
        if not _is_float_input(input):
            raise ValueError(self._where() + _float_input_message(input))
        if input.dim() != 3 or input.size(1) != self.in_channels:
            raise ValueError(self._where() + ": input must have shape [N, "
                             + str(self.in_channels) + ", L], got shape " + str(list(input.shape)))
        if torch.jit.is_scripting():
            return self._call_op(input)
        return self._eager_call(input)

    def _call_op(self, input: torch.Tensor) -> torch.Tensor:
        y = torch.ops.torchqat.int8_conv2d(input.unsqueeze(2), self.input_scale,
                                           self.input_zero_point, self.quant_min, self.quant_max,
                                           self.packed, self.activation)
        return y.squeeze(2)

    @torch.jit.unused
    def _call_direct(self, input: torch.Tensor) -> torch.Tensor:
        y = _direct_op("int8_conv2d")(input.unsqueeze(2), self.input_scale,
                                      self.input_zero_point, self.quant_min, self.quant_max,
                                      self.packed, self.activation)
        return y.squeeze(2)

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
                 f"stride={self.stride}", f"padding={self.padding}"]
        if self.dilation != (1,):
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        parts += _describe(self.packed, self.input_scale, self.input_zero_point, self.quant_min,
                           self.quant_max, self.activation, self.source)
        return ", ".join(parts)
