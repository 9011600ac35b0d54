#!/usr/bin/env bash
# Issue 7's GPU figures in one call of the device tool (an H100/H200 machine with its own python3,
# jax and flax; nothing can be installed there from a registry). Run from the repository root:
#
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform any -d .whl ml_collections==1.1.0 flax==0.12.8   # once, here
#   device run: bash benchmarks/gpu_check.sh   (carry .whl)
#
# Prints the alignment step's model FLOPs utilisation in bf16 at several batch sizes (last line
# `mfu=<ratio>`, of the largest batch), and where a profiled step's GPU time goes.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BATCHES=${BATCHES:-64,256,1024}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
# The image's jax may be newer than our pin: prefer the pinned flax if a tiny step trains with
# it (importing alone does not show an API the step calls at trace time), else the image's.
# SMOKE=0 skips that check (about 25 s) where this image is known to take the pinned flax.
smoke() { python3 benchmarks/utilization.py --variant tiny --batch 8 --steps 1 --warmup 1; }
if [ "${SMOKE:-1}" != 0 ] && ! smoke >"$OUT/smoke.log" 2>&1; then
  echo "pinned flax failed a tiny step with this jax (see smoke.log); using the image's flax"
  rm -rf /tmp/site/flax /tmp/site/flax-*
  smoke >>"$OUT/smoke.log" 2>&1 || { echo "tiny step failed with the image's flax too"; tail -20 "$OUT/smoke.log"; }
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
# The optimized HLO of each compiled step, so that the profile's kernels can be traced back to
# the model code (trace_summary.py --hlo); the last one written is the profiled batch's.
XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=/tmp/hlo --xla_dump_hlo_module_re=.*train_step.*" \
  python3 benchmarks/utilization.py --batch "$BATCHES" --steps 10 --warmup 3 \
  --profile_dir /tmp/profile "$@" 2>&1 | tee "$OUT/utilization.log"
cp "$(find /tmp/profile -name perfetto_trace.json.gz | tail -1)" "$OUT/" 2>/dev/null
hlo=$(ls -t /tmp/hlo/*train_step*after_optimizations.txt 2>/dev/null | head -1)
[ -n "$hlo" ] && gzip -c "$hlo" > "$OUT/step_after_optimizations.txt.gz"
python3 benchmarks/trace_summary.py /tmp/profile --top 30 ${hlo:+--hlo "$hlo"} \
  | tee "$OUT/trace_summary.txt"
grep '^mfu=' "$OUT/utilization.log" | tail -1
