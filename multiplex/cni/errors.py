"""CNI error codes and the error type every layer raises.

A CNIError is printed on stdout as the spec's error object and the process exits 1.
Codes 1-99 are the spec's; 100 and up are multiplex's own.
"""
from __future__ import annotations

# Codes defined by the CNI specification (SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
PLUGIN_NOT_AVAILABLE_LIMITED = 51

# multiplex's own codes (the spec reserves 100+ for plugins).
INTERNAL = 100          # a bug or an unexpected exception
DELEGATE_FAILED = 101   # a delegate or chained plugin failed without a CNI error of its own
IPAM_EXHAUSTED = 102    # no free address in a pool
ADDRESS_UNAVAILABLE = 103  # a requested address is outside the range or already leased
CHECK_FAILED = 104      # CHECK found the container's network differs from what ADD made
NETLINK_FAILURE = 105   # the kernel refused a link, address or route operation
POLICY_DENIED = 106     # an authorize hook refused the attachment
NOT_FOUND = 107         # a network definition, plugin binary or pod that was named does not exist

NAMES = {
    INCOMPATIBLE_VERSION: "incompatible CNI version",
    UNSUPPORTED_FIELD: "unsupported field",
    UNKNOWN_CONTAINER: "container unknown or does not exist",
    INVALID_ENVIRONMENT: "invalid necessary environment variables",
    IO_FAILURE: "I/O failure",
    DECODE_FAILURE: "failed to decode content",
    INVALID_CONFIG: "invalid network config",
    TRY_AGAIN_LATER: "try again later",
    PLUGIN_NOT_AVAILABLE: "plugin not available",
    PLUGIN_NOT_AVAILABLE_LIMITED: "plugin not available, existing containers may have limited connectivity",
    INTERNAL: "internal error",
    DELEGATE_FAILED: "delegate failed",
    IPAM_EXHAUSTED: "address pool exhausted",
    ADDRESS_UNAVAILABLE: "requested address unavailable",
    CHECK_FAILED: "check failed",
    NETLINK_FAILURE: "netlink operation failed",
    POLICY_DENIED: "denied by policy",
    NOT_FOUND: "not found",
}


class CNIError(Exception):
    """An error with a CNI code, a one-line message and details naming the field or object.

    `msg` says what went wrong; `details` says where (a JSON path, an interface, a file) and,
    where it helps, what would be right.
    """

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = "1.1.0") -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_dict(cls, d: dict, who: str = "") -> "CNIError":
        """Rebuild an error a plugin printed; `who` (the plugin) is prefixed to the message."""
        try:
            code = int(d.get("code", DELEGATE_FAILED))
        except (TypeError, ValueError):
            code = DELEGATE_FAILED
        msg = str(d.get("msg") or d.get("message") or NAMES.get(code, "error"))
        if who:
            msg = f"{who}: {msg}"
        return cls(code, msg, str(d.get("details", "") or ""))

    def __str__(self) -> str:
        return f"[{self.code}] {self.msg}" + (f" ({self.details})" if self.details else "")


def invalid_config(msg: str, field: str = "", allowed: str = "") -> CNIError:
    """Code 7 with details in the form `field: <json path>; allowed: <what would be right>`."""
    parts = []
    if field:
        parts.append(f"field: {field}")
    if allowed:
        parts.append(f"allowed: {allowed}")
    return CNIError(INVALID_CONFIG, msg, "; ".join(parts))
