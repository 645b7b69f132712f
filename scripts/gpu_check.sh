#!/usr/bin/env bash
# GPU acceptance run for more3s: the ONE script to run on a lent GPU machine (the device tool).
#
# Why a script: the GPU machine is bare each time (no registry, its own python3 with a CUDA torch),
# a command may run 10 minutes at most, and only what lands in $OUT comes back. This script does the
# whole check inside that budget and always leaves a report, even when a phase fails or times out:
#
#   0. environment  nvidia-smi, python/torch/triton/CUDA versions        -> $OUT/nvidia_smi.csv, env.json
#   1. install      venv over the machine's python3 (its CUDA torch), carried wheels for what the image
#                   lacks, `pip install --no-build-isolation -e .` (builds more3s._C WITH the CUDA kernels)
#   2. GPU tests    pytest tests -m gpu (compiled Triton kernels, CUDA ring cache, fp16 + CUDA-graph
#                   encoder, model GPU tests)                          -> $OUT/tests_gpu.xml, tests_gpu.log
#   3. benchmarks   pytest bench -m gpu --benchmark-only                -> $OUT/bench.json, bench_attention.*
#   4. summary      scripts/summarize_gpu_results.py                    -> $OUT/GPU_RESULTS.md
# and copies the results into results/ of the (device-side) checkout as well.
#
# Two modes:
#   scripts/gpu_check.sh fetch-wheels   HERE (a machine with pip access): download cp312 x86-64 wheels of
#                                       the packages the GPU image lacks into .whl/ (git-ignored), at the
#                                       versions installed in ./.venv. ~29 MB.
#   scripts/gpu_check.sh [run]          THERE, through the device tool, with `.whl` carried:
#       run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Knobs (environment): GPU_CHECK_BUDGET_S (total seconds, default 570: the tool kills at 600),
# GPU_CHECK_WORKERS (pytest-xdist workers for the GPU tests, default 4), GPU_CHECK_ALL_BENCH=1 (run
# the CPU benchmarks too, if time is left), PYTHON (default python3: the image's python with torch),
# GPU_CHECK_COMMIT (the commit to name in the report: the device copy may have no .git),
# GPU_CHECK_REQUIRE_CUDA=0 (dry run of the plumbing on a CPU box: GPU tests then skip).
#
# Why not `pip install -c constraints.txt -e .[dev]` there: nothing can be fetched on that machine and
# a CUDA torch wheel is far over the 64 MiB the tool carries, so the image's torch/triton are used
# (their versions go into the report; constraints.txt pins torch 2.13.0 for CPU CI) and the install
# runs with --no-index --no-deps; `pip check` then lists what differs from the pins.

set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
WHEELS=$ROOT/.whl
# The packages the GPU image lacks (KINDS.md's list vs. more3s[dev]'s dependency tree), and what
# they need that the image does not have either. typing-extensions: typeguard needs >= 4.14.
WHEEL_PKGS=(gymnasium farama-notifications ale-py mujoco mujoco-core mujoco-studio websockets glfw pyopengl
            minari tyro docstring-parser typeguard typing-extensions)

section() {
    printf '\n======== %s ======== [%s, +%ss]\n' "$1" "$(date -u +%H:%M:%S)" "$(( $(date +%s) - START ))"
}

# ---------------------------------------------------------------------------------------------
# fetch-wheels: runs HERE
# ---------------------------------------------------------------------------------------------
fetch_wheels() {
    local py=${LOCAL_PYTHON:-$ROOT/.venv/bin/python} specs=() p v
    [[ -x $py ]] || { echo "fetch-wheels: $py not found (set LOCAL_PYTHON to the venv's python)" >&2; return 2; }
    for p in "${WHEEL_PKGS[@]}"; do
        v=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) \
            || { echo "fetch-wheels: $p is not installed in $py; install the project first" >&2; return 2; }
        specs+=("$p==$v")
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    echo "fetch-wheels: ${specs[*]}"
    # The GPU image runs CPython 3.12 on x86-64 (KINDS.md); pip matches each manylinux tag exactly.
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
        -d "$WHEELS" "${specs[@]}" || return 1
    ls -1 "$WHEELS"
    du -sh "$WHEELS"
    echo "carry [\".whl\"] in the device call: run(command=\"bash scripts/gpu_check.sh\", carry=[\".whl\"])"
}

