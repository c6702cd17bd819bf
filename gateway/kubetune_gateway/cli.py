"""`kubetune-api`: the OpenAI-compatible fine-tuning API server (settings from KUBETUNE_API_* env).

It reads the tokens file and the config file at start-up and stops, naming the file and the key,
when either is missing or wrong; afterwards each is re-read when it changes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kubetune_gateway.app import make_app
from kubetune_gateway.auth import parse_tokens
from kubetune_gateway.config import parse_config
from kubetune_gateway.kube import Kube, load_config
from kubetune_gateway.settings import GatewaySettings
from kubetune_gateway.store import FileStore
from kubetune_gateway.watched import WatchedFile

log = logging.getLogger("kubetune_gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubetune-api", description=__doc__)
    parser.add_argument("--host", help="address to listen on (env KUBETUNE_API_HOST)")
    parser.add_argument("--port", type=int, help="port (env KUBETUNE_API_PORT)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    changes: dict[str, Any] = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    return GatewaySettings(**changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from(args)
        tokens = WatchedFile(settings.tokens_file, parse_tokens)
        config = WatchedFile(settings.config_file, parse_config)
        table, catalog = tokens.load(), config.load()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"kubetune-api: cannot start: {exc}", file=sys.stderr)
        return 2
    log.info(
        "%d token(s), %d tenant(s), %d catalog model(s); listening on %s:%d",
        len(table),
        len(catalog.tenants),
        len(catalog.catalog),
        settings.host,
        settings.port,
    )
    pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="io")
    kube = Kube(load_config(), pool)
    app = make_app(
        jobs=kube,
        files=FileStore(pool),
        tokens=tokens,
        config=config,
        pool=pool,
        max_upload_bytes=settings.max_upload_bytes,
    )
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=log)
    finally:
        kube.close()
        pool.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
