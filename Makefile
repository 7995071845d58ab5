# torchqat: the two commands that set everything up on a fresh machine.
#   make test        venv + pinned CPU torch + build + C++ tests + pytest
#   make demo        the same set-up, then the main job
#   make cuda-check  CUDA 13 torch in its own venv; compiles every .cu for sm_80 and sm_90
#   make model-test  the pytest suite in that venv (torchvision models; CPU execution)
#   make gpu-check   on a GPU machine: build against its torch, full tests + GPU benchmarks
#   make cpp-example libtorchqat installed as a CMake package, examples/cpp built against it, its
#                    output checked against Python's (part of make test)
PYTHON      ?= python3
VENV        ?= .venv
VENV_CUDA   ?= .venv-cuda
TORCH_CPU   := torch==2.13.0
TORCH_CUDA  := torch==2.14.1
# torchvision's PyPI wheels are CUDA builds: it lives in the CUDA venv only.
TORCHVISION_CUDA := torchvision==0.29.1
# Everything the tests, the examples and the benchmarks import.
PY_DEPS     := pytest numpy ninja setuptools wheel expecttest tqdm scikit-learn \
               onnx onnxruntime onnxscript pycocotools rich matplotlib pillow
JOBS        ?= 2
# nvcc lives in /usr/local/cuda/bin (often linked from /usr/local/bin, from which torch would
# guess the wrong toolkit root and miss libcudart).
CUDA_HOME   ?= $(firstword $(wildcard /usr/local/cuda) /usr/local/cuda)
export CUDA_HOME
CMAKE_BUILD := build/cmake

VPY  := $(VENV)/bin/python
CPY  := $(VENV_CUDA)/bin/python

.PHONY: test demo build cpp-test pytest cuda-check model-test bench bench-qat bench-int8 gpu-check clean

# The venv is rebuilt when the pinned packages change.
$(VENV)/.installed: Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH_CPU) $(PY_DEPS)
	touch $@

# First time: the editable install the README documents. After that an in-place ninja build,
# which recompiles only what changed.
$(VENV)/.editable: $(VENV)/.installed setup.py pyproject.toml
	MAX_JOBS=$(JOBS) $(VPY) -m pip install -q --no-build-isolation -e .
	touch $@

build: $(VENV)/.editable
	MAX_JOBS=$(JOBS) $(VPY) setup.py -q build_ext --inplace --build-temp build/ext

# gtest from Debian's package, where it is missing (CI runs as root).
/usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev cmake ninja-build

cpp-test: $(VENV)/.installed /usr/lib/x86_64-linux-gnu/cmake/GTest/GTestConfig.cmake
	cmake -S . -B $(CMAKE_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	cmake --build $(CMAKE_BUILD) -j $(JOBS)
	ctest --test-dir $(CMAKE_BUILD) --output-on-failure

# The C++ deployment path end to end (docs/deploy_cpp.md): an INT8 TorchScript model saved in
# Python, libtorchqat installed from $(CMAKE_BUILD) into a prefix, examples/cpp built against it
# with find_package(torchqat); the program's output must equal Python's bit for bit.
.PHONY: cpp-example
cpp-example: build cpp-test
	$(VPY) examples/cpp/check.py --cmake-build $(CMAKE_BUILD) --jobs $(JOBS)

pytest: build
	$(VPY) -m pytest -q

test: build cpp-test cpp-example pytest

demo: build
	$(VPY) examples/detector_qat.py
	$(VPY) examples/fake_quant_demo.py
	$(VPY) benchmarks/bench_fake_quant.py

bench: build
	$(VPY) benchmarks/bench_fake_quant.py
	$(VPY) benchmarks/bench_int8_linear.py

# CUDA compile check: the CUDA 13 build of torch in its own venv, every .cu compiled for sm_80
# and sm_90 and linked into the full extension. Runs without a GPU.
$(VENV_CUDA)/.installed: Makefile
	test -x $(CPY) || $(PYTHON) -m venv $(VENV_CUDA)
	$(CPY) -m pip install -q --upgrade pip
	$(CPY) -m pip install -q $(TORCH_CUDA) $(TORCHVISION_CUDA) $(PY_DEPS)
	touch $@

cuda-check: $(VENV_CUDA)/.installed
	TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS=$(JOBS) TORCHQAT_WITH_CUDA=1 \
	  $(CPY) setup.py -q build_ext --build-temp build/cuda/tmp --build-lib build/cuda/lib
	@ls build/cuda/lib/torchqat/_C*.so

# The tests that need torchvision (and two version-sensitive files) in the CUDA venv (torch 2.14.1,
# CPU execution), with
# torchqat's CUDA build: the torchvision model tests run here (they skip in the CPU venv).
CUDA_LIBRARY = TORCHQAT_LIBRARY="$$(ls build/cuda/lib/torchqat/_C*.so)" PYTHONPATH=python
model-test: cuda-check
	$(CUDA_LIBRARY) $(CPY) -m pytest -q tests/test_torchvision_models.py tests/test_convert_torchvision.py \
	  tests/test_detector_torchvision.py tests/test_export.py tests/test_quantizers.py

bench-int8: cuda-check
	$(CUDA_LIBRARY) $(CPY) benchmarks/bench_int8_cpu.py

bench-qat: cuda-check
	$(CUDA_LIBRARY) $(CPY) benchmarks/bench_qat_step.py

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf build python/torchqat/_C*.so *.egg-info python/*.egg-info
