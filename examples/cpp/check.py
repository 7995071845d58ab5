"""End-to-end check of the C++ deployment path (``make cpp-example`` runs it; docs/deploy_cpp.md).

1. Builds an INT8 model in Python, scripts it and saves it with ``torch.jit.save``; saves an
   input with ``torch.save`` and the Python output of the *saved* model for that input.
   The model: the digits CNN of examples/classifier_qat.py, prepared for 8-bit QAT, calibrated
   and converted with ``tq.convert``. While this checkout has no ``tq.convert``, a two-layer
   model calling ``torch.ops.torchqat.int8_linear`` on weights packed by
   ``torchqat.int8.pack_linear`` stands in.
2. Installs libtorchqat from an existing CMake build tree (``cmake --install``) into a prefix,
   then moves the prefix, so that the package is shown to be relocatable.
3. Configures and builds examples/cpp against the moved prefix (``find_package(torchqat)``).
4. Runs the program on the saved model and input, and requires its output to equal Python's bit
   for bit: the same kernels on the same machine with the same thread count give the same bits.
   Again with each INT8 kernel this CPU runs (``TORCHQAT_INT8_KERNEL``): they all give the same
   bits too.
5. Checks that the program's errors (a missing model, a file that is no model, an input that is
   no saved tensor, an input of the wrong shape) are one clear message and exit status 1.

With ``--device cuda`` (a GPU machine; scripts/gpu_check.sh runs it) the CMake tree is configured
with the CUDA kernels, the program loads the model onto the GPU, and its output must equal the
saved model's output on the same GPU in Python, bit for bit, with each CUDA GEMM
(``TORCHQAT_CUDA_INT8_GEMM``).

    python examples/cpp/check.py [--cmake-build build/cmake] [--work build/cpp-example]
                                 [--device cpu|cuda] [--cmake-arg -DNAME=VALUE ...]

Exit status 0 when everything holds, 1 otherwise (the failing step is printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import torchqat as tq
from torchqat import int8

ROOT = Path(__file__).resolve().parents[2]
# Where the model, the install prefix and the example build go unless --work says otherwise
# (`make cpp-example` uses this default; examples/detector_qat.py runs the program built here).
DEFAULT_WORK = ROOT / "build" / "cpp-example"


def program_path(work: Path = DEFAULT_WORK) -> Path:
    """The example program that build_example builds under ``work``."""
    return work / "build" / "torchqat_infer"


class CheckFailed(RuntimeError):
    pass


class PackedInt8MLP(nn.Module):
    """Two INT8 linear layers (the second with a folded per-channel affine, as a BatchNorm gives)
    written directly against the operators: the stand-in while ``tq.convert`` is missing."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)

        def layer(n_out: int, n_in: int, bn: bool):
            w = torch.randint(-127, 128, (n_out, n_in), generator=g, dtype=torch.int8)
            s_w = torch.rand(n_out, generator=g) * 0.01 + 0.001
            b = torch.randn(n_out, generator=g)
            mult = torch.rand(n_out, generator=g) + 0.5 if bn else None
            shift = torch.randn(n_out, generator=g) if bn else None
            return int8.pack_linear(w, s_w, b, mult, shift)

        self.fc1 = layer(96, 64, bn=False)
        self.fc2 = layer(10, 96, bn=True)
        self.register_buffer("s_x1", torch.tensor([0.04]))
        self.register_buffer("z_x1", torch.tensor([128], dtype=torch.int32))
        self.register_buffer("s_x2", torch.tensor([0.02]))
        self.register_buffer("z_x2", torch.tensor([0], dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ops.torchqat.int8_linear(x, self.s_x1, self.z_x1, 0, 255, self.fc1, "relu")
        return torch.ops.torchqat.int8_linear(h, self.s_x2, self.z_x2, 0, 255, self.fc2, "none")


def digits_int8_model():
    """The digits CNN, briefly trained in float, prepared for 8-bit QAT, calibrated, converted:
    ``(int8 model, a test batch)``."""
    sys.path.insert(0, str(ROOT / "examples"))
    import classifier_qat as cq  # noqa: E402  (the example's model, data and config)

    torch.manual_seed(0)
    x_train, y_train, x_test, _ = cq.load_digits_tensors(seed=0)
    model = cq.DigitsCNN()
    cq.train(model, x_train, y_train, 2,
             torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4), seed=0)
    qmodel = tq.prepare_qat(model, cq.CONFIGS["8-bit, per-channel weights"])
    calib = [xb for xb, _ in cq.batches(x_train, y_train, 64)]
    tq.calibrate(qmodel, calib, num_batches=4, progress=False)
    qmodel.eval()
    return tq.convert(qmodel), x_test[:32]


def make_model(work: Path, kind: str, device: str = "cpu") -> str:
    """Saves model.pt, input.pt and expected.pt (the saved model's output in Python, run on
    `device`, as a CPU tensor); returns a description of the model."""
    if kind == "auto":
        kind = "digits" if hasattr(tq, "convert") else "linear"
    if kind == "digits":
        imodel, x = digits_int8_model()
        what = "digits CNN, 8-bit QAT, tq.convert"
    else:
        imodel, x = PackedInt8MLP(), torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
        what = "two int8_linear layers (torchqat.int8.pack_linear)"
    imodel.eval()
    with torch.no_grad():
        eager = imodel(x)
    scripted = torch.jit.script(imodel)
    torch.jit.save(scripted, str(work / "model.pt"))
    torch.save(x, work / "input.pt")
    # The C++ program runs the saved file, whose weights re-pack on load: compare against the
    # same file loaded here, and make sure it agrees with the model it came from.
    loaded = torch.jit.load(str(work / "model.pt"))
    with torch.no_grad():
        expected = loaded(x)
    if not torch.equal(expected, eager):
        raise CheckFailed(f"the saved model's output differs from the eager model's "
                          f"(max |diff| {(expected - eager).abs().max().item():.3g})")
    if device != "cpu":
        # CPU and GPU agree up to the epilogue's float rounding, not bit for bit: the program
        # is held to Python on the same device.
        on_device = torch.jit.load(str(work / "model.pt"), map_location=device)
        with torch.no_grad():
            expected = on_device(x.to(device)).cpu()
    torch.save(expected, work / "expected.pt")
    return f"{what}; input {tuple(x.shape)}, output {tuple(expected.shape)}"


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    result = subprocess.run([str(c) for c in cmd], text=True, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise CheckFailed(f"{cmd[0]} exited with {result.returncode}:\n"
                          f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def install_package(cmake_build: Path, work: Path, jobs: int, cuda: bool = False,
                    cmake_args=()) -> Path:
    """cmake --install into a staging prefix, then move it: the example must build against the
    moved copy, so nothing in the package may point back to where it was installed."""
    cache = cmake_build / "CMakeCache.txt"
    if not cache.exists():
        # Configured as `make cpp-test` configures it, so that the two share the tree; with the
        # CUDA kernels (and without the gtest programs) for a GPU.
        extra = ["-DTORCHQAT_WITH_CUDA=ON", "-DTORCHQAT_BUILD_TESTS=OFF"] if cuda else []
        run(["cmake", "-S", ROOT, "-B", cmake_build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
             f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", *extra, *cmake_args])
    elif cuda and "TORCHQAT_WITH_CUDA:BOOL=ON" not in cache.read_text():
        raise CheckFailed(f"{cmake_build} was configured without the CUDA kernels; give "
                          "--cmake-build a new directory for --device cuda")
    run(["cmake", "--build", cmake_build, "--target", "torchqat", "-j", str(jobs)])
    staging, prefix = work / "install-staging", work / "prefix"
    for d in (staging, prefix):
        shutil.rmtree(d, ignore_errors=True)
    run(["cmake", "--install", cmake_build, "--prefix", staging])
    staging.rename(prefix)
    return prefix


def build_example(prefix: Path, work: Path, jobs: int) -> Path:
    build = work / "build"
    run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", build, "-G", "Ninja",
         "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path};{prefix}"])
    run(["cmake", "--build", build, "-j", str(jobs)])
    return program_path(work)


# The environment variable that picks the INT8 kernel (CPU: at model load) or GEMM (CUDA: per
# call); every choice gives the same bits.
KERNEL_VARIABLE = {"cpu": "TORCHQAT_INT8_KERNEL", "cuda": "TORCHQAT_CUDA_INT8_GEMM"}


def kernel_choices(device: str) -> list:
    if device == "cpu":
        return int8.available_kernels()
    return ["cublaslt", "dp4a"]


def check_output(binary: Path, work: Path, threads: int, kernel: str = "",
                 device: str = "cpu") -> str:
    """Runs the program (with the kernel variable of `device` set to `kernel` when given) and
    compares its output with the Python output saved by make_model."""
    out_path = work / "output.pt"
    out_path.unlink(missing_ok=True)
    env = dict(os.environ)
    variable = KERNEL_VARIABLE[device]
    if kernel:
        env[variable] = kernel
    result = run([binary, work / "model.pt", work / "input.pt", out_path, "--threads", threads,
                  "--device", device], env=env)
    print(result.stdout, end="")
    expected = torch.load(work / "expected.pt", weights_only=True)
    got = torch.load(out_path, weights_only=True)
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"the C++ output is a {type(got).__name__}, expected a tensor")
    if got.dtype != expected.dtype or got.shape != expected.shape:
        raise CheckFailed(f"C++ output {got.dtype} {tuple(got.shape)}, "
                          f"Python output {expected.dtype} {tuple(expected.shape)}")
    if not torch.equal(got, expected):
        diff = (got.double() - expected.double()).abs()
        raise CheckFailed(f"C++ output{f' with {variable}={kernel}' if kernel else ''} "
                          f"differs from Python's in {(diff > 0).sum().item()} of "
                          f"{diff.numel()} elements (max |diff| {diff.max().item():.3g})")
    return f"{tuple(got.shape)} {got.dtype}"


def check_errors(binary: Path, work: Path) -> None:
    torch.save(torch.zeros(2, 3), work / "bad_input.pt")  # no model here takes 3 features
    cases = [
        ([work / "missing.pt", work / "input.pt"], "cannot open model"),
        ([work / "input.pt", work / "input.pt"], "cannot load model"),
        ([work / "model.pt", work / "model.pt"], "cannot read input"),
        ([work / "model.pt", work / "bad_input.pt"], "forward failed"),
    ]
    if not torch.cuda.is_available():
        cases.append(([work / "model.pt", work / "input.pt", "--device", "cuda"],
                      "sees no CUDA device"))
    cases = [(args, message, 1) for args, message in cases]
    cases.append(([work / "model.pt", work / "input.pt", "--device", "tpu"],
                  "--device must be cpu, cuda or cuda:N, got 'tpu'", 2))  # a usage error
    for args, message, status in cases:
        result = subprocess.run([str(binary)] + [str(a) for a in args], text=True,
                                capture_output=True)
        if result.returncode != status or message not in result.stderr:
            raise CheckFailed(f"torchqat_infer {' '.join(map(str, args))}: expected exit status "
                              f"{status} and '{message}', got {result.returncode}: "
                              f"{result.stderr!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cmake-build", type=Path, default=ROOT / "build" / "cmake",
                        help="torchqat's CMake build tree (configured here if missing)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="where the model, the install prefix and the example build go")
    parser.add_argument("--model", choices=["auto", "digits", "linear"], default="auto",
                        help="auto: the digits CNN through tq.convert where it exists")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads, the same in Python and in C++")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the program runs the model (cuda: a CUDA build of "
                             "libtorchqat, configured here when --cmake-build is new)")
    parser.add_argument("--cmake-arg", action="append", default=[],
                        help="an extra argument for configuring a new CMake tree, e.g. "
                             "-DCMAKE_CUDA_ARCHITECTURES=90 (repeatable)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("cpp-example: FAILED: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 1

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        described = make_model(args.work, args.model, args.device)
        prefix = install_package(args.cmake_build.resolve(), args.work.resolve(), args.jobs,
                                 cuda=args.device == "cuda", cmake_args=args.cmake_arg)
        binary = build_example(prefix, args.work.resolve(), args.jobs)
        shape = check_output(binary, args.work, args.threads, device=args.device)
        # Every INT8 kernel gives the same bits (docs/numerics.md): the environment variable
        # that picks one changes nothing in the output.
        kernels = kernel_choices(args.device)
        for kernel in kernels:
            check_output(binary, args.work, args.threads, kernel, args.device)
        check_errors(binary, args.work)
    except CheckFailed as err:
        print(f"cpp-example: FAILED: {err}", file=sys.stderr)
        return 1
    print(f"cpp-example: OK: the C++ program's output {shape} on {args.device} equals Python's "
          f"bit for bit, also with {KERNEL_VARIABLE[args.device]}={'|'.join(kernels)} "
          f"({described}; libtorchqat installed to a prefix that was then moved)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
