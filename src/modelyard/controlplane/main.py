"""The control-plane process: the API, the store and the controllers. Started by ``server``."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from modelyard import inbox
from modelyard.alarms.evaluator import AlarmEvaluator
from modelyard.controlplane.app import create_app
from modelyard.controlplane.autoscale.autoscaler import Autoscaler
from modelyard.controlplane.deps import Context
from modelyard.controlplane.reconcile.asyncq import AsyncQueue, Notifier
from modelyard.controlplane.reconcile.endpoints import EndpointController
from modelyard.controlplane.reconcile.plan import PlanSettings
from modelyard.controlplane.store.repo import Store
from modelyard.executors.local import LocalExecutor
from modelyard.metrics.recorder import Recorder
from modelyard.process import absorb_reraised_signals, child_start, watch_parent
from modelyard.transform.runner import TransformRunner


def main() -> None:
    fd, settings, token = child_start("modelyard-controlplane", logging.INFO)

    store = Store(settings.store_url)
    store.migrate()
    executor = LocalExecutor(settings.run_dir, settings.cache_dir, settings.host)
    cfg = PlanSettings(
        drain_delay_s=settings.drain_delay_s,
        stop_grace_s=settings.stop_grace_s,
        restart_backoff_s=settings.restart_backoff_s,
        max_start_attempts=settings.max_start_attempts,
    )
    controller = EndpointController(store, executor, settings.logs_dir, cfg)
    queue = AsyncQueue(
        store,
        inbox.inbox_dir(settings.run_dir),
        wake_controller=controller.wake,
        retention_s=settings.async_retention_s,
        state_dir=settings.state_dir,
    )
    notifier = Notifier(store)
    transforms = TransformRunner(store, executor, settings.logs_dir, settings.state_dir)
    recorder = Recorder(
        store,
        retention_s=settings.metrics_retention_s,
        rollup_retention_s=settings.metrics_rollup_retention_s,
    )
    evaluator = AlarmEvaluator(store, written_through=recorder.written_through)
    autoscaler = Autoscaler(
        store,
        interval_s=settings.autoscale_interval_s,
        window_s=settings.autoscale_window_s,
        wake_controller=controller.wake,
    )
    ctx = Context(
        store=store,
        token=token,
        logs_dir=settings.logs_dir,
        gateway_url=f"http://{settings.host}:{settings.gateway_port}",
        wake=controller.wake,
        wake_transforms=transforms.wake,
        recorder=recorder,
        wake_alarms=evaluator.wake,
        state_dir=settings.state_dir,
        inbox_dir=inbox.inbox_dir(settings.run_dir),
    )
    stop = threading.Event()
    loop = threading.Thread(
        target=controller.run, args=(stop, settings.reconcile_interval_s), daemon=True
    )
    loop.start()
    threading.Thread(
        target=queue.run, args=(stop, settings.async_poll_interval_s), daemon=True
    ).start()
    threading.Thread(target=notifier.run, args=(stop, 0.25), daemon=True).start()
    threading.Thread(target=transforms.run, args=(stop, 1.0), daemon=True).start()
    threading.Thread(target=recorder.run, args=(stop,), daemon=True).start()
    threading.Thread(target=evaluator.run, args=(stop,), daemon=True).start()
    threading.Thread(target=autoscaler.run, args=(stop,), daemon=True).start()
    threading.Thread(target=watch_parent, args=(stop,), daemon=True).start()

    config = uvicorn.Config(
        create_app(ctx), log_level="warning", access_log=False, lifespan="off", http="httptools"
    )
    server = uvicorn.Server(config)
    absorb_reraised_signals()
    try:
        server.run(sockets=[socket.socket(fileno=fd)])
    finally:
        stop.set()
        controller.wake.set()
        queue.wake.set()
        evaluator.wake.set()
        loop.join(timeout=10)
        queue.close()
        notifier.close()
        transforms.close()
        recorder.close()
        controller.stop_all(settings.stop_grace_s)
        executor.close()
        store.close()


if __name__ == "__main__":
    main()
