"""`kubetune-operator`: run the operator (settings from KUBETUNE_* env, CLI overrides).

It runs kopf in standalone mode (no peering): the Helm chart deploys one replica with the
Recreate strategy, so two operators never act on the same jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import threading
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kubetune_operator.controller import Controller
from kubetune_operator.metrics import OperatorMetrics
from kubetune_operator.settings import OperatorSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubetune-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", help="watch only this namespace (env KUBETUNE_NAMESPACE)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--trainer-image", help="default trainer image (env KUBETUNE_TRAINER_IMAGE)")
    parser.add_argument("--poll-interval", type=float, help="seconds between progress polls of a running job")
    parser.add_argument("--health-port", type=int, help="port of /healthz (kopf liveness), /readyz and /metrics")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> OperatorSettings:
    """KUBETUNE_* environment first, then the flags that were given (init values win in pydantic-settings)."""
    changes: dict[str, Any] = {
        key: value
        for key, value in {
            "namespace": args.namespace,
            "trainer_image": args.trainer_image,
            "poll_interval_seconds": args.poll_interval,
            "health_port": args.health_port,
        }.items()
        if value is not None
    }
    if args.all_namespaces:
        changes["namespace"] = None
    return OperatorSettings(**changes)


async def serve_probes(metrics: OperatorMetrics, ready: asyncio.Event, port: int) -> web.AppRunner:
    """/metrics and /readyz next to kopf's own /healthz (which answers on port + 1)."""

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if ready.is_set() else "starting", status=200 if ready.is_set() else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


async def run(settings: OperatorSettings, stop_flag: threading.Event | None = None) -> None:
    import kubetune_operator.handlers  # noqa: F401  (registers the kopf handlers)

    metrics = OperatorMetrics()
    controller = Controller.from_settings(settings, metrics)
    ready = asyncio.Event()
    runner = await serve_probes(metrics, ready, settings.health_port)
    try:
        await kopf.operator(
            standalone=True,
            clusterwide=settings.namespace is None,
            namespaces=[settings.namespace] if settings.namespace else [],
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port + 1}/healthz",
            memo=kopf.Memo(controller=controller),
            ready_flag=ready,
            stop_flag=stop_flag,
        )
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_prefix=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(run(settings_from(args)))


if __name__ == "__main__":
    main()
