#!/usr/bin/env bash
# Issue 7's GPU figures in one call of the device tool (an H100/H200 machine with its own python3,
# jax and flax; nothing can be installed there from a registry). Run from the repository root:
#
#   # once, here: the wheels the image lacks (flax pinned; the input pipeline's Grain and TFDS
#   # stack, promise built from its sdist) and a Weather-Captioned split for the pipeline figure
#   W=".venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl"
#   $W ml_collections==1.1.0 flax==0.12.8 grain==0.2.18 array_record==0.8.6 \
#       tensorflow-datasets==4.9.10 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 \
#       docstring_parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 \
#       termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0
#   .venv/bin/python -m pip wheel --no-deps -w .whl promise==2.3
#   D=.bench_data/weather_captioned/window_48/1.0.0; mkdir -p $D; S=<data_dir>/${D#.bench_data/}
#   cp $S/{dataset_info.json,features.json,metadata.json} $S/*-validation.array_record-* $D/
#   device run: SMOKE=0 BATCHES=1024 bash benchmarks/gpu_check.sh   (carry .whl .bench_data;
#   ~7 minutes)
#
# Checks the Pallas attention kernel against the batched path (tests/test_attention_gpu.py),
# then, once per attention implementation (ATTENTION_IMPLS, default xla,pallas), prints the
# alignment step's model FLOPs utilisation in bf16 at each of BATCHES and where a profiled
# step of the largest batch spends its GPU time; with .bench_data, how many Weather-Captioned
# examples a second the input pipeline gives the paper-size step with 0, 4 and 8 Grain worker
# processes (data.worker_count=-1 picks 8 on a 16-core host). The last lines are
# `<log>:mfu=<ratio>` per implementation, of the largest batch.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BATCHES=${BATCHES:-64,256,1024}
ATTENTION_IMPLS=${ATTENTION_IMPLS:-xla,pallas}
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
# The Pallas attention kernel against the batched path (tests/test_attention_gpu.py).
JAX_PLATFORMS= timeout 200 python3 -m pytest -q -s -p no:cacheprovider \
  tests/test_attention_gpu.py 2>&1 | tail -8 | tee "$OUT/attention_test.log"
# One measurement per attention implementation (ATTENTION_IMPLS, in turn on the same card),
# each with the optimized HLO of its step, so that the profile's kernels can be traced back to
# the model code (trace_summary.py --hlo); the last one written is the profiled batch's.
for impl in ${ATTENTION_IMPLS//,/ }; do
  echo "== model.attention_impl='$impl'"
  XLA_FLAGS="${XLA_FLAGS:-} --xla_dump_to=/tmp/hlo_$impl --xla_dump_hlo_module_re=.*train_step.*" \
    python3 benchmarks/utilization.py --batch "$BATCHES" --steps 10 --warmup 3 \
    --profile_dir "/tmp/profile_$impl" --set "model.attention_impl='$impl'" "$@" 2>&1 \
    | tee "$OUT/utilization_$impl.log"
  hlo=$(ls -t /tmp/hlo_"$impl"/*train_step*after_optimizations.txt 2>/dev/null | head -1)
  python3 benchmarks/trace_summary.py "/tmp/profile_$impl" --top 30 ${hlo:+--hlo "$hlo"} \
    > "$OUT/trace_summary_$impl.txt" && tail -45 "$OUT/trace_summary_$impl.txt"
done
# Data stalls: the input pipeline against the paper-size alignment step on this card, on the
# carried Weather-Captioned validation split (BENCHMARKS.md, "Input pipeline").
if [ -d .bench_data ]; then
  timeout 300 python3 benchmarks/input_pipeline.py --variant '' --data_name=weather_captioned \
    --data_dir=.bench_data --split validation --batch 256 --batches 100 --steps 30 \
    --worker_count 0,4,8 2>&1 | grep -v '^[IW][0-9]' | tee "$OUT/input_pipeline.log" | tail -8
fi
# The last implementation's raw profile and HLO, for a closer look.
cp "$(find "/tmp/profile_$impl" -name perfetto_trace.json.gz | tail -1)" "$OUT/" 2>/dev/null
[ -n "$hlo" ] && gzip -c "$hlo" > "$OUT/step_after_optimizations.txt.gz"
grep -H '^mfu=' "$OUT"/utilization_*.log
