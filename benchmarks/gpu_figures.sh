#!/usr/bin/env bash
# The GPU figures of docs/performance.md and docs/reference_job.md in one go, on a machine with
# one CUDA GPU and PyTorch installed (the package is used from this checkout, not installed):
#
#   OUT=gpu-figures bash benchmarks/gpu_figures.sh                 # about 7 minutes on one H100
#   OUT=gpu-figures REFERENCE_JOB=0 bash benchmarks/gpu_figures.sh # the Recorder's figures only
#   OUT=gpu-figures REFERENCE_JOB=0 COMPILE=1 bash benchmarks/gpu_figures.sh  # + torch.compile
#
# 1. Correctness on this GPU first: the Triton kernels (ReLU counts, parameter norms) against the
#    torch operations (gpu_kernel_check.py), and the hand-off of the device work to the
#    Recorder's thread against the inline recording, with and without the kernel
#    (gpu_offload_check.py).
# 2. Recorder overhead at the seed's scale (224 px, batch 64), each run with the kernel, the
#    hand-off and both as further variants: bf16 autocast with channels_last twice (two
#    processes: the spread between them), the first profiled (op tables, traces and the
#    device's busy time per step), the second also without each group of the default
#    collections in turn (--ablate) and with the writer in a process of its own, with and
#    without the kernels (--writer-process); fp32; then diagnostics: bf16 with the writer thread idle,
#    the CPU host-cost proxy on this machine's host (which calibrates the proxy that machines
#    without a GPU measure, docs/performance.md), the writer's cost to a launch-bound thread as
#    a thread and as a process (bench_writer_gil.py: the GIL's share, on this host) and fp32 with the full input images recorded
#    (the reference job's set).
# 3. Each capture run against the goals (capture_goals.py).
# 4. Unless REFERENCE_JOB=0: the reference job's GPU check (benchmarks/gpu_check.py), the seed
#    recipe with and without the Recorder (about 1.5 minutes).
# Under $OUT: capture.txt (tables and verdict), kernel_check.txt, gpu_check.txt, and
# figures.tgz with every JSON, the profile's tables and its gzipped traces: at most five
# files, since a lent GPU machine hands back eight. Each step's start is logged with the
# seconds since the script began.
set -u -o pipefail
OUT=${OUT:-gpu-figures}
REFERENCE_JOB=${REFERENCE_JOB:-1}
mkdir -p "$OUT/json" "$OUT/profile"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { echo "## [${SECONDS} s] $*"; }
quiet() { grep -v -e USDT -e _warn_once -e 'Profiler clears events'; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, torchvision, triton; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
nproc
step "kernel and hand-off checks"
$PY benchmarks/gpu_kernel_check.py 2>&1 | tee "$OUT/kernel_check.txt"
$PY benchmarks/gpu_offload_check.py 2>&1 | tee -a "$OUT/kernel_check.txt"
$PY benchmarks/gpu_offload_check.py --no-triton 2>&1 | tee -a "$OUT/kernel_check.txt"
bench=(benchmarks/bench_capture.py --device cuda --size 224 --batch 64 --steps 50)
variants=(--triton --deferred)
step "bf16 + channels_last, run 1 (profiled)"
$PY "${bench[@]}" --rounds 8 --precision bf16 --channels-last "${variants[@]}" --profile "$OUT/profile" --json "$OUT/json/capture_bf16.json" 2>&1 | quiet | tee "$OUT/capture.txt"
gzip -f "$OUT"/profile/*.json  # the traces, a few hundred kilobytes each once compressed
step "bf16 + channels_last, run 2, with the collections' ablations and the writer process"
$PY "${bench[@]}" --rounds 8 --precision bf16 --channels-last "${variants[@]}" --ablate --writer-process --json "$OUT/json/capture_bf16_run2.json" 2>&1 | tee -a "$OUT/capture.txt"
step "fp32"
$PY "${bench[@]}" --rounds 6 --precision fp32 "${variants[@]}" --json "$OUT/json/capture_fp32.json" 2>&1 | tee -a "$OUT/capture.txt"
step "diagnostics: bf16 with the writer idle, the host-cost proxy, the writer GIL, fp32 with full inputs"
$PY "${bench[@]}" --rounds 3 --precision bf16 --channels-last --no-write "${variants[@]}" --json "$OUT/json/capture_bf16_no_write.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/bench_capture.py --host-proxy --precision bf16 --channels-last --deferred --json "$OUT/json/capture_host_proxy.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/bench_writer_gil.py --json "$OUT/json/writer_gil.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY "${bench[@]}" --rounds 3 --precision fp32 --full-inputs --json "$OUT/json/capture_fp32_full_inputs.json" 2>&1 | tee -a "$OUT/capture.txt"
if [ "${COMPILE:-0}" != 0 ]; then  # opt-in (about 2 minutes): the compiled model, bf16
  step "torch.compile: bf16 + channels_last, compiled with and without the Recorder"
  $PY benchmarks/bench_compile.py --device cuda --size 224 --width 64 --batch 64 --precision bf16 --channels-last --threads 0 --rounds 5 --json "$OUT/json/compile_bf16.json" 2>&1 | quiet | tee -a "$OUT/capture.txt"
fi
step "against the goals"
$PY benchmarks/capture_goals.py "$OUT"/json/capture_*.json 2>&1 | tee -a "$OUT/capture.txt"
tar -czf "$OUT/figures.tgz" -C "$OUT" json profile && rm -rf "$OUT/json" "$OUT/profile"
if [ "$REFERENCE_JOB" != 0 ]; then
  step "the reference job"
  $PY benchmarks/gpu_check.py --out /tmp/modelrules-gpu-check --json "$OUT/gpu_check.json" 2>&1 | tail -n 20 | tee "$OUT/gpu_check.txt"
fi
step "done"
