"""Drive the real Helm (v4, through the `helm-sdkpy` bindings) for the chart tests.

Run it with the Python 3.12 venv that holds helm-sdkpy (`make .venv-helm/.installed`); it needs only the
standard library besides helm-sdkpy, and prints one JSON document on stdout:

    .venv-helm/bin/python tests/chart/helm_tool.py version
    .venv-helm/bin/python tests/chart/helm_tool.py lint CHART_DIR
    .venv-helm/bin/python tests/chart/helm_tool.py install CHART_DIR --kubeconfig K --namespace NS --release R \
        [--values-json FILE]

helm-sdkpy has no `template`/dry-run action and its lint takes no values, so the tests lint a copy of the chart whose
values.yaml holds the scenario's values (merged), and render by a real `helm install` into the test API server
(tests/harness/apiserver.py), reading the release's manifest, hooks and notes from the result. Release records go
to Helm's in-memory storage driver (HELM_DRIVER=memory): the emulator does not speak protobuf, which Helm's Secret
storage uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

os.environ.setdefault("HELM_DRIVER", "memory")  # read by the Go library when it builds a configuration

import helm_sdkpy


def _lint(args: argparse.Namespace) -> dict[str, Any]:
    config = helm_sdkpy.Configuration(namespace=args.namespace)
    return asyncio.run(helm_sdkpy.Lint(config).run(args.chart))


def _install(args: argparse.Namespace) -> dict[str, Any]:
    values = None
    if args.values_json:
        with open(args.values_json) as f:  # noqa: PTH123  (kept stdlib-simple)
            values = json.load(f)
    config = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    release = asyncio.run(
        helm_sdkpy.Install(config).run(
            args.release,
            args.chart,
            values=values,
            create_namespace=True,
            wait=False,
            timeout=args.timeout,
            take_ownership=args.take_ownership,
        )
    )
    release.pop("chart", None)  # the chart's own files, base64: not needed by the tests
    return release


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version")
    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    lint.add_argument("--namespace", default="default")
    install = sub.add_parser("install")
    install.add_argument("chart")
    install.add_argument("--kubeconfig", required=True)
    install.add_argument("--namespace", required=True)
    install.add_argument("--release", required=True)
    install.add_argument("--values-json")
    install.add_argument("--timeout", type=int, default=60)
    install.add_argument("--take-ownership", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            result: Any = {"helm": helm_sdkpy.get_version(), "helm_sdkpy": helm_sdkpy.__version__}
        elif args.command == "lint":
            result = _lint(args)
        else:
            result = _install(args)
    except helm_sdkpy.HelmError as e:
        json.dump({"error": type(e).__name__, "message": str(e)}, sys.stdout)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