# ---------------------------------------------------------------------------------------------
# run: THERE
# ---------------------------------------------------------------------------------------------
START=$(date +%s)
BUDGET_S=${GPU_CHECK_BUDGET_S:-570}
RESERVE_S=35  # always kept for the summary and the copies
OUT=${OUT:-$ROOT/results/gpu_out}
RESULTS=$ROOT/results
PY=${PYTHON:-python3}
VENV=/tmp/more3s-gpu-venv
PHASES=$OUT/phases.tsv
REQUIRE_CUDA=${GPU_CHECK_REQUIRE_CUDA:-1}
FAILED=0

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# phase NAME CAP_S LOG CMD...: run CMD (a program, not a shell function) under `timeout` with
# min(CAP_S, time left - reserve) seconds, SIGINT first so that pytest still writes its JSON/XML;
# output to the console and LOG; rc and seconds go to phases.tsv.
phase() {
    local name=$1 cap=$2 log=$3 t0 rc lim
    shift 3
    lim=$(( $(left) - RESERVE_S ))
    (( lim > cap )) && lim=$cap
    if (( lim < 10 )); then
        echo "[$name] skipped: no time left"
        printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 0 >> "$PHASES"
        FAILED=1
        return 124
    fi
    t0=$(date +%s)
    timeout -s INT -k 20 "$lim" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    (( rc == 124 )) && echo "[$name] TIMED OUT after ${lim}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$lim" >> "$PHASES"
    (( rc != 0 )) && FAILED=1
    return "$rc"
}

env_info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm,clocks.max.mem,power.limit \
        --format=csv > "$OUT/nvidia_smi.csv" || echo "nvidia-smi query failed"
    nvidia-smi -q > "$OUT/nvidia_smi_q.txt" 2>&1 || true
    nvidia-smi || true
    "$VPY" - "$OUT/env.json" <<'EOF'
import json, platform, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
except Exception as e:  # report, do not die: the summary still needs this file
    info["torch_error"] = repr(e)
for mod in ("triton", "transformers", "numpy", "pytest_benchmark"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:
        info[mod] = f"missing ({type(e).__name__})"
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
EOF
}

make_venv() {
    # A venv over the image's python: exactly the site-packages that python sees stay visible through a
    # .pth, appended after the venv's own (so carried wheels win). --system-site-packages would not do:
    # it exposes the BASE interpreter's packages, not those of /opt/torch/.venv where the image's torch
    # lives. --without-pip: the image's pip runs through that .pth (no ensurepip needed).
    rm -rf "$VENV"
    "$PY" -m venv --without-pip "$VENV" || return 1
    local site
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") || return 1
    "$PY" -c "import site, sys; print('\n'.join(p for p in site.getsitepackages() + [site.getusersitepackages()]))" \
        > "$site/more3s_base_site.pth" || return 1
    "$VENV/bin/python" -c "import torch, pip, setuptools" || return 1
    VPY=$VENV/bin/python
}

install() {
    if [[ -d $WHEELS ]] && compgen -G "$WHEELS/*.whl" > /dev/null; then
        "$VPY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl || return 1
    else
        echo "no .whl/ carried: relying on the image for gymnasium, mujoco, ale-py, minari, tyro"
    fi
    # Build for this GPU only (faster than torch's default arch list); ninja with every core.
    if [[ $REQUIRE_CUDA == 1 && -z ${TORCH_CUDA_ARCH_LIST:-} ]]; then
        TORCH_CUDA_ARCH_LIST=$("$VPY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") \
            || { echo "no CUDA device visible to torch"; return 1; }
    fi
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=${MAX_JOBS:-$(nproc)}
    echo "building more3s._C for compute capability $TORCH_CUDA_ARCH_LIST with MAX_JOBS=$MAX_JOBS"
    "$VPY" -m pip install --no-index --no-deps --no-build-isolation -e "$ROOT" || return 1
    "$VPY" -m pip check || echo "(pip check: differences from the pins above are expected, see the header)"
    REQUIRE_CUDA=$REQUIRE_CUDA "$VPY" - <<'EOF'
import importlib, os
missing = []
for mod in ("gymnasium", "mujoco", "ale_py", "minari", "tyro", "pytest_benchmark", "xdist", "pytest_timeout"):
    try:
        importlib.import_module(mod)
    except Exception as e:
        missing.append(f"{mod} ({type(e).__name__}: {e})")
from more3s.model import ring_ops as _ops
print("more3s._C:", _ops.extension_error() or "loaded", "| cuda kernels:", _ops.has_kernel("cuda"))
if missing:
    raise SystemExit("missing on this machine: " + ", ".join(missing)
                     + "\nrun `scripts/gpu_check.sh fetch-wheels` on the dev machine and carry .whl")
if os.environ["REQUIRE_CUDA"] == "1" and not _ops.has_kernel("cuda"):
    raise SystemExit("more3s._C was built WITHOUT its CUDA kernels (CUDA_HOME / nvcc not found?)")
EOF
}

