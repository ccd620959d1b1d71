#!/usr/bin/env bash
# The GPU figures of docs/recording.md and docs/reference_job.md in one go, on a machine with
# one CUDA GPU and PyTorch installed (the package is used from this checkout, not installed):
#
#   OUT=gpu-figures bash benchmarks/gpu_figures.sh
#
# 1. Recorder overhead at the seed's scale (224 px, batch 64): fp32 and bf16 autocast with
#    channels_last, each also with the optional Triton kernel for the ReLU counts (checked
#    against the torch operations on this GPU first, gpu_kernel_check.py), with the device
#    work on the Recorder's thread (checked equal to the inline recording first,
#    gpu_offload_check.py) and with both; bf16 profiled
#    (op tables and the device's busy time per step); fp32 again with the full input images
#    recorded (the reference job's set); bf16 with the writer thread idle (both ways of
#    counting); the CPU host-cost proxy (--host-proxy, bf16 channels_last,
#    with the hand-off: the training thread's CPU time against the GPU's).
# 2. The reference job's GPU check (benchmarks/gpu_check.py): seed recipe, with and without
#    the Recorder. About 8 minutes on one H100.
# 3. Each capture run against the goals (capture_goals.py), printed last.
# Under $OUT: capture.txt, kernel_check.txt, gpu_check.txt, the bf16 profile's tables in
# profile/ and every JSON in figures.tgz (seven files: a lent GPU machine hands back eight).
set -u -o pipefail
OUT=${OUT:-gpu-figures}
mkdir -p "$OUT/json" "$OUT/profile"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
nproc
# the optional Triton kernel: equal counts on this GPU first, then a variant in the benchmark
$PY benchmarks/gpu_kernel_check.py 2>&1 | tee "$OUT/kernel_check.txt"
# the Recorder's thread and side stream (capture/offload.py): the same values as inline
$PY benchmarks/gpu_offload_check.py 2>&1 | tee -a "$OUT/kernel_check.txt"
$PY benchmarks/gpu_offload_check.py --no-triton 2>&1 | tee -a "$OUT/kernel_check.txt"
bench=(benchmarks/bench_capture.py --device cuda --size 224 --batch 64 --steps 50 --rounds 6)
$PY "${bench[@]}" --precision fp32 --triton-counts --deferred --json "$OUT/json/capture_fp32.json" 2>&1 | tee "$OUT/capture.txt"
$PY "${bench[@]}" --precision bf16 --channels-last --triton-counts --deferred --profile "$OUT/profile" --json "$OUT/json/capture_bf16.json" 2>&1 | grep -v -e USDT -e _warn_once -e 'Profiler clears events' | tee -a "$OUT/capture.txt"
rm -f "$OUT"/profile/*.json  # the traces (megabytes each); the tables stay
$PY "${bench[@]}" --precision fp32 --full-inputs --rounds 3 --json "$OUT/json/capture_fp32_full_inputs.json" 2>&1 | tee -a "$OUT/capture.txt"
# the training thread's share (writer idle), and the CPU proxy on this machine's host, which
# calibrates the proxy that machines without a GPU measure (docs/recording.md)
$PY "${bench[@]}" --precision bf16 --channels-last --no-write --triton-counts --deferred --rounds 3 --json "$OUT/json/capture_bf16_no_write.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/bench_capture.py --host-proxy --precision bf16 --channels-last --deferred --json "$OUT/json/capture_host_proxy.json" 2>&1 | tee -a "$OUT/capture.txt"
$PY benchmarks/gpu_check.py --out /tmp/modelrules-gpu-check --json "$OUT/json/gpu_check.json" 2>&1 | tail -n 20 | tee "$OUT/gpu_check.txt"
# last, so that the output ends with it: each capture run against the goals
$PY benchmarks/capture_goals.py "$OUT"/json/capture_*.json 2>&1 | tee -a "$OUT/capture.txt"
tar -czf "$OUT/figures.tgz" -C "$OUT" json && rm -rf "$OUT/json"
