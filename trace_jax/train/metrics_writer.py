"""Scalars to `metrics.jsonl` and TensorBoard event files in the workdir (process 0 only)."""

from __future__ import annotations

import json
import pathlib
import time

import jax


class MetricsWriter:

    def __init__(self, workdir: str | pathlib.Path):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "time": time.time(),
            **{f"{prefix}/{k}": float(v) for k, v in scalars.items()},
        }
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in scalars.items():
            # TensorBoard tag names may not contain "@".
            self._tb.add_scalar(f"{prefix}/{k}".replace("@", "_at_"), float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
