"""The node kubeconfig: written from the DaemonSet pod's service account into conf_dir/multiplex.d/.

The token and CA are copied beside it and the kubeconfig names them by path, so a rotated token
(install runs again with --every) needs no rewrite of the kubeconfig itself.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from .files import read_bytes
from .layout import STATE_SUBDIR, host_join
from .report import InstallError

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KUBECONFIG_NAME = "multiplex.kubeconfig"
TOKEN_NAME = "token"
CA_NAME = "ca.crt"


@dataclass
class ServiceAccount:
    server: str
    token: bytes
    ca: bytes


def service_account(sa_dir: str, environ: Mapping[str, str]) -> Optional[ServiceAccount]:
    """The pod's service account credentials, or None when not running in a pod."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    token = read_bytes(os.path.join(sa_dir, "token"))
    ca = read_bytes(os.path.join(sa_dir, "ca.crt"))
    if not host or token is None or ca is None:
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return ServiceAccount(server=f"https://{host}:{port}", token=token.strip(), ca=ca)


def kubeconfig_text(server: str, ca_file: str, token_file: str) -> str:
    """A kubeconfig (YAML) that reads the token from a file, so a rotated token needs no rewrite
    of the kubeconfig itself. Strings are JSON-quoted, which YAML reads as they are."""
    q = json.dumps
    return ("# Written by `multiplex install` from the multiplex service account. Do not edit.\n"
            "apiVersion: v1\n"
            "kind: Config\n"
            "clusters:\n"
            "- name: local\n"
            "  cluster:\n"
            f"    server: {q(server)}\n"
            f"    certificate-authority: {q(ca_file)}\n"
            "users:\n"
            "- name: multiplex\n"
            "  user:\n"
            f"    tokenFile: {q(token_file)}\n"
            "contexts:\n"
            "- name: multiplex\n"
            "  context:\n"
            "    cluster: local\n"
            "    user: multiplex\n"
            "current-context: multiplex\n")


def kubeconfig_files(conf_dir: str, sa: ServiceAccount) -> tuple[str, dict[str, tuple[bytes, int]]]:
    """The kubeconfig's host path, and host path -> (bytes, mode) of the token, CA and kubeconfig."""
    sub = host_join(conf_dir, STATE_SUBDIR)
    token_host, ca_host = host_join(sub, TOKEN_NAME), host_join(sub, CA_NAME)
    kubeconfig_host = host_join(sub, KUBECONFIG_NAME)
    return kubeconfig_host, {token_host: (sa.token, 0o600), ca_host: (sa.ca, 0o644),
                             kubeconfig_host: (kubeconfig_text(sa.server, ca_host, token_host).encode(), 0o600)}


def node_kubeconfig(conf_dir: str, kubeconfig: Optional[str], from_sa: Optional[bool], sa_dir: str,
                    environ: Mapping[str, str]) -> tuple[Optional[str], dict[str, tuple[bytes, int]]]:
    """The kubeconfig our conflist names, and the files to write for it.

    `kubeconfig` given: that one, nothing to write. Else from the service account when running in
    a pod (from_sa None), always (True: an error outside a pod) or never (False)."""
    if kubeconfig is not None or from_sa is False:
        return kubeconfig, {}
    sa = service_account(sa_dir, environ)
    if sa is None:
        if from_sa:
            raise InstallError(f"no service account to write a kubeconfig from: need KUBERNETES_SERVICE_HOST and "
                               f"{sa_dir}/token and ca.crt (are we running in a pod?)")
        return None, {}
    return kubeconfig_files(conf_dir, sa)
