"""A test job for the Python SDK (tests/tests/python.rs): every call of `rados` and `rbd`,
their results in python-rbd's shapes, and the exceptions python-rbd raises, on whichever
backend the host runs it against. Each check prints `ok NAME`; the first that fails raises.

    api POOL OTHER_POOL PREFIX     every check, on images named PREFIX-*
    raise                          fails with ValueError
    exit N                         sys.exit(N)
    missing-image POOL             an uncaught ImageNotFound
    progress                       reports progress and succeeds
    sandbox                        what the job sees of the machine: environment, files,
                                   network, and /out when the host maps it
"""

import datetime
import os
import sys

import rados
import rbd
import rbd_wasm

MiB = 1 << 20


def raises(cls, fn, *args, errno=None, **kwargs):
    try:
        fn(*args, **kwargs)
    except cls as e:
        if errno is not None and getattr(e, "errno", None) != errno:
            raise AssertionError(f"{cls.__name__} with errno {e.errno}, expected {errno}: {e}")
        return e
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not raise {cls.__name__}")


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok {name}")


def api(pool, other_pool, prefix):
    img, img2 = f"{prefix}-a", f"{prefix}-b"

    # rados: the grant is the cluster.
    cluster = rados.Rados(conffile="/etc/ceph/ceph.conf")
    check("rados_state_configuring", cluster.state == "configuring")
    cluster.connect()
    check("rados_list_pools_is_the_grant", cluster.list_pools() == rbd_wasm.granted_pools(), cluster.list_pools())
    check("no_secrets_without_a_grant", rbd_wasm.secret_names() == [], rbd_wasm.secret_names())
    try:
        rbd_wasm.secret("s3-secret-key")
        raise AssertionError("a secret not handed was answered")
    except KeyError:
        print("ok secret_not_handed_is_a_key_error")
    check("rados_pool_exists", cluster.pool_exists(pool) and not cluster.pool_exists(f"{prefix}-nopool"))
    e = raises(rados.ObjectNotFound, cluster.open_ioctx, f"{prefix}-nopool", errno=2)
    check("rados_ungranted_pool_is_object_not_found",
          isinstance(e, rados.OSError) and isinstance(e, rados.Error) and str(e).startswith("[errno 2] RADOS object not found"), str(e))
    ioctx = cluster.open_ioctx(pool)
    other = cluster.open_ioctx(other_pool)
    check("ioctx_name", ioctx.name == pool and ioctx.get_pool_name() == pool)
    r = rbd.RBD()

    # RBD: create, list, rename, remove.
    version = r.version()
    check("rbd_version_is_a_triple", isinstance(version, tuple) and len(version) == 3, version)
    r.create(ioctx, img, 8 * MiB)
    check("create_and_list", img in r.list(ioctx))
    e = raises(rbd.ImageExists, r.create, ioctx, img, MiB, errno=17)
    check("create_existing_is_image_exists", isinstance(e, rbd.OSError) and isinstance(e, rbd.Error)
          and str(e).startswith("[errno 17] RBD image already exists"), str(e))
    raises(rbd.InvalidArgument, r.create, ioctx, f"{prefix}-fmt1", MiB, features=1)
    check("old_format_with_features_is_invalid_argument", True)
    raises(rbd.ArgumentOutOfRange, r.create, ioctx, f"{prefix}-order", MiB, order=40, old_format=False)
    check("order_40_is_argument_out_of_range", f"{prefix}-order" not in r.list(ioctx))
    raises(rbd.InvalidArgument, r.create, ioctx, 5, MiB)
    check("non_string_name_is_invalid_argument", True)
    raises(TypeError, r.create, "not an ioctx", img2, MiB)
    check("non_ioctx_is_type_error", True)
    r.create(ioctx, img2, MiB, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
    r.rename(ioctx, img2, f"{img2}-renamed")
    check("rename", f"{img2}-renamed" in r.list(ioctx) and img2 not in r.list(ioctx))
    raises(rbd.ImageExists, r.rename, ioctx, f"{img2}-renamed", img, errno=17)
    raises(rbd.ImageNotFound, r.rename, ioctx, img2, f"{img2}-x", errno=2)
    check("rename_errors", True)
    r.rename(ioctx, f"{img2}-renamed", img2)
    raises(rbd.ImageNotFound, r.remove, ioctx, f"{prefix}-none", errno=2)
    check("remove_missing_is_image_not_found", True)
    raises(rbd.ImageNotFound, rbd.Image, ioctx, f"{prefix}-none", errno=2)
    check("open_missing_is_image_not_found", True)

    # Image I/O.
    with rbd.Image(ioctx, img) as image:
        check("write_str_returns_length", image.write("foo" * 200, 0) == 600)
        check("write_bytes", image.write(b"\x01\x02\x03", MiB) == 3)
        check("read", image.read(0, 6) == b"foofoo" and image.read(MiB, 3) == b"\x01\x02\x03")
        check("read_is_cut_at_the_end", len(image.read(8 * MiB - 5, 100)) == 5)
        raises(rbd.InvalidArgument, image.read, 8 * MiB + 5, 10, errno=22)
        check("read_after_the_end_is_invalid_argument", True)
        e = raises(rbd.IncompleteWriteError, image.write, b"x" * 10, 8 * MiB - 5)
        check("write_past_the_end_is_incomplete_write", "Wrote only 5 out of 10 bytes" in str(e), str(e))
        raises(rbd.InvalidArgument, image.write, b"x", 8 * MiB + 5, errno=22)
        check("write_after_the_end_is_invalid_argument", True)
        raises(TypeError, image.write, 12345, 0)
        check("write_of_a_number_is_type_error", True)
        check("size", image.size() == 8 * MiB)
        stat = image.stat()
        check("stat_keys", set(stat) == {"size", "obj_size", "num_objs", "order", "block_name_prefix", "parent_pool", "parent_name"}
              and stat["size"] == 8 * MiB and stat["obj_size"] == 1 << stat["order"] and stat["num_objs"] == 2
              and stat["parent_pool"] == 2**64 - 1 and stat["parent_name"] == b"", stat)
        check("layout", image.stripe_count() == 1 and image.stripe_unit() == stat["obj_size"]
              and image.old_format() is False and image.features() & rbd.RBD_FEATURE_LAYERING)
        check("block_name_prefix", image.block_name_prefix() == stat["block_name_prefix"])

        # Snapshots.
        image.create_snap("s1")
        raises(rbd.ImageExists, image.create_snap, "s1", errno=17)
        snaps = list(image.list_snaps())
        check("list_snaps_dicts", len(snaps) == 1 and set(snaps[0]) == {"id", "size", "name", "namespace"}
              and snaps[0]["name"] == "s1" and snaps[0]["size"] == 8 * MiB, snaps)
        check("snap_exists", image.snap_exists("s1") and not image.snap_exists("s2"))
        check("get_snap_timestamp", isinstance(image.get_snap_timestamp(snaps[0]["id"]), datetime.datetime))
        image.write(b"bar", 0)
        image.resize(16 * MiB)
        check("resize", image.size() == 16 * MiB)
        raises(rbd.InvalidArgument, image.resize, MiB, allow_shrink=False)
        check("resize_without_shrink", image.size() == 16 * MiB)
        extents = []
        image.diff_iterate(0, 16 * MiB, "s1", lambda *extent: extents.append(extent))
        check("diff_iterate_from_snapshot", extents and all(len(x) == 3 and isinstance(x[2], bool) for x in extents)
              and extents[0][0] == 0, extents)
        whole = []
        image.diff_iterate(0, 16 * MiB, None, lambda o, l, x: whole.append((o, l, x)))
        check("diff_iterate_from_the_beginning", sum(l for _, l, x in whole if x) >= 603, whole)
        raises(rbd.ImageNotFound, image.diff_iterate, 0, MiB, "nosnap", lambda *a: None)
        check("diff_iterate_missing_snapshot", True)
        image.set_snap("s1")
        check("set_snap_reads_the_snapshot", image.read(0, 3) == b"foo" and image.size() == 8 * MiB)
        raises(rbd.ReadOnlyImage, image.write, b"x", 0, errno=30)
        check("write_at_a_snapshot_is_read_only", True)
        image.set_snap(None)
        raises(rbd.ImageNotFound, image.set_snap, "nosnap", errno=2)
        check("set_snap_missing", image.read(0, 3) == b"bar")
        image.rollback_to_snap("s1")
        check("rollback_to_snap", image.read(0, 3) == b"foo" and image.size() == 8 * MiB)
        image.protect_snap("s1")
        check("protect_snap", image.is_protected_snap("s1"))
        raises(rbd.ImageBusy, image.protect_snap, "s1", errno=16)
        raises(rbd.ImageBusy, image.remove_snap, "s1", errno=16)
        check("protected_snapshot_is_busy", True)
        raises(rbd.ImageNotFound, image.is_protected_snap, "nosnap", errno=2)
        raises(rbd.ImageNotFound, image.remove_snap, "nosnap", errno=2)
        check("missing_snapshot_is_image_not_found", True)

        # Clones.
        r.clone(ioctx, img, "s1", other, f"{prefix}-clone", features=rbd.RBD_FEATURE_LAYERING)
        image.set_snap("s1")
        check("list_children", image.list_children() == [(other_pool, f"{prefix}-clone")], image.list_children())
        image.set_snap(None)
        raises(rbd.ImageNotFound, image.parent_info)
        check("parent_info_of_a_non_clone_is_image_not_found", True)
        with rbd.Image(other, f"{prefix}-clone") as clone:
            check("parent_info", clone.parent_info() == (pool, img, "s1"), clone.parent_info())
            check("clone_reads_the_parent", clone.read(0, 3) == b"foo")
            raises(rbd.ImageBusy, image.unprotect_snap, "s1")
            check("unprotect_with_children_is_busy", True)
            clone.flatten()
            raises(rbd.ImageNotFound, clone.parent_info)
            check("flatten", clone.read(0, 3) == b"foo")
        image.set_snap("s1")
        check("flattened_clone_is_no_child", image.list_children() == [], image.list_children())
        image.set_snap(None)
        r.remove(other, f"{prefix}-clone")
        image.unprotect_snap("s1")
        check("unprotect_snap", not image.is_protected_snap("s1"))
        raises(rbd.ImageHasSnapshots, r.remove, ioctx, img, errno=39)
        check("remove_with_snapshots_is_image_has_snapshots", True)

        # Copies, discard, flush.
        image.copy(other, f"{prefix}-copy")
        with rbd.Image(other, f"{prefix}-copy", read_only=True) as copy:
            check("copy", copy.read(0, 600) == b"foo" * 200 and copy.size() == 8 * MiB)
            raises(rbd.ReadOnlyImage, copy.write, b"x", 0, errno=30)
            check("read_only_open", True)
        raises(rbd.ImageExists, image.copy, other, f"{prefix}-copy", errno=17)
        raises(rbd.FunctionNotSupported, image.copy, other, f"{prefix}-copy2", data_pool="x")
        check("copy_errors", True)
        r.remove(other, f"{prefix}-copy")
        image.discard(4 * MiB, 4 * MiB)
        check("discard_whole_object", image.read(4 * MiB, 16) == bytes(16))
        image.flush()
        image.invalidate_cache()
        check("flush_and_invalidate_cache", True)
        image.remove_snap("s1")
        check("remove_snap", list(image.list_snaps()) == [])

    with rbd.Image(ioctx, img, snapshot=None) as image:
        check("image_name", image.get_name() == img)
    raises(rbd.InvalidArgument, image.size)
    check("closed_image_is_invalid_argument", True)
    image.close()
    check("close_twice", True)

    # Advisory locks (on an image without the exclusive-lock feature).
    with rbd.Image(ioctx, img2) as image:
        check("list_lockers_empty", image.list_lockers() == [])
        image.lock_exclusive("cookie-1")
        lockers = image.list_lockers()
        check("list_lockers_exclusive", lockers["exclusive"] is True and lockers["tag"] == ""
              and len(lockers["lockers"]) == 1 and lockers["lockers"][0][1] == "cookie-1", lockers)
        raises(rbd.ImageExists, image.lock_exclusive, "cookie-1", errno=17)
        raises(rbd.ImageBusy, image.lock_exclusive, "cookie-2", errno=16)
        check("relock_errors", True)
        image.unlock("cookie-1")
        raises(rbd.ImageNotFound, image.unlock, "cookie-1", errno=2)
        check("unlock", image.list_lockers() == [])
        image.lock_shared("c1", "tag-a")
        image.lock_shared("c2", "tag-a")
        lockers = image.list_lockers()
        check("lock_shared", lockers["exclusive"] is False and lockers["tag"] == "tag-a" and len(lockers["lockers"]) == 2, lockers)
        raises(rbd.ImageBusy, image.lock_shared, "c3", "tag-b", errno=16)
        # Breaking a lock of this very client would blocklist it on Ceph (librbd's
        # rbd_blocklist_on_break_lock), whatever the cookie: only a lock of a client that
        # holds none is broken here.
        raises(rbd.ImageNotFound, image.break_lock, "client.999999999", "c1", errno=2)
        check("break_lock_of_no_lock_is_image_not_found", True)
        image.unlock("c1")
        image.unlock("c2")
        check("unlock_shared", image.list_lockers() == [])

    # Closing: the Ioctx, then the Rados.
    r.remove(ioctx, img)
    r.remove(ioctx, img2)
    check("removed", img not in r.list(ioctx) and img2 not in r.list(ioctx))
    ioctx.close()
    ioctx.close()
    raises(rados.IoctxStateError, r.list, ioctx)
    check("closed_ioctx_is_ioctx_state_error", True)
    cluster.shutdown()
    check("shutdown_closes_its_ioctxs", other.state == "closed")
    raises(rados.RadosStateError, cluster.open_ioctx, pool)
    check("open_after_shutdown_is_rados_state_error", True)
    with rados.Rados() as cluster:
        check("rados_context_manager_connects", cluster.state == "connected")
        with cluster.open_ioctx(pool) as ioctx:
            pass
        check("ioctx_context_manager_closes", ioctx.state == "closed")
    check("rados_context_manager_shuts_down", cluster.state == "shutdown")


def attempt(what, fn):
    try:
        result = fn()
        print(f"{what}: ok {result!r}")
    except BaseException as e:
        print(f"{what}: {type(e).__name__}")
        print(f"{what}: {type(e).__name__}: {e}", file=sys.stderr)


def sandbox():
    print(f"environment: {dict(os.environ)!r}")
    attempt("read /etc/passwd", lambda: open("/etc/passwd").read(10))
    attempt("list /", lambda: sorted(os.listdir("/")))

    def resolve_and_connect():
        import socket
        return socket.create_connection(("localhost", 22), timeout=2)

    def connect():
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(("127.0.0.1", 22))
        return s

    attempt("connect localhost:22", resolve_and_connect)
    attempt("connect 127.0.0.1:22", connect)

    def write_out():
        with open("/out/hello.txt", "w") as f:
            f.write("hello from python\n")
        return sorted(os.listdir("/out"))

    attempt("write /out/hello.txt", write_out)


def run(args):
    mode = args[0] if args else ""
    if mode == "api":
        api(*args[1:4])
    elif mode == "raise":
        raise ValueError("this job fails on purpose")
    elif mode == "exit":
        sys.exit(int(args[1]))
    elif mode == "missing-image":
        with rados.Rados() as cluster, cluster.open_ioctx(args[1]) as ioctx:
            rbd.Image(ioctx, "no-such-image-here")
    elif mode == "sandbox":
        sandbox()
    elif mode == "progress":
        for done in range(3):
            rbd_wasm.report_progress("steps", done + 1, 3)
        print("reported")
    else:
        raise ValueError(f"unknown mode {mode!r}")
