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
    """The shared IPAM: leases and pools."""


@ipam.command("show")
@click.option("--data-dir", default=None, help="the node IPAM store directory")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_show(data_dir: str | None, output: str) -> None:
    """Leases per pool on this node."""
    from .ipam.report import pool_report

    report = pool_report(data_dir)
    if output == "json":
        click.echo(json.dumps(report, indent=2))
        return
    for pool in report:
        click.echo(f"{pool['pool']}: {pool['used']} used, {pool['free']} free")
        for lease in pool.get("leases", []):
            click.echo(f"  {lease['address']:<40} {lease['network']:<24} {lease['containerID'][:12]} {lease['ifname']}")


@cli.command()
@click.option("--root", default="/", show_default=True, help="install under this root (for tests)")
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True)
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
@click.option("--cluster-network", default=None, help="override the detected cluster network")
def install(root: str, bin_dir: str, conf_dir: str, cluster_network: str | None) -> None:
    """Place launchers, a node kubeconfig and the multiplex conflist on this node (the DaemonSet runs this)."""
    from .install import install as do_install

    report = do_install(root=root, bin_dir=bin_dir, conf_dir=conf_dir, cluster_network=cluster_network)
    click.echo(str(report))


@cli.command()
@click.option("--root", default="/", show_default=True)
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True)
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
def uninstall(root: str, bin_dir: str, conf_dir: str) -> None:
    """Remove what install placed and restore the node's own config."""
    from .install import uninstall as do_uninstall

    click.echo(str(do_uninstall(root=root, bin_dir=bin_dir, conf_dir=conf_dir)))


if __name__ == "__main__":
    cli()
