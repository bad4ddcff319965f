"""What every part of the harness shares: paths, the workloads, the environment of children."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = BENCH_DIR.parent
BASELINES_DIR = BENCH_DIR / "baselines"
RESULTS_DIR = BENCH_DIR / "results"
WRK_SCRIPT = BENCH_DIR / "harness" / "post.lua"

N_SAMPLES = 2000
N_FEATURES = 32
BATCH_ROWS = 64

# Every process that runs a model gets what a `resources: {cpus: 1}` replica gets from the local
# executor: math libraries sized to one thread. Applied to the raw baseline and the hand-written
# server too, so that no side is slowed down (or sped up) by thread oversubscription.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

# Target keys, in report order.
CEILING = "ceiling"
HANDWRITTEN = "handwritten"
PLATFORM = "platform"
PLATFORM_NO_BATCHING = "platform_no_batching"


@dataclass(frozen=True, slots=True)
class Workload:
    id: str  # "W1"
    name: str  # "tiny"
    model: str  # what the estimator is, for the report
    batching: bool  # True: the platform target batches, and a non-batching platform row is added

    @property
    def slug(self) -> str:
        """A resource name for the platform: ``w1-tiny``."""
        return f"{self.id.lower()}-{self.name}"

    @property
    def targets(self) -> tuple[str, ...]:
        base = (CEILING, HANDWRITTEN, PLATFORM)
        return (*base, PLATFORM_NO_BATCHING) if self.batching else base


WORKLOADS: dict[str, Workload] = {
    "W1": Workload("W1", "tiny", "LogisticRegression(max_iter=1000)", batching=False),
    "W2": Workload(
        "W2",
        "batchable",
        "RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)",
        batching=True,
    ),
}

# The W2 platform variant's adaptive batching.
BATCHING = {"max_batch_size": 64, "max_delay_ms": 2}


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: ours, the thread limits, the harness importable."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **THREAD_ENV, "PYTHONPATH": path, **extra}
