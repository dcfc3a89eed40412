"""The work of `multiplex ipam show|check|gc`: open the store, run the report, print it.

A CNIError (a damaged database, an API server that refuses) is printed as one line on stderr
with exit code 1, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from typing import NoReturn, Optional

import click


def _kube_client(kubeconfig: Optional[str]):
    from ..ipam.kube.store import resolve_kubeconfig
    from ..k8s.client import KubeClient

    return KubeClient(resolve_kubeconfig(kubeconfig or ""))


def _fail(what: str, e: Exception) -> NoReturn:
    details = getattr(e, "details", "")
    click.echo(f"{what}: {getattr(e, 'msg', e)}" + (f" ({details})" if details else ""), err=True)
    sys.exit(1)


def show_cluster(kubeconfig: Optional[str], allocations: bool, output: str) -> None:
    """Each pool and block of the cluster (the Kubernetes store), with allocations on request."""
    from ..cni.errors import CNIError
    from ..ipam.kube.store import KubeStore
    from ..ipam.show import cluster_report, table

    try:
        report = cluster_report(KubeStore(_kube_client(kubeconfig), node=""),
                                with_allocations=allocations or output == "json")
    except CNIError as e:
        _fail("ipam show", e)
    click.echo(json.dumps(report, indent=2) if output == "json" else "\n".join(table(report, allocations)))


def show_node(data_dir: Optional[str], output: str) -> None:
    """Leases per pool in this node's SQLite store."""
    from ..cni.errors import CNIError
    from ..ipam.report import pool_report

    try:
        report = pool_report(data_dir)
    except CNIError as e:  # e.g. a damaged database that cannot be rebuilt: say so, no traceback
        _fail("ipam show", e)
    if output == "json":
        click.echo(json.dumps(report, indent=2))
        return
    for pool in report:
        click.echo(f"{pool['pool']}: {pool['used']} used, {pool['free']} free")
        for lease in pool.get("leases", []):
            click.echo(f"  {lease['address']:<40} {lease['network']:<24} {lease['containerID'][:12]} {lease['ifname']}")


def check_leases(data_dir: Optional[str], cache_dir: Optional[str], repair: bool, force: bool, live: bool,
          output: str) -> int:
    """Compare this node's leases with the meta plugin's cache (repair on request); the exit code:
    0 when nothing is left to fix (or there is no database), 1 otherwise."""
    from ..cni.errors import CNIError
    from ..ipam import repair as ipam_repair
    from ..ipam.report import default_data_dir
    from ..ipam.sqlite.store import SQLiteStore

    store = SQLiteStore(data_dir or default_data_dir(), cache_dir=cache_dir)
    if not (os.path.exists(store.path) or os.path.exists(store.marker)):
        click.echo(f"ipam check: no IPAM database at {store.path} (no address was handed out on this node)")
        return 0
    try:
        with store:
            report = ipam_repair.check(store, repair=repair, force=force, cache_dir=cache_dir, live=live)
    except CNIError as e:
        _fail("ipam check", e)
    click.echo(json.dumps(report.to_dict(), indent=2) if output == "json" else "\n".join(report.lines()))
    return 0 if report.resolved else 1


def collect_garbage(kubeconfig: Optional[str], grace: float, every: Optional[float], dry_run: bool, output: str) -> None:
    """Collect once, or every `every` seconds (errors then are printed and retried, never fatal)."""
    from ..cni.errors import CNIError
    from ..ipam import gc as ipam_gc

    client = _kube_client(kubeconfig)

    def show(report) -> None:
        click.echo(json.dumps(report.to_dict()) if output == "json" else "\n".join(report.lines()))

    if every:
        ipam_gc.run_every(client, every, grace, on_report=show, dry_run=dry_run,
                          on_error=lambda e: click.echo(f"ipam gc: {getattr(e, 'msg', e)}", err=True))
        return
    try:
        show(ipam_gc.collect(client, grace, dry_run=dry_run))
    except CNIError as e:
        _fail("ipam gc", e)
