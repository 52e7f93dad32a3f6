"""`rbd` for rbd-wasm jobs: the API of Ceph's python-rbd (`RBD`, `Image`, `SnapIterator` and
its exceptions), on the host's `ceph:rbd` interface.

Calls, arguments, return values and exceptions are python-rbd's (Ceph Pacific), so code
written for it runs as a job. Differences, all deliberate:

- `Image.write` also takes `str` (encoded as UTF-8), `bytearray` and `memoryview`, so the
  reference text's `image.write('foo' * 200, 0)` runs; python-rbd takes `bytes` only.
- `RBD.create(..., old_format=True)`, the default, creates a format 2 image with the
  backend's default features, which is what python-rbd does on Pacific (its `rbd_create`
  follows `rbd_default_format = 2`); with `old_format=True`, features or striping raise
  `InvalidArgument`, as there.
- Options the sandbox's interface has no place for (`data_pool`, striping of clones and
  copies, `image_id`) raise `FunctionNotSupported` rather than being ignored.
- A pool or image outside the job's grant behaves as one that does not exist
  (`ImageNotFound`), and an operation the grant does not allow raises `PermissionError`.

Every method may raise `Error` (the base class), `PermissionError` and `IOError`, as the
reference says; the host's error variant (wit/types.wit) names which.
"""

import datetime as _datetime

import rados
import rbd_wasm as _glue  # noqa: F401  (loads the bindings at build time)
from componentize_py_types import Err
from wit_world.imports import rbd as _wit, types as _types

__all__ = [
    "RBD", "Image", "SnapIterator",
    "Error", "OSError", "PermissionError", "ImageNotFound", "ObjectNotFound", "ImageExists",
    "ObjectExists", "IOError", "NoSpace", "IncompleteWriteError", "InvalidArgument",
    "LogicError", "ReadOnlyImage", "ImageBusy", "ImageHasSnapshots", "FunctionNotSupported",
    "ArgumentOutOfRange", "ConnectionShutdown", "Timeout", "DiskQuotaExceeded",
    "OperationNotSupported", "OperationCanceled",
]

RBD_FEATURE_LAYERING = 1
RBD_FEATURE_STRIPINGV2 = 2
RBD_FEATURE_EXCLUSIVE_LOCK = 4
RBD_FEATURE_OBJECT_MAP = 8
RBD_FEATURE_FAST_DIFF = 16
RBD_FEATURE_DEEP_FLATTEN = 32
RBD_FEATURE_JOURNALING = 64
RBD_FEATURE_DATA_POOL = 128

RBD_SNAP_NAMESPACE_TYPE_USER = 0


class Error(Exception):
    """The base class of every rbd exception."""


class OSError(Error):
    """An errno from librbd (or the host); `errno` is positive, or None."""

    def __init__(self, message, errno=None):
        super().__init__(message)
        self.errno = errno

    def __str__(self):
        msg = super().__str__()
        return msg if self.errno is None else f"[errno {self.errno}] {msg}"


