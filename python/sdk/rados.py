"""`rados` for rbd-wasm jobs: the part of python-rados that RBD code uses.

A job never holds a cluster connection: the host decides which cluster (or embedded store)
the job runs against and which pools it may use. `Rados(conffile=...)` therefore ignores its
configuration; `connect()` and `shutdown()` only move the object through python-rados's
states (`open_ioctx` before `connect()` connects first, where python-rados would refuse);
and `open_ioctx(name)` succeeds only for a pool the job was granted. A pool that was not
granted raises `ObjectNotFound`, as python-rados does for a pool that does not exist, so a
job cannot tell the two apart.

Object-level I/O (`Ioctx.read`, `write`, omap, xattrs...) is not part of the sandbox's API.
"""

import rbd_wasm as _glue  # noqa: F401  (loads the bindings at build time)
from componentize_py_types import Err
from wit_world.imports import rbd as _wit

__all__ = [
    "Rados", "Ioctx", "Error", "OSError", "InvalidArgumentError", "InterruptedOrTimeoutError",
    "PermissionError", "PermissionDeniedError", "ObjectNotFound", "NoData", "ObjectExists",
    "ObjectBusy", "IOError", "NoSpace", "RadosStateError", "IoctxStateError", "ObjectStateError",
    "LogicError", "TimedOut", "InProgress", "IsConnected", "NotConnected", "ConnectionShutdown",
    "LIBRADOS_ALL_NSPACES",
]

LIBRADOS_ALL_NSPACES = "\x01"


class Error(Exception):
    """The base class of every rados exception; `errno` is the positive errno, if any."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno

    def __str__(self):
        msg = super().__str__()
        return msg if self.errno is None else f"[errno {self.errno}] {msg}"


class OSError(Error):
    """An errno from the cluster."""


def _kind(base, prefix, doc):
    """An exception class whose message reads `RADOS <prefix> (<message>)`, as python-rados's."""

    def __init__(self, message, errno=None):
        base.__init__(self, f"RADOS {prefix} ({message})", errno)

    return type(base)("_", (base,), {"__init__": __init__, "__doc__": doc})


def _named(name, cls):
    cls.__name__ = cls.__qualname__ = name
    cls.__module__ = __name__
    return cls


InvalidArgumentError = _named("InvalidArgumentError", _kind(Error, "invalid argument", "EINVAL."))
InterruptedOrTimeoutError = _named("InterruptedOrTimeoutError", _kind(OSError, "interrupted or timeout", "EINTR."))
PermissionError = _named("PermissionError", _kind(OSError, "permission error", "EPERM."))
PermissionDeniedError = _named("PermissionDeniedError", _kind(OSError, "permission denied", "EACCES."))
ObjectNotFound = _named("ObjectNotFound", _kind(OSError, "object not found", "ENOENT: also a pool that was not granted."))
NoData = _named("NoData", _kind(OSError, "no data", "ENODATA."))
ObjectExists = _named("ObjectExists", _kind(OSError, "object exists", "EEXIST."))
ObjectBusy = _named("ObjectBusy", _kind(OSError, "object busy", "EBUSY."))
IOError = _named("IOError", _kind(OSError, "I/O error", "EIO."))
NoSpace = _named("NoSpace", _kind(OSError, "no space", "ENOSPC."))
RadosStateError = _named("RadosStateError", _kind(Error, "rados state", "The Rados object is in the wrong state."))
IoctxStateError = _named("IoctxStateError", _kind(Error, "Ioctx state error", "The Ioctx is closed."))
ObjectStateError = _named("ObjectStateError", _kind(Error, "object state error", "Object state."))
LogicError = _named("LogicError", _kind(Error, "logic error", "Should not happen."))
TimedOut = _named("TimedOut", _kind(OSError, "timed out", "ETIMEDOUT."))
InProgress = _named("InProgress", _kind(Error, "in progress error", "EINPROGRESS."))
IsConnected = _named("IsConnected", _kind(Error, "is connected error", "EISCONN."))
NotConnected = _named("NotConnected", _kind(OSError, "not connected", "ENOTCONN."))
ConnectionShutdown = _named("ConnectionShutdown", _kind(OSError, "connection was shutdown", "ESHUTDOWN."))