run_check() {
    mkdir -p "$OUT" "$RESULTS"
    : > "$PHASES"
    exec 3>&1 4>&2 > >(tee -a "$OUT/gpu_check.log") 2>&1
    local tee_pid=$!
    export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        TOKENIZERS_PARALLELISM=false MUJOCO_GL=${MUJOCO_GL:-egl} MORE3S_CACHE=/tmp/more3s-cache \
        MORE3S_RESULTS_DIR=$OUT
    unset TRITON_INTERPRET  # compiled Triton, not the interpreter
    local commit=${GPU_CHECK_COMMIT:-}
    if [[ -z $commit ]]; then
        commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
        git -C "$ROOT" status --porcelain 2>/dev/null | head -1 | grep -q . && commit="$commit+dirty"
    fi
    echo "$commit" > "$OUT/commit.txt"

    section "0. environment (commit $commit, budget ${BUDGET_S}s)"
    VPY=$PY
    if make_venv; then
        echo "venv: $VENV over $("$PY" -c 'import sys; print(sys.executable)')"
    else
        echo "WARNING: could not make a venv over $PY; installing into $PY itself"
        VPY=$PY
    fi
    env_info

    section "1. install (carried wheels + editable build with the CUDA extension)"
    export VPY
    if ! phase install 300 "$OUT/install.log" bash "$ROOT/scripts/gpu_check.sh" install-only; then
        echo "install FAILED: skipping tests and benchmarks"
    else
        section "2. GPU tests: pytest tests -m gpu"
        phase tests_gpu 240 "$OUT/tests_gpu.log" "$VPY" -m pytest tests -m gpu -q -rfEs -p no:cacheprovider \
            --timeout=240 -n "${GPU_CHECK_WORKERS:-4}" --junitxml="$OUT/tests_gpu.xml"

        section "3. GPU benchmarks: pytest bench -m gpu --benchmark-only"
        phase bench_gpu 600 "$OUT/bench_gpu.log" "$VPY" -m pytest bench -m gpu --benchmark-only -q \
            -p no:cacheprovider --benchmark-json="$OUT/bench.json" --timeout=300

        if [[ ${GPU_CHECK_ALL_BENCH:-0} == 1 ]]; then
            section "3b. CPU benchmarks on this machine: pytest bench -m 'not gpu' --benchmark-only"
            phase bench_cpu 600 "$OUT/bench_cpu.log" "$VPY" -m pytest bench -m "not gpu" --benchmark-only -q \
                -p no:cacheprovider --benchmark-json="$OUT/bench_cpu.json" --timeout=300
        fi
    fi

    section "4. summary -> GPU_RESULTS.md"
    local args=(--out "$OUT/GPU_RESULTS.md" --phases "$PHASES" --commit "$commit")
    local f
    for f in bench.json bench_cpu.json; do [[ -s $OUT/$f ]] && args+=(--bench "$OUT/$f"); done
    [[ -s $OUT/tests_gpu.xml ]] && args+=(--junit "$OUT/tests_gpu.xml")
    [[ -s $OUT/nvidia_smi.csv ]] && args+=(--nvidia-smi "$OUT/nvidia_smi.csv")
    [[ -s $OUT/env.json ]] && args+=(--env "$OUT/env.json")
    "$PY" "$ROOT/scripts/summarize_gpu_results.py" "${args[@]}" || FAILED=1
    for f in GPU_RESULTS.md bench.json bench_cpu.json bench_attention.json bench_attention.md env.json \
             nvidia_smi.csv tests_gpu.xml; do
        [[ -s $OUT/$f && $OUT != "$RESULTS" ]] && cp "$OUT/$f" "$RESULTS/$f"
    done
    [[ -f $OUT/GPU_RESULTS.md ]] && cat "$OUT/GPU_RESULTS.md"
    section "done: $([[ $FAILED == 0 ]] && echo OK || echo 'SOME PHASE FAILED (see phases above)')"
    exec 1>&3 2>&4  # close the pipe so tee flushes gpu_check.log before the tool collects $OUT
    wait "$tee_pid" 2>/dev/null
    return $FAILED
}

case "${1:-run}" in
    fetch-wheels) fetch_wheels ;;
    run) run_check ;;
    install-only) VPY=${VPY:?install-only runs inside run}; install ;;  # phase 1 (timeout needs a program)
    *) echo "usage: $0 [run|fetch-wheels]" >&2; exit 2 ;;
esac
