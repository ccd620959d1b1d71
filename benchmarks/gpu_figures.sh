#!/usr/bin/env bash
# The GPU figures of docs/recording.md and docs/reference_job.md in one go, on a machine with
# one CUDA GPU and PyTorch installed (the package is used from this checkout, not installed):
#
#   OUT=gpu-figures bash benchmarks/gpu_figures.sh
#
# 1. Recorder overhead at the seed's scale (224 px, batch 64): fp32 and bf16 autocast with
#    channels_last, each also with the optional Triton kernel for the ReLU counts (checked
#    against the torch operations on this GPU first, gpu_kernel_check.py); fp32 again with the
#    full input images recorded (the reference job's set); bf16 with the writer thread idle;
#    the CPU host-cost proxy (--host-proxy).
# 2. The reference job's GPU check (benchmarks/gpu_check.py): seed recipe, with and without
#    the Recorder. Each writes JSON under $OUT. About 7 minutes on one H100.
set -u -o pipefail
OUT=${OUT:-gpu-figures}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
nproc
# the optional Triton kernel: equal counts on this GPU first, then a variant in the benchmark
$PY benchmarks/gpu_kernel_check.py 2>&1 | tee "$OUT/kernel_check.txt"
bench=(benchmarks/bench_capture.py --device cuda --size 224 --batch 64 --steps 50 --rounds 6)
$PY "${bench[@]}" --precision fp32 --triton-counts --json "$OUT/capture_fp32.json" 2>&1 | tee "$OUT/capture.txt"
$PY "${bench[@]}" --precision bf16 --channels-last --triton-counts --json "$OUT/capture_bf16.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY "${bench[@]}" --precision fp32 --full-inputs --rounds 3 --json "$OUT/capture_fp32_full_inputs.json" 2>&1 | tee -a "$OUT/capture.txt"
# the training thread's share (writer idle), and the CPU proxy on this machine's host, which
# calibrates the proxy that machines without a GPU measure (docs/recording.md)
$PY "${bench[@]}" --precision bf16 --channels-last --no-write --rounds 3 --json "$OUT/capture_bf16_no_write.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/bench_capture.py --host-proxy --precision bf16 --json "$OUT/capture_host_proxy.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/gpu_check.py --out /tmp/modelrules-gpu-check --json "$OUT/gpu_check.json" 2>&1 | tail -n 20 | tee "$OUT/gpu_check.txt"
