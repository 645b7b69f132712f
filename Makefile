# Two commands do everything on a fresh machine: `make train` and `make test`.
# Each creates .venv if missing and installs the pinned dependencies first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.more3s-installed
# Tests and benchmarks run small ops in parallel workers: on a busy 2-core box those get 10-30x slower with 2
# threads each. Training is left on torch's default (every core): 1.5x faster than one thread on an idle 2-core box.
test bench: export OMP_NUM_THREADS ?= 1
export MUJOCO_GL ?= egl
PYTEST_WORKERS ?= 2

.PHONY: install test train bench cuda-check clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=68" wheel
	# torch first, pinned, so that no later requirement can pull a CUDA build onto a CPU box.
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 triton==3.7.1 ninja
	$(PY) -m pip install -q -c constraints.txt --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest tests -n $(PYTEST_WORKERS) --timeout=900 -q

train: $(STAMP)
	$(PY) -m more3s.train $(ARGS)

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-only -q

# Compiles the CUDA sources with nvcc through CMake (runs without a GPU): the objects-only
# target more3s_cuda_check, for sm_80/sm_90, against torch's headers. Fails if nvcc is missing.
cuda-check: $(STAMP)
	cmake -S . -B build/cmake -DMORE3S_REQUIRE_CUDA_CHECK=ON -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/cmake --target more3s_cuda_check -j 2

clean:
	rm -rf build *.egg-info more3s/_C*.so
