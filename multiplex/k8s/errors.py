"""Typed errors of the Kubernetes layer. Each is a CNIError, so an uncaught one is already the
right CNI answer; callers that can recover (the IPAM store on a conflict) catch the type.

| class          | HTTP                 | CNI code                     | meaning                              |
|----------------|----------------------|------------------------------|--------------------------------------|
| NotFound       | 404                  | 107 NOT_FOUND                | the named object does not exist      |
| AlreadyExists  | 409 AlreadyExists    | 11 TRY_AGAIN_LATER           | create lost to an existing object    |
| Conflict       | 409 Conflict         | 11 TRY_AGAIN_LATER           | stale resourceVersion / precondition |
| Forbidden      | 401, 403             | 4 INVALID_ENVIRONMENT        | credentials or RBAC do not allow it  |
| Invalid        | 400, 405, 415, 422   | 100 INTERNAL                 | the server refused our request body  |
| Expired        | 410                  | 11 TRY_AGAIN_LATER           | a watch resourceVersion is too old   |
| Unavailable    | connect/timeout, 429, 5xx (after retries) | 11 TRY_AGAIN_LATER | the API server cannot be reached |
"""
from __future__ import annotations

from ..cni.errors import (CNIError, INTERNAL, INVALID_CONFIG, INVALID_ENVIRONMENT, NOT_FOUND,
                          TRY_AGAIN_LATER)


class KubeError(CNIError):
    """An API call that failed; `status` is the HTTP status (0 when no answer came back)."""

    code_for = INTERNAL

    def __init__(self, msg: str, details: str = "", status: int = 0, reason: str = ""):
        super().__init__(self.code_for, msg, details)
        self.status = status
        self.reason = reason


class NotFound(KubeError):
    code_for = NOT_FOUND


class AlreadyExists(KubeError):
    code_for = TRY_AGAIN_LATER


class Conflict(KubeError):
    code_for = TRY_AGAIN_LATER


class Forbidden(KubeError):
    code_for = INVALID_ENVIRONMENT


class Invalid(KubeError):
    code_for = INTERNAL


class Expired(KubeError):
    code_for = TRY_AGAIN_LATER


class Unavailable(KubeError):
    code_for = TRY_AGAIN_LATER


class NoCredentials(KubeError):
    """No kubeconfig and not in a cluster, or a kubeconfig that cannot be read."""
    code_for = INVALID_CONFIG


def for_status(status: int, reason: str) -> type[KubeError]:
    """The error class for an HTTP answer (`reason` tells AlreadyExists from Conflict)."""
    if status == 404:
        return NotFound
    if status == 409:
        return AlreadyExists if reason == "AlreadyExists" else Conflict
    if status in (401, 403):
        return Forbidden
    if status == 410:
        return Expired
    if status == 429 or status >= 500:
        return Unavailable
    return Invalid
