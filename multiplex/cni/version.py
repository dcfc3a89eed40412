"""CNI spec versions: which we speak and how they compare."""
from __future__ import annotations

from .errors import CNIError, INCOMPATIBLE_VERSION

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"


def parse(v: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in str(v).split("."))
    except ValueError:
        raise CNIError(INCOMPATIBLE_VERSION, f"malformed CNI version {v!r}",
                       f"field: cniVersion; allowed: one of {', '.join(SUPPORTED)}") from None
    if len(parts) != 3:
        raise CNIError(INCOMPATIBLE_VERSION, f"malformed CNI version {v!r}",
                       f"field: cniVersion; allowed: one of {', '.join(SUPPORTED)}")
    return parts  # type: ignore[return-value]


def check_supported(v: str, field: str = "cniVersion") -> str:
    if not isinstance(v, str) or v not in SUPPORTED:
        raise CNIError(INCOMPATIBLE_VERSION, f"incompatible CNI version {v!r}",
                       f"field: {field}; allowed: one of {', '.join(SUPPORTED)}")
    return v


def at_least(v: str, minimum: str) -> bool:
    return parse(v) >= parse(minimum)


def version_info() -> dict:
    """The VERSION command's answer."""
    return {"cniVersion": CURRENT, "supportedVersions": list(SUPPORTED)}