# The host's error variant (wit/types.wit) as rados exceptions, for the calls that reach it
# through this module (opening a pool).
_FROM_WIT = {
    "Error_NotFound": (ObjectNotFound, 2),
    "Error_Exists": (ObjectExists, 17),
    "Error_Busy": (ObjectBusy, 16),
    "Error_InvalidArgument": (InvalidArgumentError, 22),
    "Error_PermissionDenied": (PermissionError, 1),
    "Error_Io": (IOError, 5),
    "Error_NoSpace": (NoSpace, 28),
    "Error_Timeout": (TimedOut, 110),
    "Error_ConnectionShutdown": (ConnectionShutdown, 108),
}


def _from_wit(error, context):
    kind = type(error).__name__
    if kind in _FROM_WIT:
        cls, errno = _FROM_WIT[kind]
        return cls(context, errno=errno)
    if kind == "Error_Other":
        return OSError(f"{context}: {error.value.message}", errno=error.value.errno)
    return OSError(f"{context}: {getattr(error, 'value', error)}")


class Rados:
    """A "connection": `connect()` makes it usable, `shutdown()` ends it. As a context
    manager it connects on entry and shuts down on exit, as python-rados's does.

    Every argument is accepted for compatibility and ignored: the host chose the cluster."""

    def __init__(self, rados_id=None, name=None, clustername=None, conf_defaults=None,
                 conffile=None, conf=None, flags=0, context=None):
        self.rados_id = rados_id
        self.conffile = conffile
        self.state = "configuring"
        self._ioctxs = []

    def require_state(self, *states):
        if self.state not in states:
            raise RadosStateError(
                f"You cannot perform that operation on a Rados object in state {self.state}.")

    def conf_read_file(self, path=None):
        """Accepted and ignored: the host chose the cluster."""
        self.require_state("configuring", "connected")

    def conf_parse_env(self, var="CEPH_ARGS"):
        """Accepted and ignored."""
        self.require_state("configuring", "connected")

    def connect(self, timeout=0):
        self.require_state("configuring")
        self.state = "connected"

    def shutdown(self):
        """End the "connection" and close every Ioctx opened through it. Images stay open
        until they are closed."""
        if self.state == "shutdown":
            return
        for ioctx in self._ioctxs:
            ioctx.close()
        self._ioctxs = []
        self.state = "shutdown"

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, type_, value, traceback):
        self.shutdown()
        return False

    def list_pools(self):
        """The pools this job was granted."""
        self.require_state("connected")
        return list(_wit.granted_pools())

    def pool_exists(self, pool_name):
        """Whether `pool_name` was granted (a pool that was not is one that does not exist)."""
        self.require_state("connected")
        if not isinstance(pool_name, str):
            raise TypeError("pool_name must be a string")
        return pool_name in _wit.granted_pools()

    def open_ioctx(self, ioctx_name):
        """An Ioctx for a granted pool. Raises `ObjectNotFound` for any other pool.

        Before `connect()` it connects first (python-rados raises RadosStateError): there is
        nothing to connect to, and the reference text's try/finally example never connects."""
        if self.state == "configuring":
            self.connect()
        self.require_state("connected")
        if not isinstance(ioctx_name, str):
            raise TypeError("ioctx_name must be a string")
        try:
            pool = _wit.open_pool(ioctx_name)
        except Err as e:
            raise _from_wit(e.value, f"error opening pool '{ioctx_name}'") from None
        ioctx = Ioctx(self, ioctx_name, pool)
        self._ioctxs.append(ioctx)
        return ioctx


class Ioctx:
    """A granted pool (`rados.Ioctx`): pass it to `rbd.RBD` and `rbd.Image`. `close()` (or
    leaving a `with` block) releases it."""

    def __init__(self, rados, name, pool):
        self.rados = rados
        self.name = name
        self.state = "open"
        self._pool = pool

    def require_ioctx_open(self):
        if self.state != "open":
            raise IoctxStateError(f"The pool is {self.state}")

    def get_pool_name(self):
        self.require_ioctx_open()
        return self.name

    def close(self):
        if self.state == "open":
            self.state = "closed"
            pool, self._pool = self._pool, None
            pool.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, type_, value, traceback):
        self.close()
        return False

    def _handle(self):
        """The host's pool handle (for the rbd module)."""
        self.require_ioctx_open()
        return self._pool
