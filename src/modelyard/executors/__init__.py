"""Where replicas run: one interface (base.Executor), a local and an in-memory implementation."""

from modelyard.executors.base import Executor, ReplicaLaunch, ReplicaProcess

__all__ = ["Executor", "ReplicaLaunch", "ReplicaProcess"]
