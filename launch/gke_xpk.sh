#!/usr/bin/env bash
# GKE with XPK (github.com/AI-Hypercomputer/xpk): a JobSet whose every pod runs the main
# command; jax.distributed.initialize() finds its peers through the JobSet environment.
#
#   CLUSTER=my-cluster TPU_TYPE=v5p-64 IMAGE=gcr.io/my-project/trace_jax:latest \
#       launch/gke_xpk.sh --config=configs/align.py --workdir=gs://my-bucket/runs/align
#
# IMAGE: a container with this repository at /app after `make setup` and `jax[tpu]`.
set -euo pipefail
: "${CLUSTER:?set CLUSTER}" "${TPU_TYPE:?set TPU_TYPE}" "${IMAGE:?set IMAGE}"
WORKLOAD=${WORKLOAD:-trace-jax-$(date +%Y%m%d-%H%M%S)}
ARGS=$(printf ' %q' "$@")
xpk workload create \
  --cluster="${CLUSTER}" \
  --workload="${WORKLOAD}" \
  --tpu-type="${TPU_TYPE}" \
  --num-slices="${NUM_SLICES:-1}" \
  --docker-image="${IMAGE}" \
  --command="cd /app && .venv/bin/python -m trace_jax.main${ARGS}"
