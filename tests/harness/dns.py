"""Cluster DNS for the test kubelet: ``<hostname>.<subdomain>`` of a pod resolves to its 127.0.0.N.

On a real cluster, CoreDNS answers ``<hostname>.<subdomain>.<namespace>.svc.cluster.local`` for a pod
whose ``spec.subdomain`` names a headless Service that selects it, and the pod's resolv.conf search
path makes ``<hostname>.<subdomain>`` enough. Here every pod shares the host's network and resolver,
so the kubelet starts such pods in a private mount namespace (``unshare``) in which the cluster's
hosts file is bind-mounted over ``/etc/hosts``. glibc reads ``/etc/hosts`` on every lookup, so a
record appended when a later pod starts is seen at once by the pods already running, the way a
DNS record appears when a pod gets its IP. Records are only ever appended (names carry the attempt,
so they are never reused) and each is one short write, so a reader never sees half a line.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
# Run in the new mount namespace: hide the host's /etc/hosts behind the cluster's, then become the
# container's command (exec, so signals reach it as they would reach PID 1's child).
_BIND_AND_EXEC = 'mount --bind "$0" /etc/hosts && exec "$@"'


class NoClusterDNS(Exception):
    """This machine cannot give a process its own /etc/hosts (no unshare, or no namespaces)."""


class ClusterDNS:
    def __init__(self, root: Path) -> None:
        self.hosts = root / "hosts"
        self._lock = threading.Lock()
        self._prefix: list[str] | None = None
        root.mkdir(parents=True, exist_ok=True)
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
        self.hosts.write_text(base.rstrip("\n") + "\n# kubetune test cluster: pods of headless Services\n")

    def publish(self, ip: str, hostname: str, subdomain: str, namespace: str) -> None:
        """The record CoreDNS would serve for this pod, and the short name the search path resolves."""
        fqdn = f"{hostname}.{subdomain}.{namespace}.svc.{CLUSTER_DOMAIN}"
        with self._lock, self.hosts.open("a") as hosts:
            hosts.write(f"{ip} {fqdn} {hostname}.{subdomain}\n")

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run with the cluster's hosts file as its /etc/hosts."""
        return [*self._namespace_prefix(), "sh", "-c", _BIND_AND_EXEC, str(self.hosts), *argv]

    def _namespace_prefix(self) -> list[str]:
        """``unshare --mount`` as root; a user namespace maps an unprivileged user to root for the mount."""
        if self._prefix is not None:
            return self._prefix
        unshare = shutil.which("unshare")
        if unshare is None:
            raise NoClusterDNS("unshare (util-linux) is not installed")
        errors = []
        for prefix in ([unshare, "--mount", "--"], [unshare, "--user", "--map-root-user", "--mount", "--"]):
            probe = subprocess.run(
                [*prefix, "sh", "-c", _BIND_AND_EXEC, str(self.hosts), "true"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if probe.returncode == 0:
                self._prefix = prefix
                return prefix
            errors.append(f"{' '.join(prefix)}: {probe.stderr.strip()}")
        raise NoClusterDNS("cannot bind-mount /etc/hosts in a mount namespace: " + "; ".join(errors))