def _kind(name, prefix, doc):
    """An OSError subclass whose message reads `RBD <prefix> (<message>)`, as python-rbd's."""

    def __init__(self, message, errno=None):
        OSError.__init__(self, f"RBD {prefix} ({message})", errno)

    return type(name, (OSError,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


PermissionError = _kind("PermissionError", "permission error", "EPERM/EACCES: refused by the cluster, or outside the job's grant.")
ImageNotFound = _kind("ImageNotFound", "image not found", "ENOENT: no such image, snapshot, lock or locker (or one outside the grant).")
ObjectNotFound = _kind("ObjectNotFound", "object not found", "ENOENT.")
ImageExists = _kind("ImageExists", "image already exists", "EEXIST: the name is taken, or this client holds the lock with this cookie.")
ObjectExists = _kind("ObjectExists", "object already exists", "EEXIST.")
IOError = _kind("IOError", "I/O error", "EIO.")
NoSpace = _kind("NoSpace", "insufficient space available", "ENOSPC.")
IncompleteWriteError = _kind("IncompleteWriteError", "incomplete write", "The write ran past the end of the image; the bytes inside it were written.")
InvalidArgument = _kind("InvalidArgument", "invalid argument", "EINVAL.")
LogicError = _kind("LogicError", "logic error", "Something that should not happen.")
ReadOnlyImage = _kind("ReadOnlyImage", "read-only image", "EROFS: the image is open read-only or at a snapshot.")
ImageBusy = _kind("ImageBusy", "image is busy", "EBUSY.")
ImageHasSnapshots = _kind("ImageHasSnapshots", "image has snapshots", "ENOTEMPTY.")
FunctionNotSupported = _kind("FunctionNotSupported", "function not supported", "ENOSYS.")
ArgumentOutOfRange = _kind("ArgumentOutOfRange", "arguments out of range", "EDOM.")
ConnectionShutdown = _kind("ConnectionShutdown", "connection was shutdown", "ESHUTDOWN.")
Timeout = _kind("Timeout", "operation timeout", "ETIMEDOUT.")
DiskQuotaExceeded = _kind("DiskQuotaExceeded", "disk quota exceeded", "EDQUOT, or a quota of this job ran out.")
OperationNotSupported = _kind("OperationNotSupported", "operation not supported", "EOPNOTSUPP.")
OperationCanceled = _kind("OperationCanceled", "operation canceled", "ECANCELED.")

# python-rbd's errno table, for `other` errors of the host that carry an errno.
_ERRNO = {
    1: PermissionError, 2: ImageNotFound, 5: IOError, 28: NoSpace, 17: ImageExists,
    22: InvalidArgument, 30: ReadOnlyImage, 16: ImageBusy, 39: ImageHasSnapshots,
    38: FunctionNotSupported, 33: ArgumentOutOfRange, 108: ConnectionShutdown, 110: Timeout,
    122: DiskQuotaExceeded, 95: OperationNotSupported, 125: OperationCanceled, 13: PermissionError,
}

# The host's error variant (wit/types.wit), one case per exception, with the errno
# python-rbd would carry.
_FROM_WIT = {
    "Error_NotFound": (ImageNotFound, 2),
    "Error_Exists": (ImageExists, 17),
    "Error_Busy": (ImageBusy, 16),
    "Error_HasSnapshots": (ImageHasSnapshots, 39),
    "Error_ReadOnly": (ReadOnlyImage, 30),
    "Error_InvalidArgument": (InvalidArgument, 22),
    "Error_OutOfRange": (ArgumentOutOfRange, 33),
    "Error_NotSupported": (FunctionNotSupported, 38),
    "Error_PermissionDenied": (PermissionError, 1),
    "Error_Io": (IOError, 5),
    "Error_Logic": (LogicError, None),
    "Error_NoSpace": (NoSpace, 28),
    "Error_QuotaExceeded": (DiskQuotaExceeded, 122),
    "Error_Timeout": (Timeout, 110),
    "Error_ConnectionShutdown": (ConnectionShutdown, 108),
}


def _exception(error):
    """The python-rbd exception for one case of the host's error variant."""
    kind = type(error).__name__
    if kind in _FROM_WIT:
        cls, errno = _FROM_WIT[kind]
        return cls(error.value, errno=errno)
    if kind == "Error_IncompleteWrite":
        return IncompleteWriteError(f"Wrote only {error.value.written} out of {error.value.requested} bytes")
    if kind == "Error_TypeError":
        return TypeError(error.value)
    if kind == "Error_Other":
        errno, message = error.value.errno, error.value.message
        return _ERRNO.get(errno, OSError)(message, errno=errno)
    return Error(str(error))


def _call(fn, *args):
    """Call the host; raise its error as the python-rbd exception."""
    try:
        return fn(*args)
    except Err as e:
        raise _exception(e.value) from None


def _cstr(value, name, opt=False):
    """A name argument as python-rbd takes it: str, or UTF-8 bytes."""
    if opt and value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise InvalidArgument(f"{name} must be a string")


def _pool(ioctx):
    if not isinstance(ioctx, rados.Ioctx):
        raise TypeError("the ioctx argument must be a rados.Ioctx")
    return ioctx._handle()


def _unsupported(what, **options):
    given = [k for k, v in options.items() if v not in (None, 0)]
    if given:
        raise FunctionNotSupported(f"{what}: {', '.join(given)} not supported by rbd-wasm", errno=38)


class RBD:
    """Image CRUD: create, clone, list, remove, rename."""

    def version(self):
        """The librbd version (or the embedded store's emulation of it): (major, minor, extra)."""
        v = _wit.version()
        return (v.major, v.minor, v.extra)

    def create(self, ioctx, name, size, order=None, old_format=True, features=None,
               stripe_unit=None, stripe_count=None, data_pool=None):
        """Create an image of `size` bytes. Raises ImageExists, InvalidArgument,
        ArgumentOutOfRange (order), FunctionNotSupported."""
        name = _cstr(name, "name")
        if old_format and (features or stripe_unit or stripe_count or data_pool):
            raise InvalidArgument("format 1 images do not support feature masks, non-default striping, nor data pool")
        _unsupported("create", data_pool=data_pool)
        options = _types.CreateOptions(order=order, old_format=False, features=int(features or 0),
                                       stripe_unit=int(stripe_unit or 0), stripe_count=int(stripe_count or 0))
        _call(_pool(ioctx).create, name, int(size), options)

    def clone(self, p_ioctx, p_name, p_snapname, c_ioctx, c_name, features=None, order=None,
              stripe_unit=None, stripe_count=None, data_pool=None):
        """Clone the protected snapshot `p_name@p_snapname` into `c_name` in `c_ioctx`'s pool."""
        p_name, p_snapname, c_name = _cstr(p_name, "p_name"), _cstr(p_snapname, "p_snapname"), _cstr(c_name, "c_name")
        _unsupported("clone", stripe_unit=stripe_unit, stripe_count=stripe_count, data_pool=data_pool)
        options = _types.CloneOptions(features=int(features or 0), order=order)
        _call(_pool(p_ioctx).clone, p_name, p_snapname, _pool(c_ioctx), c_name, options)

    def list(self, ioctx):
        """The names of the images of the pool (those the grant lets the job see)."""
        return list(_call(_pool(ioctx).list))

    def remove(self, ioctx, name, on_progress=None):
        """Remove an image. Raises ImageNotFound, ImageBusy, ImageHasSnapshots."""
        _call(_pool(ioctx).remove, _cstr(name, "name"))

    def rename(self, ioctx, src, dest):
        """Rename an image. Raises ImageNotFound, ImageExists."""
        _call(_pool(ioctx).rename, _cstr(src, "src"), _cstr(dest, "dest"))


class SnapIterator:
    """The snapshots of an image, oldest first, as dicts with `id`, `size`, `name` and
    `namespace` (always 0, user snapshots)."""

    def __init__(self, image):
        self.image = image
        self._snaps = _call(image._handle().list_snaps)

    def __iter__(self):
        for s in self._snaps:
            yield {"id": s.id, "size": s.size, "name": s.name, "namespace": RBD_SNAP_NAMESPACE_TYPE_USER}


class Image:
    """An open image. `close()` (or leaving a `with` block) closes it; the host closes any
    image still open when the job ends, and releases its locks."""

    def __init__(self, ioctx, name=None, snapshot=None, read_only=False, image_id=None, _oncomplete=None):
        _unsupported("Image", image_id=image_id)
        self.name = _cstr(name, "name")
        snapshot = _cstr(snapshot, "snapshot", opt=True)
        self._image = _call(_pool(ioctx).open, self.name,
                            _types.OpenOptions(snapshot=snapshot, read_only=bool(read_only)))
        self.closed = False

    def _handle(self):
        if self.closed:
            raise InvalidArgument("image is closed")
        return self._image

    def __enter__(self):
        return self

    def __exit__(self, type_, value, traceback):
        self.close()
        return False

    def close(self):
        """Close the image. Closing twice is harmless."""
        if not self.closed:
            self.closed = True
            image, self._image = self._image, None
            image.__exit__(None, None, None)

    def get_name(self):
        return self.name

    # Layout and metadata.

    def size(self):
        """The size in bytes (of the snapshot, if one is set)."""
        return _call(self._handle().size)

    def stat(self):
        """A dict: size, obj_size, num_objs, order, block_name_prefix, and the deprecated
        parent_pool and parent_name, which are what python-rbd gives (2**64-1 and b'')."""
        s = _call(self._handle().stat)
        return {
            "size": s.size, "obj_size": s.obj_size, "num_objs": s.num_objs, "order": s.order,
            "block_name_prefix": s.block_name_prefix,
            "parent_pool": s.parent_pool & 0xFFFFFFFFFFFFFFFF, "parent_name": s.parent_name.encode(),
        }

    def block_name_prefix(self):
        return _call(self._handle().stat).block_name_prefix

    def features(self):
        return _call(self._handle().features)

    def old_format(self):
        return _call(self._handle().old_format)

    def stripe_unit(self):
        return _call(self._handle().stripe_unit)

    def stripe_count(self):
        return _call(self._handle().stripe_count)

    # Data.

    def read(self, offset, length, fadvise_flags=0):
        """`length` bytes from `offset` (fewer at the end of the image). Raises
        InvalidArgument if `offset` is at or past the end."""
        return _call(self._handle().read, int(offset), int(length))

    def write(self, data, offset, fadvise_flags=0):
        """Write `data` at `offset`; returns the number of bytes written. Raises
        IncompleteWriteError past the end, InvalidArgument at or after it, ReadOnlyImage."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        elif not isinstance(data, bytes):
            raise TypeError("data must be a byte string")
        return _call(self._handle().write, int(offset), data)

    def discard(self, offset, length):
        """Release the range; see wit/rbd.wit for which bytes then read as zeroes."""
        _call(self._handle().discard, int(offset), int(length))

    def flush(self):
        _call(self._handle().flush)

    def invalidate_cache(self):
        _call(self._handle().invalidate_cache)

    def resize(self, size, allow_shrink=True):
        """Grow or shrink the image. With `allow_shrink=False`, shrinking raises InvalidArgument."""
        if not allow_shrink and int(size) < self.size():
            raise InvalidArgument("error resizing image: shrinking is not allowed", errno=22)
        _call(self._handle().resize, int(size))

    # Snapshots.

    def create_snap(self, name, flags=0):
        """Raises ImageExists, ReadOnlyImage."""
        _call(self._handle().create_snap, _cstr(name, "name"))

    def remove_snap(self, name):
        """Raises ImageNotFound, ImageBusy (protected)."""
        _call(self._handle().remove_snap, _cstr(name, "name"))

    def rollback_to_snap(self, name):
        _call(self._handle().rollback_to_snap, _cstr(name, "name"))

    def protect_snap(self, name):
        _call(self._handle().protect_snap, _cstr(name, "name"))

    def unprotect_snap(self, name):
        _call(self._handle().unprotect_snap, _cstr(name, "name"))

    def is_protected_snap(self, name):
        return _call(self._handle().is_protected_snap, _cstr(name, "name"))

    def list_snaps(self):
        """A SnapIterator over the snapshots, oldest first."""
        return SnapIterator(self)

    def snap_exists(self, name):
        name = _cstr(name, "name")
        return any(s.name == name for s in _call(self._handle().list_snaps))

    def get_snap_timestamp(self, snap_id):
        """When snapshot `snap_id` was taken, as a naive UTC datetime."""
        for s in _call(self._handle().list_snaps):
            if s.id == snap_id:
                moment = _datetime.datetime.fromtimestamp(s.timestamp, _datetime.timezone.utc)
                return moment.replace(tzinfo=None)
        raise ImageNotFound(f"error getting snapshot timestamp for image {self.name}: no snapshot id {snap_id}", errno=2)

    def set_snap(self, name):
        """Read from snapshot `name` (writes then raise ReadOnlyImage), or from the head with None."""
        _call(self._handle().set_snap, _cstr(name, "name", opt=True))

    def diff_iterate(self, offset, length, from_snapshot, iterate_cb, include_parent=True, whole_object=False):
        """Call `iterate_cb(offset, length, exists)` for each extent that changed since
        `from_snapshot` (None: since the beginning), in offset order. A callback that
        returns a non-zero number stops the iteration, which then raises the exception of
        that errno, as python-rbd does."""
        from_snapshot = _cstr(from_snapshot, "from_snapshot", opt=True)
        extents = _call(self._handle().diff_iterate, int(offset), int(length), from_snapshot,
                        bool(include_parent), bool(whole_object))
        with extents:
            while True:
                batch = _call(extents.next_batch)
                if batch is None:
                    return
                for e in batch:
                    ret = iterate_cb(e.offset, e.length, e.exists)
                    if ret:
                        errno = abs(int(ret))
                        raise _ERRNO.get(errno, OSError)(f"error generating diff from snapshot {from_snapshot}", errno=errno)

    # Clones and copies.

    def parent_info(self):
        """(pool name, image name, snapshot name) of a clone's parent. Raises ImageNotFound
        for an image that is not a clone, as python-rbd does."""
        parent = _call(self._handle().parent_info)
        if parent is None:
            raise ImageNotFound(f"error getting parent info for image {self.name}", errno=2)
        return tuple(parent)

    def list_children(self):
        """The clones of the snapshot set with set_snap, as (pool name, image name) tuples."""
        return [(c.pool, c.image) for c in _call(self._handle().list_children)]

    def flatten(self, on_progress=None):
        _call(self._handle().flatten)

    def copy(self, dest_ioctx, dest_name, features=None, order=None, stripe_unit=None,
             stripe_count=None, data_pool=None):
        """Copy the image (or the selected snapshot) to `dest_name` in `dest_ioctx`'s pool.
        Raises ImageExists."""
        _unsupported("copy", features=features, order=order, stripe_unit=stripe_unit,
                     stripe_count=stripe_count, data_pool=data_pool)
        _call(self._handle().copy, _pool(dest_ioctx), _cstr(dest_name, "dest_name"))

    # Advisory locks.

    def list_lockers(self):
        """[] when nobody holds a lock, else a dict: tag, exclusive, and lockers as
        (client, cookie, address) tuples."""
        info = _call(self._handle().list_lockers)
        if not info.lockers:
            return []
        return {
            "tag": info.tag,
            "exclusive": info.exclusive,
            "lockers": [(l.client, l.cookie, l.address) for l in info.lockers],
        }

    def watchers_list(self):
        """The clients that have the image open for writing, as python-rbd lists them:
        dicts of addr, id (the client's number, as in `client.<id>`) and cookie."""
        return [
            {"addr": w.address, "id": int(w.client.rpartition(".")[2] or 0), "cookie": w.cookie}
            for w in _call(self._handle().list_watchers)
        ]

    def lock_exclusive(self, cookie):
        """Raises ImageBusy if another client or cookie holds it, ImageExists if this one does."""
        _call(self._handle().lock_exclusive, _cstr(cookie, "cookie"))

    def lock_shared(self, cookie, tag):
        """Raises ImageBusy if locked exclusively or with another tag, ImageExists if this
        client holds it with this cookie."""
        _call(self._handle().lock_shared, _cstr(cookie, "cookie"), _cstr(tag, "tag"))

    def unlock(self, cookie):
        _call(self._handle().unlock, _cstr(cookie, "cookie"))

    def break_lock(self, client, cookie):
        _call(self._handle().break_lock, _cstr(client, "client"), _cstr(cookie, "cookie"))
