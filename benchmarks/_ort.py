"""ONNX Runtime sessions for the benchmarks: a QAT model's INT8 QDQ export, and the FP32 export
of a float model, both on the CPU execution provider with an explicit thread count.

    from _ort import qdq_session, fp32_session, ort_runner
    sess = qdq_session(qat_model, example, threads=2)        # INT8: ORT fuses QLinearConv etc.
    run = ort_runner(sess)                                   # run(x: torch.Tensor) -> np.ndarray

Graph optimisations are on (ORT_ENABLE_ALL), so ORT rewrites the QuantizeLinear /
DequantizeLinear pairs into its integer kernels (QLinearConv, QGemm, ...). On x86 CPUs without
VNNI its fast uint8 x int8 kernels add pairs of products in int16 with saturation (vpmaddubsw) and
can be wrong by much more than a quantization step; ``exact=True`` (the default) sets
``session.x64quantprecision=1``, ORT's exact path, so that ORT computes what torchqat's INT8
kernels compute. Pass ``exact=False`` to time ORT's fast path too, and say so. The sessions come
from ``torchqat.export.onnxruntime_session``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Sequence, Union

import torch

Inputs = Union[torch.Tensor, Sequence[Any]]


def _session(path: str, threads: int, exact: bool, optimize: bool):
    from torchqat.export import onnxruntime_session

    return onnxruntime_session(path, threads, exact=exact, optimize=optimize)


def _default_path(name: str) -> str:
    return os.path.join(tempfile.mkdtemp(prefix="torchqat_ort_"), name)


def qdq_session(qat_model: torch.nn.Module, example_inputs: Inputs, *, threads: int,
                path: str = None, exact: bool = True, optimize: bool = True,
                dynamo: bool = False, opset: int = 17):
    """Exports ``qat_model`` with ``torchqat.export_onnx`` (dynamic batch) and returns an ORT
    session for it. The TorchScript exporter is the default here only because it is ~20x
    faster to run; the graph is the same QDQ graph as with ``dynamo=True``."""
    import torchqat as tq

    path = path or _default_path("qdq.onnx")
    tq.export_onnx(qat_model, example_inputs, path, opset=opset, dynamo=dynamo)
    return _session(path, threads, exact, optimize)


def fp32_session(float_model: torch.nn.Module, example_inputs: Inputs, *, threads: int,
                 path: str = None, opset: int = 17):
    """Exports a float model (TorchScript exporter, dynamic batch) and returns an ORT session."""
    import warnings

    path = path or _default_path("fp32.onnx")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else \
        tuple(example_inputs)
    names = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    model = float_model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, inputs, path, dynamo=False, opset_version=opset,
                          input_names=names,
                          dynamic_axes={n: {0: "batch"} for n in names})
    return _session(path, threads, exact=True, optimize=True)


def ort_runner(session) -> Callable[..., Any]:
    """``run(*tensors)`` feeding torch tensors (as numpy) to ``session``'s inputs in order and
    returning its first output as a numpy array."""
    names = [i.name for i in session.get_inputs()]

    def run(*tensors: torch.Tensor):
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}
        return session.run(None, feeds)[0]

    return run
