"""The `multiplex` command line (when not called by a runtime). Each command imports what it needs."""
from __future__ import annotations

import json
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """multiplex: a meta CNI plugin. Called with CNI_COMMAND set, it is the plugin itself."""


@cli.command()
@click.option("--keep", is_flag=True, help="leave the lab up (remove it later with --down)")
@click.option("--down", is_flag=True, help="remove a lab left up by --keep")
@click.option("--pods", default=3, show_default=True, type=click.IntRange(2, 20), help="how many pods")
def lab(keep: bool, down: bool, pods: int) -> None:
    """A local lab: one node and pods in network namespaces, attached through multiplex."""
    from .lab import run_lab, teardown_lab

    if down:
        teardown_lab()
        return
    sys.exit(run_lab(pods=pods, keep=keep))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check CNI configs, conflists and NetworkAttachmentDefinition files against our schemas."""
    from .validate import validate_file

    bad = 0
    for path in files:
        problems = validate_file(path)
        if problems:
            bad += 1
            click.echo(f"{path}: invalid")
            for p in problems:
                click.echo(f"  {p}")
        else:
            click.echo(f"{path}: ok")
    sys.exit(1 if bad else 0)


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="the multiplex config (conf or conflist)")
def status(config_path: str) -> None:
    """Run CNI STATUS through multiplex for a config and report each network."""
    from .tools import run_status

    sys.exit(run_status(config_path))


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--valid", "valid", multiple=True, metavar="CONTAINERID[/IFNAME]",
              help="an attachment still in use (repeat); all others are removed")
def gc(config_path: str, valid: tuple[str, ...]) -> None:
    """Run CNI GC through multiplex: remove attachments not named with --valid."""
    from .tools import run_gc

    sys.exit(run_gc(config_path, list(valid)))


@cli.group()
def ipam() -> None:
    """The shared IPAM: leases, pools and blocks; cluster-wide garbage collection."""


def _kube_client(kubeconfig: str | None):
    from ..ipam.kube.store import resolve_kubeconfig
    from ..k8s.client import KubeClient

    return KubeClient(resolve_kubeconfig(kubeconfig or ""))


def _fail(what: str, e: Exception) -> None:
    details = getattr(e, "details", "")
    click.echo(f"{what}: {getattr(e, 'msg', e)}" + (f" ({details})" if details else ""), err=True)
    sys.exit(1)


@ipam.command("show")
@click.option("--store", type=click.Choice(["sqlite", "kubernetes"]), default="sqlite", show_default=True,
              help="sqlite: this node's leases; kubernetes: the cluster's pools and blocks")
@click.option("--data-dir", default=None, help="the node IPAM store directory (sqlite)")
@click.option("--kubeconfig", default=None, help="kubernetes: a kubeconfig (default: in-cluster or $KUBECONFIG)")
@click.option("--allocations", is_flag=True, help="kubernetes: list every allocation under its block")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_show(store: str, data_dir: str | None, kubeconfig: str | None, allocations: bool, output: str) -> None:
    """Leases per pool on this node, or (--store kubernetes) each pool and block of the cluster."""
    if store == "kubernetes":
        from ..cni.errors import CNIError
        from ..ipam.kube.store import KubeStore
        from ..ipam.show import cluster_report, table

        try:
            report = cluster_report(KubeStore(_kube_client(kubeconfig), node=""),
                                    with_allocations=allocations or output == "json")
        except CNIError as e:
            _fail("ipam show", e)
        click.echo(json.dumps(report, indent=2) if output == "json" else "\n".join(table(report, allocations)))
        return
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


@ipam.command("check")
@click.option("--data-dir", default=None, help="the node IPAM store directory (default <state root>/ipam)")
@click.option("--cache-dir", default=None, help="the meta plugin's cache (default <state root>/cache)")
@click.option("--repair", is_flag=True,
              help="rebuild a damaged database from the cache, lease again what the cache holds, release "
                   "leases of containers the cache does not know")
@click.option("--force", is_flag=True,
              help="with --repair: rebuild a damaged database even when the cache cannot account for every "
                   "attachment (no cache directory, unreadable entries)")
@click.option("--live/--no-live", default=True, show_default=True,
              help="look into each cached pod's netns: is the interface there, with its address")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_check(data_dir: str | None, cache_dir: str | None, repair: bool, force: bool, live: bool,
               output: str) -> None:
    """Compare this node's leases with the meta plugin's cache (and repair with --repair).

    Exit 0 when nothing is left to fix, 1 otherwise."""
    import os

    from ..cni.errors import CNIError
    from ..ipam import repair as ipam_repair
    from ..ipam.report import default_data_dir
    from ..ipam.sqlite.store import SQLiteStore

    store = SQLiteStore(data_dir or default_data_dir(), cache_dir=cache_dir)
    if not (os.path.exists(store.path) or os.path.exists(store.marker)):
        click.echo(f"ipam check: no IPAM database at {store.path} (no address was handed out on this node)")
        return
    try:
        with store:
            report = ipam_repair.check(store, repair=repair, force=force, cache_dir=cache_dir, live=live)
    except CNIError as e:
        _fail("ipam check", e)
    click.echo(json.dumps(report.to_dict(), indent=2) if output == "json" else "\n".join(report.lines()))
    sys.exit(0 if report.resolved else 1)


@ipam.command("gc")
@click.option("--kubeconfig", default=None, help="a kubeconfig (default: in-cluster or $KUBECONFIG)")
@click.option("--grace", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="seconds an address stays after its pod or node is first found gone")
@click.option("--every", type=click.FloatRange(min=1), default=None, help="run again every SECONDS (the Deployment's mode)")
@click.option("--dry-run", is_flag=True, help="report what would be done, write nothing")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_gc(kubeconfig: str | None, grace: float, every: float | None, dry_run: bool, output: str) -> None:
    """Free cluster IPAM addresses of pods and nodes that are gone; release blocks of gone nodes."""
    from ..cni.errors import CNIError
    from ..ipam import gc as ipam_gc_mod

    client = _kube_client(kubeconfig)

    def show(report) -> None:
        click.echo(json.dumps(report.to_dict()) if output == "json" else "\n".join(report.lines()))

    if every:
        ipam_gc_mod.run_every(client, every, grace, on_report=show, dry_run=dry_run,
                              on_error=lambda e: click.echo(f"ipam gc: {getattr(e, 'msg', e)}", err=True))
        return
    try:
        show(ipam_gc_mod.collect(client, grace, dry_run=dry_run))
    except CNIError as e:
        _fail("ipam gc", e)


def _install_options(fn):
    for opt in reversed([
        click.option("--root", default="/", show_default=True, help="act under this root (the host's / in the DaemonSet)"),
        click.option("--bin-dir", default="/opt/cni/bin", show_default=True, help="CNI plugin directory"),
        click.option("--conf-dir", default="/etc/cni/net.d", show_default=True, help="CNI config directory"),
        click.option("--conf-name", default="00-multiplex.conflist", show_default=True,
                     help="the conflist written (sorts ahead of the node's own)"),
    ]):
        fn = opt(fn)
    return fn


@cli.command()
@_install_options
@click.option("--python", default=None, help="the Python the launchers run (default: this one)")
@click.option("--runtime-src", default=None, help="a self-contained Python runtime to copy onto the host")
@click.option("--runtime-dir", default=None, help="where --runtime-src is copied (default /opt/multiplex)")
@click.option("--cluster-network", default=None, help="override the detected cluster network")
@click.option("--cni-version", default=None, help="override the cniVersion taken from the cluster network")
@click.option("--kubeconfig", default=None, help="a kubeconfig path to reference in the config")
@click.option("--kubeconfig-from-sa/--no-kubeconfig", default=None,
              help="write a node kubeconfig from the service account (default: when running in a pod)")
@click.option("--option", "options", multiple=True, metavar="KEY=JSON", help="an extra multiplex config field")
@click.option("--every", type=float, default=None, help="run again every SECONDS (the DaemonSet's mode)")
def install(root, bin_dir, conf_dir, conf_name, python, runtime_src, runtime_dir, cluster_network, cni_version,
            kubeconfig, kubeconfig_from_sa, options, every) -> None:
    """Place launchers, a node kubeconfig and the multiplex conflist on this node (the DaemonSet runs this)."""
    from .install.loop import install_periodically
    from .install.report import InstallError
    from .install.steps import install as do_install

    extra = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=JSON", param_hint="--option")
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    args = dict(root=root, bin_dir=bin_dir, conf_dir=conf_dir, python=python, conf_name=conf_name,
                cluster_network=cluster_network, cni_version=cni_version, kubeconfig_from_sa=kubeconfig_from_sa,
                kubeconfig=kubeconfig, runtime_src=runtime_src, runtime_dir=runtime_dir, options=extra or None)
    if every:
        install_periodically(every, on_report=lambda r: click.echo("\n".join(r.lines())),
                             on_error=lambda e: click.echo(f"install: {e}", err=True), **args)
        return
    try:
        report = do_install(**args)
    except InstallError as e:
        click.echo(f"install: {e}", err=True)
        sys.exit(1)
    click.echo("\n".join(report.lines()))


@cli.command()
@_install_options
def uninstall(root, bin_dir, conf_dir, conf_name) -> None:
    """Remove what install placed and restore the node's own config."""
    from .install.report import InstallError
    from .install.uninstall import uninstall as do_uninstall

    try:
        report = do_uninstall(root=root, bin_dir=bin_dir, conf_dir=conf_dir, conf_name=conf_name)
    except InstallError as e:
        click.echo(f"uninstall: {e}", err=True)
        sys.exit(1)
    click.echo("\n".join(report.lines()))


if __name__ == "__main__":
    cli()
