"""The `multiplex` command line (when not called by a runtime). Each command imports what it needs."""
from __future__ import annotations

import json
import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=None, package_name="multiplex", prog_name="multiplex",
                      message="%(prog)s %(version)s")
def cli() -> None:
    """multiplex: a meta CNI plugin. Called with CNI_COMMAND set, it is the plugin itself."""


@cli.command()
@click.option("--keep", is_flag=True, help="leave the lab up (remove it later with --down)")
@click.option("--down", is_flag=True, help="remove a lab left up by --keep")
@click.option("--pods", default=3, show_default=True, type=click.IntRange(2, 20), help="how many pods per node")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 8),
              help="how many simulated nodes (each a netns with a node daemon, on one underlay)")
def lab(keep: bool, down: bool, pods: int, nodes: int) -> None:
    """A local lab: nodes and pods in network namespaces, attached through multiplex's node daemons."""
    from .lab import run_lab, teardown_lab

    if down:
        teardown_lab()
        return
    sys.exit(run_lab(pods=pods, keep=keep, nodes=nodes))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def validate(files: tuple[str, ...]) -> None:
    """Check CNI configs, conflists and NetworkAttachmentDefinition files against our schemas."""
    from .validate import report_files

    sys.exit(report_files(files, click.echo))


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


@ipam.command("show")
@click.option("--store", type=click.Choice(["sqlite", "kubernetes"]), default="sqlite", show_default=True,
              help="sqlite: this node's leases; kubernetes: the cluster's pools and blocks")
@click.option("--data-dir", default=None, help="the node IPAM store directory (sqlite)")
@click.option("--kubeconfig", default=None, help="kubernetes: a kubeconfig (default: in-cluster or $KUBECONFIG)")
@click.option("--allocations", is_flag=True, help="kubernetes: list every allocation under its block")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_show(store: str, data_dir: str | None, kubeconfig: str | None, allocations: bool, output: str) -> None:
    """Leases per pool on this node, or (--store kubernetes) each pool and block of the cluster."""
    from .ipam import show_cluster, show_node

    if store == "kubernetes":
        show_cluster(kubeconfig, allocations, output)
    else:
        show_node(data_dir, output)


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
    from .ipam import check_leases

    sys.exit(check_leases(data_dir, cache_dir, repair, force, live, output))


@ipam.command("gc")
@click.option("--kubeconfig", default=None, help="a kubeconfig (default: in-cluster or $KUBECONFIG)")
@click.option("--grace", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="seconds an address stays after its pod or node is first found gone")
@click.option("--every", type=click.FloatRange(min=1), default=None, help="run again every SECONDS (the Deployment's mode)")
@click.option("--dry-run", is_flag=True, help="report what would be done, write nothing")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def ipam_gc(kubeconfig: str | None, grace: float, every: float | None, dry_run: bool, output: str) -> None:
    """Free cluster IPAM addresses of pods and nodes that are gone; release blocks of gone nodes."""
    from .ipam import collect_garbage

    collect_garbage(kubeconfig, grace, every, dry_run, output)


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


def _parse_options(_ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]) -> dict:
    """--option KEY=JSON, repeated, as a dict; a value that is not JSON is taken as a string."""
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=JSON", param_hint="--option")
        try:
            extra[key] = json.loads(value)
        except ValueError:
            extra[key] = value
    return extra


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
@click.option("--option", "options", multiple=True, metavar="KEY=JSON", callback=_parse_options,
              help="an extra multiplex config field")
@click.option("--every", type=float, default=None, help="run again every SECONDS (the DaemonSet's mode)")
@click.option("--daemon", "daemon", is_flag=True,
              help="daemon mode: `multiplex` in the bin dir is the shim that forwards to the node daemon")
@click.option("--socket", "socket_path", default="/run/multiplex/multiplex.sock", show_default=True,
              help="daemon mode: the node daemon's socket (as the host sees it)")
@click.option("--fallback", type=click.Choice(["exec", "fail"]), default="exec", show_default=True,
              help="daemon mode: when the daemon is not there, run the call in-process (exec) or fail with code 11")
def install(root, bin_dir, conf_dir, conf_name, python, runtime_src, runtime_dir, cluster_network, cni_version,
            kubeconfig, kubeconfig_from_sa, options, every, daemon, socket_path, fallback) -> None:
    """Place launchers, a node kubeconfig and the multiplex conflist on this node (the DaemonSet runs this)."""
    from .install.loop import install_periodically
    from .install.report import InstallError
    from .install.steps import install as do_install

    args = dict(root=root, bin_dir=bin_dir, conf_dir=conf_dir, python=python, conf_name=conf_name,
                cluster_network=cluster_network, cni_version=cni_version, kubeconfig_from_sa=kubeconfig_from_sa,
                kubeconfig=kubeconfig, runtime_src=runtime_src, runtime_dir=runtime_dir, options=options or None)
    if daemon:
        args.update(daemon=True, socket_path=socket_path, fallback=fallback)
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


