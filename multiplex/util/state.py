"""Where multiplex keeps node state: the result cache, locks, the SQLite IPAM database.

Root: the call's state directory (`req.ctx.state_dir`: the meta plugin's `stateDir`, handed to
its delegates and IPAM on the request, and to exec'd ones as MULTIPLEX_STATE_DIR in their
environment), else the process's own (MULTIPLEX_STATE_DIR as the process found it at entry: a
plugin or command run by hand; multiplex never writes it), else /var/lib/cni/multiplex.

The root must be an absolute path: a relative one would be resolved against the runtime's working
directory, which differs between calls, so a later DEL would not find what ADD left (code 7). A
root that cannot be used (a regular file, a read-only or full file system, no permission) is code
5 naming the path and what is wrong, never a traceback.
"""
from __future__ import annotations

import errno
import os
from typing import Optional

from ..cni.context import STATE_DIR_ENV, CallContext
from ..cni.errors import CNIError, INVALID_CONFIG, IO_FAILURE

DEFAULT_ROOT = "/var/lib/cni/multiplex"

#: what a user should read for the errno values a state directory typically fails with
_WHAT = {
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EEXIST: "exists and is not a directory",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "the file system is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENAMETOOLONG: "the path is too long",
    errno.ELOOP: "too many symbolic links",
}


def root(state_dir: Optional[str] = None) -> str:
    """The state root: `state_dir` (the call's, `req.ctx.state_dir`), else the process's entry
    value (CallContext.from_environ), else the default. Code 7 naming the field when it is not an
    absolute path."""
    if state_dir:
        return _absolute(state_dir, "stateDir")
    from_entry = CallContext.from_environ(os.environ).state_dir
    if from_entry:
        # whoever started this process passed it: name the field the admin wrote
        return _absolute(from_entry, f"stateDir (through ${STATE_DIR_ENV})")
    return DEFAULT_ROOT


def _absolute(path: str, field: str) -> str:
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise CNIError(INVALID_CONFIG, f"state directory {path!r} is not an absolute path",
                       f"field: {field}; allowed: an absolute path (a relative one would depend on the "
                       "runtime's working directory)")
    return os.path.normpath(path)


def subdir(name: str, state_dir: Optional[str] = None) -> str:
    """`<root>/<name>` (root: see `root(state_dir)`), created (0700) when missing. Code 5 naming
    the path and what is wrong."""
    d = os.path.join(root(state_dir), name)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError as e:
        raise unusable(d, e) from None
    if not os.path.isdir(d):  # makedirs accepts a symlink to a file on some paths; be sure
        raise unusable(d, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), d))
    return d


def unusable(path: str, e: OSError) -> CNIError:
    """Code 5 for a state path that cannot be used, saying which path and why."""
    what = _WHAT.get(e.errno or 0, e.strerror or str(e))
    where = e.filename if isinstance(e.filename, str) and e.filename else path
    return CNIError(IO_FAILURE, f"cannot use state directory {path}: {what}",
                    f"path: {where}; error: {e.strerror or what}; field: stateDir")
