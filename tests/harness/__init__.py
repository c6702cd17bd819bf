"""Test harness: a real HTTP Kubernetes API on loopback (kmock + apiserver semantics) and a one-node cluster
(Job controller, scheduler, kubelet running pods as local processes). See docs/testing.md."""

from .apiserver import ApiServer, PrinterColumn, RunningApiServer, run_apiserver
from .cluster import Cluster, PodNotReady, expand_vars
from .selectors import parse_field_selector, parse_label_selector

__all__ = [
    "ApiServer",
    "Cluster",
    "PodNotReady",
    "PrinterColumn",
    "RunningApiServer",
    "expand_vars",
    "parse_field_selector",
    "parse_label_selector",
    "run_apiserver",
]
