#!/usr/bin/env bash
# One-command GPU check of issue 23 (sd2 at its real size), for a session lent a GPU.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root;
#                                                # results under $OUT (or /tmp/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-dry-run   # here: the same parts on the tiny preset, CPU
#
# Parts, in this order, each in its own process under `timeout` (a failure or timeout loses only
# that part):
#   1. fp16    : bench_sd2.py --dtype fp16: per-stage seconds of one 512-px view, projected
#                2048x4096 panorama for fast/reference/aog, plus one real fast and one real
#                reference panorama in the same process (their measured ratio: issue 23's 4x).
#   2. gma     : the sd2 GMA's forward (7 images, fp16) under the chunked scan's CUDA plan before
#                and now (log-depth carry across chunks, larger blocks without gradients):
#                op counts, seconds, output difference (benchmarks/bench_gma_carry.py).
#   3. train1/2: bench_sd2.py --train at batch 1 and 2, bf16 mixed precision (with and without
#                gradient checkpointing, via benchmarks/bench_sd2_train.py's measure_train_step
#                when that file exists).
#   4. bf16    : the inference stages in bf16 (projection only).
#   5. scan    : the chunked selective scan on CUDA (D=640, L=4096: the GMA's first stage) vs
#                opama's reference loop and mambapy's pscan (benchmarks/bench_scan.py); mamba-ssm's
#                CUDA kernels are not installable on the lent machine (no network, no build), so
#                its "cuda" method is skipped and env.txt says so.
# Files under $OUT: gpu_check.log, env.txt, gma_carry.txt, scan.txt, infer_fp16.json,
# infer_bf16.json, train_b1.json, train_b2.json.
# Time limits per part (seconds) can be changed with T_SCAN, T_GMA, T_FP16, T_BF16, T_TRAIN (worst
# case with the defaults: 240 + 60 + 2 x 150 + 75 + 50 = 725 s, plus the wheel install; on the H200 of
# benchmarks/results/h200-gpu_check.log the parts took 73 (before the reference panorama, ~50 s
# more), 129, 109, 59 and 50 s). SKIP_TRAIN=1 leaves out the two training parts (measured there
# already): then the run fits one 600-s command with room to spare.
set -u
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  echo "no .whl/ wheels here: using the installed packages"
fi
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
T_SCAN=${T_SCAN:-50}; T_GMA=${T_GMA:-60}; T_FP16=${T_FP16:-240}; T_BF16=${T_BF16:-75}; T_TRAIN=${T_TRAIN:-150}
if [ $DRY = 1 ]; then
  DEV="--device cpu --preset tiny --quick --threads 1 --repeat 2"
  FP16=fp32  # fp16 needs CUDA: the dry run takes fp32 and bf16
  TRAIN_DTYPE=fp32
  TRAIN_EXTRA=""
  SCAN="--device cpu --quick --methods chunked ref --repeat 1"
  GMA="--device cpu --quick --repeat 1"
else
  DEV="--device cuda --preset sd2 --repeat 3"
  FP16=fp16
  TRAIN_EXTRA="--quick"  # a 1024x2048 canvas: it only changes the (CPU) sample build; views stay 512 px
  TRAIN_DTYPE=${TRAIN_DTYPE:-bf16}  # the training steps' --mixed-precision (override with TRAIN_DTYPE=fp16|fp32)
  GMA="--device cuda --dtype fp16 --repeat 5"
  SCAN="--device cuda --D 640 --L 4096 --methods chunked cuda ref pscan mixer:opama mixer:hf-mambapy --cap 20"
fi
python3 - > "$OUT/env.txt" 2>&1 <<'EOF'
import sys, torch
sys.path.insert(0, "benchmarks")
from _common import machine_info
print(machine_info(("diffusers", "transformers", "accelerate", "safetensors")))
try:
    import mamba_ssm  # noqa: F401
    print("mamba-ssm: importable")
except Exception as e:
    print(f"mamba-ssm: NOT available ({type(e).__name__}: {e}); the chunked scan is what runs")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
EOF
cat "$OUT/env.txt" | tee -a "$LOG"
part() {  # part NAME SECONDS COMMAND...
  local name=$1 t=$2; shift 2
  echo "=== $name (timeout ${t}s): $*" | tee -a "$LOG"
  local s=$SECONDS
  timeout --kill-after=10 "$t" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - s)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')" | tee -a "$LOG"
}
# most wanted first: if the device time runs out, the later parts are the ones lost
part "infer $FP16" "$T_FP16" python3 benchmarks/bench_sd2.py $DEV --dtype $FP16 --panorama fast reference --json "$OUT/infer_fp16.json"
part "gma carry" "$T_GMA" bash -c "python3 benchmarks/bench_gma_carry.py $GMA | tee '$OUT/gma_carry.txt'"
for b in 1 2; do
  [ "${SKIP_TRAIN:-0}" = 1 ] && { echo "=== train batch $b: skipped (SKIP_TRAIN=1)" | tee -a "$LOG"; continue; }
  part "train batch $b" "$T_TRAIN" python3 benchmarks/bench_sd2.py $DEV --dtype $TRAIN_DTYPE $TRAIN_EXTRA --no-stages --train --batch $b --json "$OUT/train_b$b.json"
done
part "infer bf16" "$T_BF16" python3 benchmarks/bench_sd2.py $DEV --dtype bf16 --json "$OUT/infer_bf16.json"
part scan "$T_SCAN" bash -c "python3 benchmarks/bench_scan.py $SCAN | tee '$OUT/scan.txt'"
echo "done in $SECONDS s; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