@cli.command()
@click.option("--socket", "socket_path", default="/run/multiplex/multiplex.sock", show_default=True,
              help="the unix socket the shim talks to (made mode 0600)")
@click.option("--state-dir", default=None, help="the state root (default: $MULTIPLEX_STATE_DIR or /var/lib/cni/multiplex)")
@click.option("--node-name", default=None, help="this node's name (default: $NODE_NAME, else the host name)")
@click.option("--kubeconfig", default=None,
              help="watch the cluster through this kubeconfig (default: in-cluster when in a pod)")
@click.option("--local-dir", default=None,
              help="no cluster: read nodes/, pods/, nads/ (and write nodes/) under this directory")
@click.option("--metrics-address", default="127.0.0.1:9635", show_default=True,
              help="HOST:PORT of /healthz, /readyz and /metrics ('off' disables)")
@click.option("--workers", type=click.IntRange(1, 256), default=8, show_default=True, help="CNI calls served at once")
@click.option("--queue", "queue_size", type=click.IntRange(0, 10000), default=64, show_default=True,
              help="calls waiting for a worker; past it a call gets code 11 at once")
@click.option("--underlay-interface", default=None,
              help="the interface whose address and MTU the node registry publishes (default: the one "
                   "holding the default route, else the first up interface with a global address)")
@click.option("--ipam-gc-every", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="seconds between cluster IPAM GC passes (kubernetes store only)")
@click.option("--ipam-gc-grace", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="seconds an orphaned allocation is kept before the IPAM GC frees it")
@click.option("--controllers", default="all", show_default=True,
              help="comma-separated controllers to run (names from the multiplex.controllers entry points), or 'none'")
@click.option("--log-file", default=None, help="JSON log lines to this file (default stderr)")
@click.option("--log-level", default="info", show_default=True)
@click.option("--cni-conf", default="/etc/cni/net.d/00-multiplex.conflist", show_default=True,
              help="the installed multiplex config, read for namespaceIsolation/globalNamespaces")
@click.option("--overlay-idle-grace", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="seconds an overlay network's bridge stays without a pod before its devices are removed")
def daemon(**options) -> None:
    """The node daemon: serves CNI calls from the shim on a unix socket and runs the node's controllers."""
    from ..daemon.main import run

    sys.exit(run(**options))


@cli.command()
@click.argument("target", metavar="NAMESPACE/POD|CONTAINERID")
@click.option("--state-dir", default=None, help="the state root (default: $MULTIPLEX_STATE_DIR or /var/lib/cni/multiplex)")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def inspect(target: str, state_dir: str | None, output: str) -> None:
    """A pod's networks on this node: what the cache records beside what the kernel shows."""
    from .inspect import run

    sys.exit(run(target, state_dir=state_dir, output=output))


@cli.group()
def policy() -> None:
    """Policy: what applies to a pod's interfaces (MultiNetworkPolicy on nftables)."""


@policy.command("show")
@click.argument("target", metavar="NAMESPACE/POD|CONTAINERID")
@click.option("--state-dir", default=None, help="the state root (default: $MULTIPLEX_STATE_DIR or /var/lib/cni/multiplex)")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def policy_show(target: str, state_dir: str | None, output: str) -> None:
    """The policies that apply to each of a pod's interfaces, their rules and nft counters."""
    from .policy import show

    sys.exit(show(target, state_dir=state_dir, output=output))


@cli.group()
def bgp() -> None:
    """BGP: the node's BIRD, its sessions and routes (bgp-routed networks)."""


@bgp.command("status")
@click.option("--socket", "socket_path", default=None,
              help="the node's BIRD control socket (default: the one the daemon's BGP controller runs)")
@click.option("--state-dir", default=None, help="the state root (default: $MULTIPLEX_STATE_DIR or /var/lib/cni/multiplex)")
@click.option("-o", "output", type=click.Choice(["table", "json"]), default="table")
def bgp_status(socket_path: str | None, state_dir: str | None, output: str) -> None:
    """BGP sessions (peer, state, since, routes in/out) and the routes learned, from the node's BIRD."""
    from .bgp import status

    sys.exit(status(socket_path=socket_path, state_dir=state_dir, output=output))


@cli.group()
def vxlan() -> None:
    """vxlan-overlay networks on this node."""


@vxlan.command("rotate-key")
@click.option("--state-dir", default=None, help="the state root (default: $MULTIPLEX_STATE_DIR or /var/lib/cni/multiplex)")
def vxlan_rotate_key(state_dir: str | None) -> None:
    """A new WireGuard key for this node's encrypted overlays; the daemon publishes it to the peers."""
    from .vxlan import rotate_key

    sys.exit(rotate_key(state_dir=state_dir, output=click.echo))


if __name__ == "__main__":
    cli()
