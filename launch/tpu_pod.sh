#!/usr/bin/env bash
# Cloud TPU VM pod: the same main command on every worker; JAX finds the pod by itself.
#
#   TPU_NAME=my-pod ZONE=us-central2-b launch/tpu_pod.sh \
#       --config=configs/align.py --workdir=gs://my-bucket/runs/align
#
# The repository must be on every worker (first run: REPO_URL=... to clone it). The workdir
# should be a bucket every worker can write (Orbax writes one checkpoint from all hosts).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-trace_jax}
ARGS=$(printf ' %q' "$@")
SETUP=""
if [ -n "${REPO_URL:-}" ]; then
  SETUP="[ -d ${REPO_DIR} ] || git clone ${REPO_URL} ${REPO_DIR};"
fi
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all --command="
  set -e; ${SETUP} cd ${REPO_DIR} && make setup PYTHON=python3.11 &&
  .venv/bin/pip install --quiet 'jax[tpu]>=0.10.2,<0.11' &&
  .venv/bin/python -m trace_jax.main${ARGS}"
