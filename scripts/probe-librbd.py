#!/usr/bin/python3
"""Probe the exact error semantics of python-rbd (the reference implementation).

rbd-wasm's embedded backend must answer every call the way librbd does. This
script runs each edge case of the python `rbd` API against a live cluster and
prints, per case, the result or the exception class, errno and message:

    create/existing name: ImageExists [errno 17] ...

Usage (run with the system python, which has the rados and rbd modules):

    scripts/ceph-cluster.sh start
    /usr/bin/python3 scripts/probe-librbd.py [--conf PATH] [--markdown]

--conf defaults to $CEPH_CONF, then /tmp/rbd-wasm-ceph/ceph.conf.
--markdown prints the results as the tables in docs/librbd-semantics.md.

The script creates its own fresh pools (probe-rbd, probe-rbd2, probe-empty)
so that results such as snapshot ids do not depend on earlier runs, and
deletes them at the end. Cases that break locks get the victim's client
blocklisted, so those use extra connections of their own. It exits 2 if the
cluster is unreachable and 1 if its own setup (not a probed call) fails.
"""

import argparse
import json
import os
import re
import sys
import threading
import time

import rados
import rbd

MiB = 1 << 20
OBJ = 4 * MiB  # default object size (order 22)

results = []  # (section, case, call, result)
section = ""
markdown = False


def fmt_value(v):
    """Short, exact rendering of a result: bytes are summarised, not dumped."""
    if isinstance(v, (bytes, bytearray)):
        if len(v) <= 16:
            return "bytes %r" % (bytes(v),)
        distinct = sorted(set(v))
        if len(distinct) <= 3:
            return "bytes(len=%d, values=%s)" % (len(v), distinct)
        return "bytes(len=%d)" % len(v)
    return repr(v)


def fmt_exc(e):
    msg = str(e).replace("\n", " ")
    if len(msg) > 160:
        msg = msg[:157] + "..."
    return "%s: %s" % (type(e).__name__, msg)


def run_with_timeout(fn, timeout):
    """Run fn in a daemon thread; return (done, value, exc). A call that
    blocks (e.g. a write stalled behind an advisory lock) is left behind."""
    box = {}

    def target():
        try:
            box["v"] = fn()
        except BaseException as e:  # noqa: BLE001 - we report every exception
            box["e"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return False, None, None
    return True, box.get("v"), box.get("e")


def probe(case, call, fn, timeout=None):
    """Run one case, print `case: result`, and record it for --markdown."""
    if timeout is None:
        try:
            res = "-> " + fmt_value(fn())
        except Exception as e:  # noqa: BLE001
            res = fmt_exc(e)
    else:
        done, v, e = run_with_timeout(fn, timeout)
        if not done:
            res = "BLOCKED (no answer within %g s)" % timeout
        elif e is not None:
            res = fmt_exc(e)
        else:
            res = "-> " + fmt_value(v)
    # Long runs of one character (names like 'x'*300) are shortened.
    res = re.sub(r"(.)\1{39,}", lambda m: "%s<x%d>" % (m.group(1), len(m.group(0))), res)
    results.append((section, case, call, res))
    if not markdown:
        print("%s/%s: %s" % (section, case, res), flush=True)
    return res


def begin(name):
    global section
    section = name
    if not markdown:
        print("\n== %s ==" % name, flush=True)


# --- setup helpers (failures here are bugs in the probe, not results) ------

R = rbd.RBD()


POOL, POOL2, EMPTY_POOL = "probe-rbd", "probe-rbd2", "probe-empty"
CONF = None
CLUSTER = None  # the main connection, never the victim of break_lock


def connect():
    """A new cluster connection: a new client (client.<global id>) for locks."""
    c = rados.Rados(conffile=CONF)
    c.conf_set("client_mount_timeout", "15")
    c.connect(timeout=15)
    return c


def fresh_pool(cluster, name, init=True):
    """(Re)create a scratch pool, as `rbd pool init` would have it."""
    if cluster.pool_exists(name):
        cluster.delete_pool(name)
    cluster.create_pool(name)
    if init:
        with cluster.open_ioctx(name) as io:
            R.pool_init(io, True)


def client_of(im, cookie):
    return [x[0] for x in im.list_lockers()["lockers"] if x[1] == cookie][0]


def mk(ioctx, name, size=8 * MiB, **kw):
    R.create(ioctx, name, size, **kw)
    return name


def opened(ioctx, name, **kw):
    return rbd.Image(ioctx, name, **kw)


def diff(im, offset, length, from_snap, **kw):
    out = []
    im.diff_iterate(offset, length, from_snap,
                    lambda o, l, e: out.append((o, l, e)), **kw)
    return out


# --- the cases ---------------------------------------------------------------

def probe_version():
    begin("version")
    probe("version", "RBD().version()", lambda: R.version())


def probe_create(io):
    begin("create")
    mk(io, "probe-c")
    with opened(io, "probe-c") as im:
        probe("default features", "create(io,n,8MiB); features()", im.features)
        probe("default old_format", "old_format()", im.old_format)
        probe("stat() fields", "stat()", im.stat)
        probe("stripe_unit default", "stripe_unit()", im.stripe_unit)
        probe("stripe_count default", "stripe_count()", im.stripe_count)
        probe("size()", "size()", im.size)
        probe("list_snaps none", "list(list_snaps())", lambda: list(im.list_snaps()))
        probe("get_name", "get_name()", im.get_name)
    probe("existing name", "create(io,'probe-c',1MiB)", lambda: mk(io, "probe-c", MiB))
    probe("existing name, different size/order", "create(io,'probe-c',1MiB,order=20)",
          lambda: mk(io, "probe-c", MiB, order=20))

    for order in (0, 11, 12, 20, 25, 26, 30):
        name = "probe-order-%d" % order

        def f(order=order, name=name):
            mk(io, name, 8 * MiB, order=order)
            with opened(io, name) as im:
                st = im.stat()
                return "created: order=%d obj_size=%d num_objs=%d" % (
                    st["order"], st["obj_size"], st["num_objs"])
        probe("order %d" % order, "create(io,n,8MiB,order=%d)" % order, f)

    def old_fmt():
        mk(io, "probe-old", 8 * MiB, old_format=True)
        with opened(io, "probe-old") as im:
            return {"features": im.features(), "old_format": im.old_format(),
                    "stripe_unit": im.stripe_unit(), "stripe_count": im.stripe_count(),
                    "stat": im.stat()}
    probe("old_format=True", "create(io,n,8MiB,old_format=True); features(), old_format(), stat()",
          old_fmt)
    probe("old_format=True, features=1", "create(io,n,8MiB,old_format=True,features=1)",
          lambda: mk(io, "probe-old-f1", 8 * MiB, old_format=True, features=1))
    probe("old_format=True, features=0", "create(io,n,8MiB,old_format=True,features=0)",
          lambda: mk(io, "probe-old-f0", 8 * MiB, old_format=True, features=0))
    probe("old_format=True, stripe_unit", "create(io,n,8MiB,old_format=True,stripe_unit=65536,stripe_count=2)",
          lambda: mk(io, "probe-old-su", 8 * MiB, old_format=True, stripe_unit=65536, stripe_count=2))

    def feats(features, name):
        def f():
            mk(io, name, 8 * MiB, features=features)
            with opened(io, name) as im:
                return "created: features=%d" % im.features()
        return f
    probe("features=0", "create(io,n,8MiB,features=0)", feats(0, "probe-f0"))
    probe("features=1 (layering)", "create(...,features=1)", feats(1, "probe-f1"))
    probe("unknown feature bit 1<<20", "create(...,features=1<<20)", feats(1 << 20, "probe-f20"))
    probe("unknown bit with layering", "create(...,features=1|1<<20)", feats(1 | 1 << 20, "probe-f20b"))
    probe("object-map without exclusive-lock", "create(...,features=1|8)", feats(1 | 8, "probe-f9"))
    probe("fast-diff without object-map", "create(...,features=1|4|16)", feats(1 | 4 | 16, "probe-f21"))
    probe("journaling without exclusive-lock", "create(...,features=64)", feats(64, "probe-f64"))
    probe("deep-flatten alone", "create(...,features=32)", feats(32, "probe-f32"))
    probe("exclusive-lock alone", "create(...,features=4)", feats(4, "probe-f4"))

    def stripe(name, su, sc, **kw):
        def f():
            mk(io, name, 8 * MiB, stripe_unit=su, stripe_count=sc, **kw)
            with opened(io, name) as im:
                return "created: features=%d stripe_unit=%d stripe_count=%d" % (
                    im.features(), im.stripe_unit(), im.stripe_count())
        return f
    probe("stripe_unit not dividing object size", "create(...,stripe_unit=3000,stripe_count=2)",
          stripe("probe-s1", 3000, 2))
    probe("stripe_unit > object size", "create(...,stripe_unit=8MiB,stripe_count=1)",
          stripe("probe-s2", 8 * MiB, 1))
    probe("stripe 64K x2, features=1 (no STRIPINGV2)", "create(...,features=1,stripe_unit=65536,stripe_count=2)",
          stripe("probe-s3", 65536, 2, features=1))
    probe("stripe 64K x2, features=3 (STRIPINGV2)", "create(...,features=3,stripe_unit=65536,stripe_count=2)",
          stripe("probe-s4", 65536, 2, features=3))
    probe("stripe 64K x2, default features", "create(...,stripe_unit=65536,stripe_count=2)",
          stripe("probe-s5", 65536, 2))
    probe("stripe = object size x1, features=1", "create(...,features=1,stripe_unit=4MiB,stripe_count=1)",
          stripe("probe-s6", OBJ, 1, features=1))
    probe("stripe_unit=65536 only", "create(...,stripe_unit=65536)",
          stripe("probe-s7", 65536, 0))
    probe("stripe_count=2 only", "create(...,stripe_count=2)",
          stripe("probe-s8", 0, 2))

    def striped_io():
        with opened(io, "probe-s4") as im:
            im.write(b"\xab" * (200 * 1024), 0)
            return "read back equal: %s; diff=%s" % (
                im.read(0, 200 * 1024) == b"\xab" * (200 * 1024),
                diff(im, 0, im.size(), None))
    probe("striped image I/O and diff", "write 200KiB at 0 on 64Kx2 image; read; diff_iterate",
          striped_io)

    def size0():
        mk(io, "probe-z", 0)
        with opened(io, "probe-z") as im:
            out = {"size": im.size(), "stat": im.stat()}
            for label, fn in (("read(0,0)", lambda: im.read(0, 0)),
                              ("read(0,1)", lambda: im.read(0, 1)),
                              ("write(b'',0)", lambda: im.write(b"", 0)),
                              ("write(b'x',0)", lambda: im.write(b"x", 0)),
                              ("diff", lambda: diff(im, 0, 0, None))):
                try:
                    out[label] = fmt_value(fn())
                except Exception as e:  # noqa: BLE001
                    out[label] = fmt_exc(e)
            return out
    probe("size 0", "create(io,n,0); size(), stat(), read/write", size0)
    probe("negative size", "create(io,n,-1)", lambda: mk(io, "probe-neg", -1))
    probe("size 2**64", "create(io,n,2**64)", lambda: mk(io, "probe-big", 2 ** 64))
    probe("size 2**63 (huge)", "create(io,n,2**63)", lambda: mk(io, "probe-huge", 2 ** 63))
    probe("size 2**64-1", "create(io,n,2**64-1)", lambda: mk(io, "probe-max", 2 ** 64 - 1))
    probe("size 2**63-1", "create(io,n,2**63-1)", lambda: mk(io, "probe-max2", 2 ** 63 - 1))
    probe("size 2**62", "create(io,n,2**62)", lambda: mk(io, "probe-max3", 2 ** 62))
    probe("size 2**40", "create(io,n,2**40)", lambda: mk(io, "probe-tib", 2 ** 40))
    # The object map holds at most 256,000,000 objects (cls_rbd's limit).
    probe("size 256e6 objects + 1 byte (object map limit)", "create(io,n,(256000000<<22)+1)",
          lambda: mk(io, "probe-om", (256000000 << 22) + 1))
    probe("size 2**64-1 without object map", "create(io,n,2**64-1,features=1); stat()",
          lambda: (mk(io, "probe-max4", 2 ** 64 - 1, features=1),
                   opened(io, "probe-max4").stat())[1])
    probe("size not a multiple of 512", "create(io,n,1000)", lambda: mk(io, "probe-odd", 1000))

    def name_case(n):
        def f():
            before = set(R.list(io))
            mk(io, n, MiB)
            new = sorted(set(R.list(io)) - before)
            with opened(io, n) as im:
                got = im.get_name()
            return "created; list() gained %r; get_name()=%r" % (new, got)
        return f
    probe("name ''", "create(io,'',1MiB)", name_case(""))
    probe("name 'a/b'", "create(io,'probe-a/b',1MiB)", name_case("probe-a/b"))
    probe("name 'a@b'", "create(io,'probe-a@b',1MiB)", name_case("probe-a@b"))
    probe("name 'x'*300", "create(io,'probe-'+'x'*300,1MiB)", name_case("probe-" + "x" * 300))
    probe("name 'x'*5000", "create(io,'probe-'+'x'*5000,1MiB)", name_case("probe-" + "x" * 5000))
    probe("name with NUL", "create(io,'probe-a\\0b',1MiB)", name_case("probe-a\0b"))
    probe("name unicode 'é'", "create(io,'probe-é',1MiB)", name_case("probe-\u00e9"))
    probe("name with space and newline", "create(io,'probe-a b\\n',1MiB)", name_case("probe-a b\n"))
    probe("name bytes", "create(io,b'probe-bytes',1MiB)", name_case(b"probe-bytes"))
    probe("name '.'", "create(io,'.',1MiB)", name_case("."))


def probe_list_remove_rename(cluster, io):
    begin("list/remove/rename")
    fresh_pool(cluster, EMPTY_POOL, init=False)
    try:
        with cluster.open_ioctx(EMPTY_POOL) as eio:
            probe("list on empty, never-initialised pool", "list(ioctx of new pool)", lambda: R.list(eio))
            probe("list2 on empty pool", "list2(ioctx)", lambda: list(R.list2(eio)))

            def order():
                for n in ("probe-b", "probe-C", "probe-a", "probe-10", "probe-9"):
                    mk(eio, n, MiB)
                return R.list(eio)
            probe("list order", "create b,C,a,10,9; list()", order)
            probe("list2 entries", "list(list2(io))", lambda: list(R.list2(eio))[:2])
            # Empty names in a pool that is deleted afterwards: a failed
            # rename to '' leaves state behind (see the results).
            probe("open '' (no image has that name)", "Image(io,'')", lambda: opened(eio, ""))
            probe("rename to ''", "rename(io,'probe-a','')", lambda: R.rename(eio, "probe-a", ""))
            probe("list after failed rename to ''", "list(io)", lambda: R.list(eio))
            probe("open '' after failed rename to ''", "Image(io,'').get_name(), id()",
                  lambda: (lambda im: (im.get_name(), im.id(), im.close()))(opened(eio, "")))
            probe("id of probe-a", "Image(io,'probe-a').id()",
                  lambda: (lambda im: (im.id(), im.close()))(opened(eio, "probe-a")))
            probe("rados objects rbd_id.*", "ioctx.list_objects()",
                  lambda: sorted(o.key for o in eio.list_objects() if o.key.startswith("rbd_id.")))
            probe("remove '' after failed rename", "remove(io,'')", lambda: R.remove(eio, ""))
            probe("probe-a after remove ''", "Image(io,'probe-a').read(0,1)",
                  lambda: opened(eio, "probe-a").read(0, 1))
            probe("list after remove ''", "list(io)", lambda: R.list(eio))
    finally:
        cluster.delete_pool(EMPTY_POOL)
    probe("open_ioctx missing pool", "cluster.open_ioctx('nope')", lambda: cluster.open_ioctx("probe-nope"))

    probe("remove missing", "remove(io,'probe-missing')", lambda: R.remove(io, "probe-missing"))

    mk(io, "probe-rs")
    with opened(io, "probe-rs") as im:
        im.create_snap("s")
    probe("remove with snapshots", "remove(io,n) with 1 snap", lambda: R.remove(io, "probe-rs"))

    mk(io, "probe-ro")
    h = opened(io, "probe-ro")
    probe("remove while open (rw handle)", "remove(io,n) while Image(io,n) open",
          lambda: R.remove(io, "probe-ro"))
    h.close()
    h = opened(io, "probe-ro", read_only=True)
    probe("remove while open read_only", "remove(io,n) while Image(io,n,read_only=True) open",
          lambda: R.remove(io, "probe-ro"))
    try:
        probe("read from handle after its image was removed", "im.read(0,10)", lambda: h.read(0, 10))
        probe("size() of handle after its image was removed", "im.size()", h.size)
    finally:
        h.close()

    mk(io, "probe-ro2")
    h = opened(io, "probe-ro2", snapshot=None)
    h.write(b"x", 0)  # acquires the exclusive-lock feature's lock
    probe("remove while open and written (lock held)", "write via handle; remove(io,n)",
          lambda: R.remove(io, "probe-ro2"))
    h.close()

    mk(io, "probe-par")
    with opened(io, "probe-par") as im:
        im.create_snap("s")
        im.protect_snap("s")
    R.clone(io, "probe-par", "s", io, "probe-par-child")
    probe("remove parent that has a clone", "remove(io,parent)", lambda: R.remove(io, "probe-par"))
    probe("remove clone", "remove(io,child)", lambda: R.remove(io, "probe-par-child"))

    mk(io, "probe-rn1")
    mk(io, "probe-rn2")
    probe("rename missing", "rename(io,'probe-missing','probe-x')",
          lambda: R.rename(io, "probe-missing", "probe-x"))
    probe("rename onto existing", "rename(io,'probe-rn1','probe-rn2')",
          lambda: R.rename(io, "probe-rn1", "probe-rn2"))
    probe("rename onto itself", "rename(io,'probe-rn1','probe-rn1')",
          lambda: R.rename(io, "probe-rn1", "probe-rn1"))
    probe("rename to name with NUL", "rename(io,'probe-rn1','probe-a\\0b')",
          lambda: R.rename(io, "probe-rn1", "probe-a\0b"))
    probe("rename to 'a/b'", "rename(io,'probe-rn1','probe-r/b')",
          lambda: R.rename(io, "probe-rn1", "probe-r/b"))
    probe("rename to 'a@b'", "rename(io,'probe-r/b','probe-r@b')",
          lambda: R.rename(io, "probe-r/b", "probe-r@b"))
    probe("rename back", "rename(io,'probe-r@b','probe-rn1')",
          lambda: R.rename(io, "probe-r@b", "probe-rn1"))
    h = opened(io, "probe-rn1")
    probe("rename while open", "rename(io,'probe-rn1','probe-rn3') with handle open",
          lambda: R.rename(io, "probe-rn1", "probe-rn3"))
    try:
        probe("open handle after rename: get_name()", "im.get_name()", h.get_name)
        probe("open handle after rename: write", "im.write(b'x',0)", lambda: h.write(b"x", 0))
    finally:
        h.close()


def probe_open(io):
    begin("open")
    probe("open missing", "Image(io,'probe-missing')", lambda: opened(io, "probe-missing"))
    mk(io, "probe-o")
    with opened(io, "probe-o") as im:
        im.write(b"A" * 4096, 0)
        im.create_snap("s")
        im.write(b"B" * 4096, 0)
    probe("open at missing snapshot", "Image(io,n,snapshot='nope')",
          lambda: opened(io, "probe-o", snapshot="nope"))
    probe("open with no name", "Image(io)", lambda: rbd.Image(io))

    with opened(io, "probe-o", snapshot="s") as im:
        probe("open at snapshot: read", "Image(io,n,snapshot='s').read(0,4)", lambda: im.read(0, 4))
        probe("open at snapshot: write", "write(b'x',0)", lambda: im.write(b"x", 0))
        probe("open at snapshot: set_snap(None) then write",
              "set_snap(None); write(b'x',0)",
              lambda: (im.set_snap(None), im.write(b"x", 0)))

    with opened(io, "probe-o", read_only=True) as im:
        probe("read_only: read", "read(0,4)", lambda: im.read(0, 4))
        probe("read_only: write", "write(b'x',0)", lambda: im.write(b"x", 0))
        probe("read_only: discard", "discard(0,4096)", lambda: im.discard(0, 4096))
        probe("read_only: resize", "resize(1MiB)", lambda: im.resize(MiB))
        probe("read_only: create_snap", "create_snap('t')", lambda: im.create_snap("t"))
        probe("read_only: remove_snap", "remove_snap('s')", lambda: im.remove_snap("s"))
        probe("read_only: protect_snap", "protect_snap('s')", lambda: im.protect_snap("s"))
        probe("read_only: rollback_to_snap", "rollback_to_snap('s')", lambda: im.rollback_to_snap("s"))
        probe("read_only: flatten (not a clone)", "flatten()", im.flatten)
        probe("read_only: flush", "flush()", im.flush)
        probe("read_only: invalidate_cache", "invalidate_cache()", im.invalidate_cache)
        probe("read_only: lock_exclusive", "lock_exclusive('c')", lambda: im.lock_exclusive("c"))
        probe("read_only: list_lockers", "list_lockers()", im.list_lockers)
        probe("read_only: unlock", "unlock('c')", lambda: im.unlock("c"))
        probe("read_only: lock_shared", "lock_shared('c2','t')", lambda: im.lock_shared("c2", "t"))
        probe("read_only: unlock shared", "unlock('c2')", lambda: im.unlock("c2"))
        probe("read_only: set_snap then set_snap(None) then write",
              "set_snap('s'); set_snap(None); write(b'x',0)",
              lambda: (im.set_snap("s"), im.set_snap(None), im.write(b"x", 0)))
        probe("read_only: copy", "copy(io,'probe-o-copy')", lambda: im.copy(io, "probe-o-copy"))

    im = opened(io, "probe-o")
    im.close()
    probe("closed handle: read", "close(); read(0,1)", lambda: im.read(0, 1))
    probe("closed handle: size", "close(); size()", im.size)
    probe("closed handle: close again", "close(); close()", im.close)


def probe_read_write(io):
    begin("read/write")
    size = 8 * MiB
    mk(io, "probe-rw", size)
    with opened(io, "probe-rw") as im:
        im.write(b"\x11" * 4096, size - 4096)
        probe("read(0,0)", "read(0,0)", lambda: im.read(0, 0))
        probe("read(size,0)", "read(size,0)", lambda: im.read(size, 0))
        probe("read(size+1MiB,0)", "read(size+1MiB,0)", lambda: im.read(size + MiB, 0))
        probe("read(size,1)", "read(size,1)", lambda: im.read(size, 1))
        probe("read(size+4096,1)", "read(size+4096,1)", lambda: im.read(size + 4096, 1))
        probe("read(size-10,100)", "read(size-10,100)", lambda: im.read(size - 10, 100))
        probe("read(size-1,1)", "read(size-1,1)", lambda: im.read(size - 1, 1))
        probe("read unwritten", "read(0,8)", lambda: im.read(0, 8))
        probe("read(0,2**63)", "read(0,2**63)", lambda: im.read(0, 2 ** 63))
        probe("read(0,2**64)", "read(0,2**64)", lambda: im.read(0, 2 ** 64))
        probe("read(0,size+1)", "read(0,size+1) (len of result)", lambda: len(im.read(0, size + 1)))
        probe("read(-1,1)", "read(-1,1)", lambda: im.read(-1, 1))
        probe("read(2**64-1,1)", "read(2**64-1,1)", lambda: im.read(2 ** 64 - 1, 1))
        probe("read(4096, 2**64-1)", "read(4096,2**64-1) (offset+len wraps)", lambda: im.read(4096, 2 ** 64 - 1))

        probe("write empty at 0", "write(b'',0)", lambda: im.write(b"", 0))
        probe("write empty at size", "write(b'',size)", lambda: im.write(b"", size))
        probe("write empty past end", "write(b'',size+4096)", lambda: im.write(b"", size + 4096))
        probe("write at size", "write(b'x'*10,size)", lambda: im.write(b"x" * 10, size))
        probe("write past end", "write(b'x'*10,size+4096)", lambda: im.write(b"x" * 10, size + 4096))

        def straddle():
            im.write(b"\0" * 100, size - 100)
            try:
                r = "-> %r" % im.write(b"\x22" * 200, size - 100)
            except Exception as e:  # noqa: BLE001
                r = fmt_exc(e)
            return "%s; inside part now %s" % (r, fmt_value(im.read(size - 100, 100)))
        probe("write straddling end", "write(b'\\x22'*200,size-100); read(size-100,100)", straddle)
        probe("write returns count", "write(b'y'*4097,1)", lambda: im.write(b"y" * 4097, 1))
        probe("write str", "write('abc',0)", lambda: im.write("abc", 0))
        probe("write bytearray", "write(bytearray(b'abc'),0)", lambda: im.write(bytearray(b"abc"), 0))
        probe("write memoryview", "write(memoryview(b'abc'),0)", lambda: im.write(memoryview(b"abc"), 0))
        probe("write at -1", "write(b'x',-1)", lambda: im.write(b"x", -1))

        probe("discard(0,0)", "discard(0,0)", lambda: im.discard(0, 0))
        probe("discard(size,10)", "discard(size,10)", lambda: im.discard(size, 10))
        probe("discard(size+4096,10)", "discard(size+4096,10)", lambda: im.discard(size + 4096, 10))

        def discard_straddle():
            im.write(b"\x33" * 4096, size - 4096)
            r = im.discard(size - 100, 1000)
            return "returns %r; tail now %s; before %s" % (
                r, fmt_value(im.read(size - 100, 100)), fmt_value(im.read(size - 4096, 3996)))
        probe("discard straddling end", "discard(size-100,1000)", discard_straddle)

        def discard_small():
            im.write(b"\x44" * 8192, 0)
            im.discard(100, 10)
            return fmt_value(im.read(95, 20))
        probe("discard 10 bytes inside data", "write 8K of 0x44; discard(100,10); read(95,20)", discard_small)

        def discard_gran(off, length):
            def f():
                im.write(b"\x77" * (512 * 1024), 0)
                im.discard(off, length)
                data = im.read(0, 512 * 1024)
                zero = [i for i in range(0, len(data), 512) if data[i:i + 512] == b"\0" * 512]
                if not zero:
                    return "nothing zeroed"
                # Report zeroed 512-byte sectors as ranges.
                ranges, start, prev = [], zero[0], zero[0]
                for z in zero[1:]:
                    if z != prev + 512:
                        ranges.append((start, prev + 512))
                        start = z
                    prev = z
                ranges.append((start, prev + 512))
                return "zeroed %s" % ranges
            return f
        for off, length in ((0, 4096), (0, 65536), (4096, 65536), (65536, 65536), (1000, 200000),
                            (0, 512 * 1024)):
            probe("discard granularity %d~%d" % (off, length),
                  "write 512K of 0x77; discard(%d,%d); zeroed ranges" % (off, length),
                  discard_gran(off, length))

        def resize_cycle():
            im.write(b"\x55" * 4096, 0)
            im.resize(0)
            s0 = im.size()
            try:
                r0 = fmt_value(im.read(0, 1))
            except Exception as e:  # noqa: BLE001
                r0 = fmt_exc(e)
            im.resize(size)
            return "size after resize(0)=%d; read(0,1) then: %s; after resize back read(0,8)=%s" % (
                s0, r0, fmt_value(im.read(0, 8)))
        probe("resize to 0 and back", "resize(0); read; resize(size); read", resize_cycle)

        def shrink_partial():
            im.write(b"\x66" * 8192, MiB)
            im.resize(MiB + 4096)
            im.resize(size)
            return fmt_value(im.read(MiB, 8192))
        probe("shrink into an object and grow back", "write 8K at 1MiB; resize(1MiB+4K); resize(size); read(1MiB,8K)",
              shrink_partial)
        probe("resize same size", "resize(size)", lambda: im.resize(size))
        probe("resize to 2**64-1", "resize(2**64-1)", lambda: im.resize(2 ** 64 - 1))
        probe("resize to 2**63", "resize(2**63)", lambda: im.resize(2 ** 63))
        probe("size after huge resizes", "size()", im.size)
        im.resize(size)
        probe("resize to -1", "resize(-1)", lambda: im.resize(-1))
        probe("resize to odd size", "resize(size+1); size()", lambda: (im.resize(size + 1), im.size()))
        im.resize(size)

        im.create_snap("s")
        im.set_snap("s")
        probe("write at snapshot (set_snap)", "set_snap('s'); write(b'x',0)", lambda: im.write(b"x", 0))
        probe("discard at snapshot", "discard(0,10)", lambda: im.discard(0, 10))
        probe("resize at snapshot", "resize(1MiB)", lambda: im.resize(MiB))
        probe("create_snap at snapshot", "create_snap('t')", lambda: im.create_snap("t"))
        probe("flush at snapshot", "flush()", im.flush)
        im.set_snap(None)
        probe("set_snap(None) then write", "set_snap(None); write(b'x',0)", lambda: im.write(b"x", 0))


def probe_snapshots(io):
    begin("snapshots")
    mk(io, "probe-s", 8 * MiB)
    with opened(io, "probe-s") as im:
        im.write(b"\x01" * 4096, 0)
        probe("create_snap", "create_snap('s1')", lambda: im.create_snap("s1"))
        probe("create_snap existing name", "create_snap('s1')", lambda: im.create_snap("s1"))
        probe("create_snap ''", "create_snap('')", lambda: im.create_snap(""))
        probe("create_snap 'a@b'", "create_snap('a@b')", lambda: im.create_snap("a@b"))
        probe("create_snap 'a/b'", "create_snap('a/b')", lambda: im.create_snap("a/b"))
        probe("create_snap with NUL", "create_snap('a\\0b')", lambda: im.create_snap("a\0b"))
        probe("create_snap 'x'*300", "create_snap('x'*300)", lambda: im.create_snap("x" * 300))
        probe("snap names after the odd creates", "[s['name'] for s in list_snaps()]",
              lambda: [s["name"] for s in im.list_snaps()])
        probe("remove_snap ''", "remove_snap('')", lambda: im.remove_snap(""))
        for n in ("a@b", "a/b", "a", "x" * 300):
            try:
                im.remove_snap(n)
            except rbd.Error:
                pass
        probe("remove_snap missing", "remove_snap('nope')", lambda: im.remove_snap("nope"))
        im.create_snap("p")
        probe("is_protected_snap (no)", "is_protected_snap('p')", lambda: im.is_protected_snap("p"))
        probe("protect_snap", "protect_snap('p')", lambda: im.protect_snap("p"))
        probe("is_protected_snap (yes)", "is_protected_snap('p')", lambda: im.is_protected_snap("p"))
        probe("protect twice", "protect_snap('p')", lambda: im.protect_snap("p"))
        probe("remove protected", "remove_snap('p')", lambda: im.remove_snap("p"))
        probe("protect missing", "protect_snap('nope')", lambda: im.protect_snap("nope"))
        probe("unprotect not protected", "unprotect_snap('s1')", lambda: im.unprotect_snap("s1"))
        probe("unprotect missing", "unprotect_snap('nope')", lambda: im.unprotect_snap("nope"))
        probe("is_protected_snap missing", "is_protected_snap('nope')", lambda: im.is_protected_snap("nope"))
        R.clone(io, "probe-s", "p", io, "probe-s-child")
        probe("unprotect with child", "unprotect_snap('p') with a clone", lambda: im.unprotect_snap("p"))
        probe("remove snap with child (protected)", "remove_snap('p')", lambda: im.remove_snap("p"))
        R.remove(io, "probe-s-child")
        probe("unprotect after child removed", "unprotect_snap('p')", lambda: im.unprotect_snap("p"))
        probe("set_snap missing", "set_snap('nope')", lambda: im.set_snap("nope"))
        probe("rollback missing", "rollback_to_snap('nope')", lambda: im.rollback_to_snap("nope"))
        im.set_snap("s1")
        probe("rollback while snapshot set", "set_snap('s1'); rollback_to_snap('s1')",
              lambda: im.rollback_to_snap("s1"))
        probe("remove the snapshot that is set", "set_snap('p'); remove_snap('p')",
              lambda: (im.set_snap("p"), im.remove_snap("p")))
        probe("read after the set snapshot was removed", "read(0,4)", lambda: im.read(0, 4))
        probe("size() after the set snapshot was removed", "size()", im.size)
        probe("set_snap(None) afterwards", "set_snap(None)", lambda: im.set_snap(None))
        im.set_snap(None)

        probe("list_snaps", "list(list_snaps())", lambda: list(im.list_snaps()))

        def sizes():
            im.resize(4 * MiB)
            im.create_snap("small")
            im.resize(12 * MiB)
            im.create_snap("big")
            return [(s["name"], s["size"]) for s in im.list_snaps()]
        probe("list_snaps after resizes", "resize 4MiB; snap small; resize 12MiB; snap big; list_snaps",
              sizes)

        def rollback():
            im.write(b"\x02" * 4096, 0)
            im.rollback_to_snap("small")
            return "size=%d data=%s" % (im.size(), fmt_value(im.read(0, 8)))
        probe("rollback restores size and data", "write; rollback_to_snap('small'); size(); read", rollback)

        def at_snap():
            im.set_snap("big")
            try:
                return {"size": im.size(), "stat.size": im.stat()["size"],
                        "features": im.features()}
            finally:
                im.set_snap(None)
        probe("size()/stat() at snapshot", "set_snap('big'); size(); stat()", at_snap)

    mk(io, "probe-sn2", MiB)
    mk(io, "probe-sn3", MiB)

    def ids():
        out = []
        for n in ("probe-sn2", "probe-sn3", "probe-sn2"):
            with opened(io, n) as im2:
                im2.create_snap("snap%d" % len(out))
                out.append((n, [s["id"] for s in im2.list_snaps()]))
        return out
    probe("snapshot ids across images of a pool", "create_snap on img2, img3, img2; ids", ids)

    def new_pool_ids():
        mk(io, "probe-sn4", MiB)
        with opened(io, "probe-sn4") as im2:
            im2.create_snap("a")
            im2.create_snap("b")
            return [(s["id"], s["name"]) for s in im2.list_snaps()]
    probe("snapshot ids of a new image", "create_snap a, b; list_snaps ids", new_pool_ids)

    def snap_order():
        mk(io, "probe-sn5", MiB)
        with opened(io, "probe-sn5") as im2:
            for n in ("zeta", "alpha", "mid"):
                im2.create_snap(n)
            return [s["name"] for s in im2.list_snaps()]
    probe("list_snaps order", "create_snap zeta, alpha, mid; names", snap_order)

    def first_ids():
        fresh_pool(CLUSTER, EMPTY_POOL)
        try:
            with CLUSTER.open_ioctx(EMPTY_POOL) as fio:
                mk(fio, "probe-ids", MiB)
                with opened(fio, "probe-ids") as im2:
                    im2.create_snap("a")
                    im2.create_snap("b")
                    im2.remove_snap("b")
                    im2.create_snap("c")
                    return [(s["id"], s["name"]) for s in im2.list_snaps()]
        finally:
            CLUSTER.delete_pool(EMPTY_POOL)
    probe("snapshot ids in a fresh pool", "new pool; snap a, b; remove b; snap c; ids", first_ids)

    def snap_dict():
        with opened(io, "probe-sn5") as im2:
            return next(iter(im2.list_snaps()))
    probe("list_snaps entry keys", "next(iter(list_snaps()))", snap_dict)


def probe_diff(io):
    begin("diff_iterate")
    size = 16 * MiB
    mk(io, "probe-d", size)
    with opened(io, "probe-d") as im:
        probe("empty image from None", "diff_iterate(0,size,None)", lambda: diff(im, 0, size, None))
        im.write(b"\x01" * 512, 1000)
        probe("512 B at 1000 from None", "write 512@1000; diff_iterate(0,size,None)",
              lambda: diff(im, 0, size, None))
        probe("512 B at 1000 from None, whole_object", "diff_iterate(...,whole_object=True)",
              lambda: diff(im, 0, size, None, whole_object=True))
        probe("sub-range [0,1200)", "diff_iterate(0,1200,None)", lambda: diff(im, 0, 1200, None))
        probe("sub-range [1200,4096)", "diff_iterate(1200,2896,None)", lambda: diff(im, 1200, 2896, None))
        probe("length 0", "diff_iterate(0,0,None)", lambda: diff(im, 0, 0, None))
        probe("range past end", "diff_iterate(0,2**40,None)", lambda: diff(im, 0, 2 ** 40, None))
        probe("offset past end", "diff_iterate(size+4096,4096,None)",
              lambda: diff(im, size + 4096, 4096, None))
        probe("from missing snap", "diff_iterate(0,size,'nope')", lambda: diff(im, 0, size, "nope"))

        im.create_snap("s1")
        probe("from s1, nothing changed", "create_snap('s1'); diff_iterate(0,size,'s1')",
              lambda: diff(im, 0, size, "s1"))
        im.write(b"\x02" * 512, OBJ + 1000)
        probe("512 B at OBJ+1000 from s1", "write 512@4MiB+1000; diff_iterate(0,size,'s1')",
              lambda: diff(im, 0, size, "s1"))
        probe("same, whole_object", "diff_iterate(0,size,'s1',whole_object=True)",
              lambda: diff(im, 0, size, "s1", whole_object=True))
        im.write(b"\x03" * 512, 3000)
        probe("rewrite in object 0 after s1", "write 512@3000; diff_iterate(0,size,'s1')",
              lambda: diff(im, 0, size, "s1"))
        probe("from None after s1 writes", "diff_iterate(0,size,None)", lambda: diff(im, 0, size, None))

        im.write(b"\x04" * OBJ, 2 * OBJ)
        im.write(b"\x05" * OBJ, 3 * OBJ)
        im.create_snap("s2")
        im.discard(2 * OBJ, OBJ)
        probe("whole-object discard from s2", "discard(2*OBJ,OBJ); diff_iterate(0,size,'s2')",
              lambda: diff(im, 0, size, "s2"))
        probe("whole-object discard from s2, whole_object", "…whole_object=True",
              lambda: diff(im, 0, size, "s2", whole_object=True))
        im.create_snap("s3")
        im.discard(3 * OBJ + 4096, 8192)
        probe("partial discard from s3", "discard(3*OBJ+4096,8192); diff_iterate(0,size,'s3')",
              lambda: diff(im, 0, size, "s3"))
        probe("partial discard from s3, whole_object", "…whole_object=True",
              lambda: diff(im, 0, size, "s3", whole_object=True))
        im.create_snap("s3a")
        im.discard(3 * OBJ + 65536, 131072)
        probe("64K-aligned partial discard from s3a", "discard(3*OBJ+64K,128K); diff_iterate(0,size,'s3a')",
              lambda: diff(im, 0, size, "s3a"))
        probe("64K-aligned partial discard from s3a, whole_object", "…whole_object=True",
              lambda: diff(im, 0, size, "s3a", whole_object=True))
        im.create_snap("s3b")
        im.discard(3 * OBJ + OBJ - 65536, 65536)
        probe("64K tail discard of an object from s3b", "discard(4*OBJ-64K,64K); diff_iterate(0,size,'s3b')",
              lambda: diff(im, 0, size, "s3b"))
        probe("from None after discards", "diff_iterate(0,size,None)", lambda: diff(im, 0, size, None))

        im.create_snap("s4")
        im.resize(OBJ + 2048)
        probe("after shrink to OBJ+2048, from s4", "resize(OBJ+2048); diff_iterate(0,16MiB,'s4')",
              lambda: diff(im, 0, size, "s4"))
        probe("after shrink, from s4, range=new size", "diff_iterate(0,size(),'s4')",
              lambda: diff(im, 0, im.size(), "s4"))
        probe("after shrink, from s4, whole_object", "diff_iterate(0,16MiB,'s4',whole_object=True)",
              lambda: diff(im, 0, size, "s4", whole_object=True))
        im.resize(size)
        probe("after shrink and grow back, from s4", "resize(16MiB); diff_iterate(0,16MiB,'s4')",
              lambda: diff(im, 0, size, "s4"))

        im.set_snap("s2")
        probe("from a snap newer than the set snap", "set_snap('s2'); diff_iterate(0,size,'s3')",
              lambda: diff(im, 0, size, "s3"))
        probe("from the set snap itself", "set_snap('s2'); diff_iterate(0,size,'s2')",
              lambda: diff(im, 0, size, "s2"))
        probe("from s1 to set snap s2", "set_snap('s2'); diff_iterate(0,size,'s1')",
              lambda: diff(im, 0, size, "s1"))
        im.set_snap(None)

        def cb_raises():
            def cb(o, l, e):
                raise ValueError("stop")
            im.diff_iterate(0, size, None, cb)
        probe("callback raises", "diff_iterate(0,size,None,cb raising ValueError)", cb_raises)

        def cb_nonzero():
            seen = []

            def cb(o, l, e):
                seen.append(o)
                return 1
            mk(io, "probe-dcb", 16 * MiB)
            with opened(io, "probe-dcb") as im2:
                for i in range(4):
                    im2.write(b"x", i * OBJ)
                try:
                    im2.diff_iterate(0, 16 * MiB, None, cb)
                    r = "returned normally"
                except Exception as e:  # noqa: BLE001
                    r = fmt_exc(e)
            return "%s; callback called %d times (4 extents)" % (r, len(seen))
        probe("callback returns non-zero", "diff_iterate(...,cb returning 1)", cb_nonzero)

    mk(io, "probe-dp", 8 * MiB)
    with opened(io, "probe-dp") as im:
        im.write(b"\x07" * 4096, 0)
        im.write(b"\x08" * 4096, OBJ + 8192)
        im.create_snap("base")
        im.protect_snap("base")
    R.clone(io, "probe-dp", "base", io, "probe-dc")
    with opened(io, "probe-dc") as c:
        probe("clone untouched, include_parent=True (default)", "diff_iterate(0,size,None)",
              lambda: diff(c, 0, 8 * MiB, None))
        probe("clone untouched, include_parent=False", "diff_iterate(0,size,None,include_parent=False)",
              lambda: diff(c, 0, 8 * MiB, None, include_parent=False))
        probe("clone untouched, include_parent=True, whole_object",
              "diff_iterate(0,size,None,whole_object=True)",
              lambda: diff(c, 0, 8 * MiB, None, whole_object=True))
        c.write(b"\x09" * 512, 2048)
        probe("clone after 512 B write at 2048, include_parent=True", "diff_iterate(0,size,None)",
              lambda: diff(c, 0, 8 * MiB, None))
        probe("clone after write, include_parent=False", "diff_iterate(0,size,None,include_parent=False)",
              lambda: diff(c, 0, 8 * MiB, None, include_parent=False))
        c.create_snap("cs")
        c.write(b"\x0a" * 512, OBJ)
        probe("clone from its own snap", "create_snap('cs'); write 512@OBJ; diff_iterate(0,size,'cs')",
              lambda: diff(c, 0, 8 * MiB, "cs"))


def probe_clone(io, io2):
    begin("clone")
    mk(io, "probe-p", 8 * MiB)
    with opened(io, "probe-p") as p:
        p.write(b"\x0b" * 4096, 0)
        p.create_snap("u")
        p.create_snap("ps")
        p.protect_snap("ps")
    probe("unprotected parent snap", "clone(io,'probe-p','u',io,'probe-k0')",
          lambda: R.clone(io, "probe-p", "u", io, "probe-k0"))
    probe("missing parent", "clone(io,'probe-missing','ps',io,'probe-k1')",
          lambda: R.clone(io, "probe-missing", "ps", io, "probe-k1"))
    probe("missing snap", "clone(io,'probe-p','nope',io,'probe-k1')",
          lambda: R.clone(io, "probe-p", "nope", io, "probe-k1"))
    probe("clone ok", "clone(io,'probe-p','ps',io,'probe-k')",
          lambda: R.clone(io, "probe-p", "ps", io, "probe-k"))
    probe("existing child name", "clone(io,'probe-p','ps',io,'probe-k')",
          lambda: R.clone(io, "probe-p", "ps", io, "probe-k"))
    probe("child name = parent name", "clone(io,'probe-p','ps',io,'probe-p')",
          lambda: R.clone(io, "probe-p", "ps", io, "probe-p"))

    def clone_f(name, **kw):
        def f():
            R.clone(io, "probe-p", "ps", io, name, **kw)
            with opened(io, name) as c:
                return "created: features=%d order=%d" % (c.features(), c.stat()["order"])
        return f
    probe("features=0", "clone(...,features=0)", clone_f("probe-kf0", features=0))
    probe("features=4 (no layering)", "clone(...,features=4)", clone_f("probe-kf4", features=4))
    probe("features=1", "clone(...,features=1)", clone_f("probe-kf1", features=1))
    probe("features=1<<20", "clone(...,features=1|1<<20)", clone_f("probe-kf20", features=1 | 1 << 20))
    probe("order 30", "clone(...,order=30)", clone_f("probe-ko30", order=30))
    probe("order 20", "clone(...,order=20)", clone_f("probe-ko20", order=20))
    probe("order 20, stripe_unit 1MiB", "clone(...,order=20,stripe_unit=1MiB,stripe_count=1)",
          clone_f("probe-ko20s", order=20, stripe_unit=MiB, stripe_count=1))
    probe("order 22 (= parent)", "clone(...,order=22)", clone_f("probe-ko22", order=22))
    probe("order 23", "clone(...,order=23)", clone_f("probe-ko23", order=23))
    probe("order 11", "clone(...,order=11)", clone_f("probe-ko11", order=11))
    probe("clone name ''", "clone(io,'probe-p','ps',io,'')", lambda: R.clone(io, "probe-p", "ps", io, ""))

    def cross():
        R.clone(io, "probe-p", "ps", io2, "probe-k2")
        with opened(io2, "probe-k2") as c:
            return {"parent_info": c.parent_info(), "read": fmt_value(c.read(0, 8)),
                    "size": c.size(), "list(rbd2)": [n for n in R.list(io2) if n.startswith("probe-")]}
    probe("clone into second pool", "clone(io,'probe-p','ps',io2,'probe-k2')", cross)

    with opened(io, "probe-k") as c:
        probe("parent_info of clone", "parent_info()", c.parent_info)
        probe("get_parent_image_spec of clone", "get_parent_image_spec()", c.get_parent_image_spec)
        probe("clone stat()", "stat()", c.stat)
        probe("clone reads parent data", "read(0,8)", lambda: c.read(0, 8))
        probe("clone features", "features()", c.features)
        probe("clone list_children (head)", "list_children()", c.list_children)

    with opened(io, "probe-p") as p:
        probe("list_children without snap set", "parent.list_children()", p.list_children)
        p.set_snap("ps")
        probe("list_children with snap set", "set_snap('ps'); list_children()", p.list_children)
        probe("list_children2 with snap set", "list(list_children2())", lambda: list(p.list_children2()))
        p.set_snap("u")
        probe("list_children of snap without clones", "set_snap('u'); list_children()", p.list_children)
        p.set_snap(None)
        probe("parent_info of non-clone", "parent_info()", p.parent_info)
        probe("flatten of non-clone", "flatten()", p.flatten)
        probe("remove_snap of snapshot with clones", "remove_snap('ps')", lambda: p.remove_snap("ps"))

    def old_parent():
        mk(io, "probe-oldp", MiB, old_format=True)
        with opened(io, "probe-oldp") as p:
            p.create_snap("s")
            try:
                p.protect_snap("s")
                prot = "protect ok"
            except Exception as e:  # noqa: BLE001
                prot = "protect: " + fmt_exc(e)
        try:
            R.clone(io, "probe-oldp", "s", io, "probe-oldk")
            cl = "clone ok"
        except Exception as e:  # noqa: BLE001
            cl = "clone: " + fmt_exc(e)
        return "%s; %s" % (prot, cl)
    probe("clone of a parent created with old_format=True (is format 2)",
          "create(old_format=True); snap; protect; clone", old_parent)

    def grandchild():
        with opened(io, "probe-k") as c:
            c.create_snap("ks")
            c.protect_snap("ks")
        R.clone(io, "probe-k", "ks", io, "probe-kk")
        with opened(io, "probe-kk") as g:
            return {"parent_info": g.parent_info(), "read": fmt_value(g.read(0, 8))}
    probe("clone of a clone", "snap+protect clone; clone it", grandchild)

    def flat():
        with opened(io, "probe-kf1") as c:
            c.flatten()
            try:
                pi = c.parent_info()
            except Exception as e:  # noqa: BLE001
                pi = fmt_exc(e)
            return {"parent_info after": pi, "read": fmt_value(c.read(0, 8))}
    probe("flatten clone", "flatten(); parent_info()", flat)
    probe("flatten twice", "flatten() again", lambda: opened(io, "probe-kf1").flatten())

    def children_after_flatten():
        with opened(io, "probe-p") as p:
            p.set_snap("ps")
            return p.list_children()
    probe("list_children after one flatten", "set_snap('ps'); list_children()", children_after_flatten)

    def clone_write_shrink():
        with opened(io, "probe-k") as c:
            c.write(b"\x0c" * 100, 4096)
            c.resize(2048)
            c.resize(8 * MiB)
            return {"read(0,8)": fmt_value(c.read(0, 8)), "read(4096,8)": fmt_value(c.read(4096, 8)),
                    "overlap": c.overlap()}
    probe("clone: shrink below parent data then grow", "write; resize(2048); resize(8MiB); read",
          clone_write_shrink)


def probe_copy(io, io2):
    begin("copy")
    mk(io, "probe-cp", 8 * MiB, order=20, features=1)
    with opened(io, "probe-cp") as im:
        im.write(b"\x0d" * 4096, 0)
        im.create_snap("s")
        im.protect_snap("s")
        im.write(b"\x0e" * 4096, 0)
        im.resize(12 * MiB)
        mk(io, "probe-cp-exists")
        probe("copy to existing name", "copy(io,'probe-cp-exists')", lambda: im.copy(io, "probe-cp-exists"))
        probe("copy to its own name", "copy(io,'probe-cp')", lambda: im.copy(io, "probe-cp"))
        probe("copy to ''", "copy(io,'')", lambda: im.copy(io, ""))

        def other_pool():
            im.copy(io2, "probe-cp2")
            with opened(io2, "probe-cp2") as c:
                return {"size": c.size(), "features": c.features(), "order": c.stat()["order"],
                        "snaps": list(c.list_snaps()), "read": fmt_value(c.read(0, 8))}
        probe("copy to other pool", "copy(io2,'probe-cp2')", other_pool)

        def at_snap():
            im.set_snap("s")
            try:
                im.copy(io, "probe-cp-snap")
            finally:
                im.set_snap(None)
            with opened(io, "probe-cp-snap") as c:
                return {"size": c.size(), "read": fmt_value(c.read(0, 8)),
                        "snaps": list(c.list_snaps())}
        probe("copy while at snapshot", "set_snap('s'); copy(io,'probe-cp-snap')", at_snap)

    R.clone(io, "probe-cp", "s", io, "probe-cp-clone")

    def of_clone():
        with opened(io, "probe-cp-clone") as c:
            c.write(b"\x0f" * 10, 100)
            c.copy(io, "probe-cp-clone-copy")
        with opened(io, "probe-cp-clone-copy") as c:
            try:
                pi = c.parent_info()
            except Exception as e:  # noqa: BLE001
                pi = fmt_exc(e)
            return {"parent_info": pi, "read(0,8)": fmt_value(c.read(0, 8)),
                    "read(100,10)": fmt_value(c.read(100, 10)), "features": c.features()}
    probe("copy of a clone", "clone.copy(io,n); parent_info(); read", of_clone)

    def default_feat_copy():
        mk(io, "probe-cp-d", MiB)
        with opened(io, "probe-cp-d") as im:
            im.copy(io, "probe-cp-d2")
        with opened(io, "probe-cp-d2") as c:
            return {"features": c.features(), "order": c.stat()["order"]}
    probe("copy of a default image", "copy; features(), order", default_feat_copy)

    def striped_copy():
        mk(io, "probe-cp-st", MiB, stripe_unit=65536, stripe_count=4)
        with opened(io, "probe-cp-st") as im:
            im.copy(io, "probe-cp-st2")
        with opened(io, "probe-cp-st2") as c:
            return {"features": c.features(), "stripe_unit": c.stripe_unit(),
                    "stripe_count": c.stripe_count()}
    probe("copy of a striped image", "copy; stripe_unit(), stripe_count()", striped_copy)


def probe_locks(cluster, cluster2, io, io_b):
    begin("locks")
    # Image with layering only: advisory locks alone. a (connection 1, never
    # a victim of break_lock), a2 (connection 1 again), b (connection 2).
    mk(io, "probe-l", 8 * MiB, features=1)
    a = opened(io, "probe-l")
    a2 = opened(io, "probe-l")
    b = opened(io_b, "probe-l")
    probe("client ids", "get_instance_id() of the two connections",
          lambda: (cluster.get_instance_id(), cluster2.get_instance_id()))
    probe("list_lockers, no lock", "list_lockers()", a.list_lockers)
    probe("lock_exclusive", "a.lock_exclusive('c1')", lambda: a.lock_exclusive("c1"))
    probe("list_lockers, exclusive", "list_lockers()", a.list_lockers)
    probe("lock_exclusive twice, same cookie", "a.lock_exclusive('c1')", lambda: a.lock_exclusive("c1"))
    probe("lock_exclusive, same client, other cookie", "a.lock_exclusive('c2')",
          lambda: a.lock_exclusive("c2"))
    probe("lock_exclusive, other handle same connection, same cookie",
          "a2.lock_exclusive('c1')", lambda: a2.lock_exclusive("c1"))
    probe("lock_exclusive, second connection", "b.lock_exclusive('c1')", lambda: b.lock_exclusive("c1"))
    probe("lock_shared while exclusive held", "b.lock_shared('s','t')", lambda: b.lock_shared("s", "t"))
    probe("lock_shared by the holder", "a.lock_shared('c1','t')", lambda: a.lock_shared("c1", "t"))
    probe("write by other client while advisory lock held (no exclusive-lock feature)",
          "b.write(b'x',0)", lambda: b.write(b"x", 0), timeout=15)
    probe("unlock by other client", "b.unlock('c1')", lambda: b.unlock("c1"))
    probe("unlock by other handle, same connection", "a2.unlock('c1')", lambda: a2.unlock("c1"))
    probe("relock after unlock", "a.lock_exclusive('c1')", lambda: a.lock_exclusive("c1"))
    probe("unlock wrong cookie", "a.unlock('nope')", lambda: a.unlock("nope"))
    probe("unlock", "a.unlock('c1')", lambda: a.unlock("c1"))
    probe("unlock again", "a.unlock('c1')", lambda: a.unlock("c1"))
    probe("unlock with nothing locked", "a.unlock('x')", lambda: a.unlock("x"))
    probe("list_lockers after unlock", "list_lockers()", a.list_lockers)

    probe("lock_shared", "a.lock_shared('s1','tagA')", lambda: a.lock_shared("s1", "tagA"))
    probe("lock_shared second client same tag", "b.lock_shared('s2','tagA')",
          lambda: b.lock_shared("s2", "tagA"))
    probe("list_lockers, shared", "list_lockers()", a.list_lockers)
    probe("lock_shared different tag", "b.lock_shared('s3','tagB')", lambda: b.lock_shared("s3", "tagB"))
    probe("lock_shared same client same cookie", "a.lock_shared('s1','tagA')",
          lambda: a.lock_shared("s1", "tagA"))
    probe("lock_shared same client same cookie, other tag", "a.lock_shared('s1','tagB')",
          lambda: a.lock_shared("s1", "tagB"))
    probe("lock_shared same client other cookie", "a.lock_shared('s4','tagA')",
          lambda: a.lock_shared("s4", "tagA"))
    probe("lock_exclusive while shared held", "a.lock_exclusive('x')", lambda: a.lock_exclusive("x"))
    probe("lock_shared empty tag", "b.lock_shared('s5','')", lambda: b.lock_shared("s5", ""))
    probe("list_lockers, 3 shared", "list_lockers()", a.list_lockers)
    b_client = client_of(a, "s2")
    b_addr = [x[2] for x in a.list_lockers()["lockers"] if x[1] == "s2"][0]
    probe("break_lock missing cookie", "a.break_lock(b_client,'nope')", lambda: a.break_lock(b_client, "nope"))
    probe("break_lock missing client", "a.break_lock('client.999999','s2')",
          lambda: a.break_lock("client.999999", "s2"))
    probe("break_lock malformed client", "a.break_lock('bogus','s2')", lambda: a.break_lock("bogus", "s2"))
    probe("break_lock other client's shared lock", "a.break_lock(b_client,'s2')",
          lambda: a.break_lock(b_client, "s2"))
    probe("list_lockers after break", "a.list_lockers()", a.list_lockers)
    probe("victim after break: read", "b.read(0,1)", lambda: b.read(0, 1), timeout=20)
    probe("victim after break: unlock its broken lock", "b.unlock('s2')", lambda: b.unlock("s2"), timeout=20)
    probe("victim after break: list(ioctx)", "RBD().list(io_b)", lambda: R.list(io_b), timeout=20)

    def blocklisted():
        ret, out, _ = cluster.mon_command('{"prefix": "osd blocklist ls", "format": "json"}', b"")
        # Pacific prints the address list and then a (range) list: take the first.
        entries, _ = json.JSONDecoder().raw_decode(out.decode() or "[]")
        addrs = [e.get("addr") for e in entries]
        return "victim's address %s in osd blocklist: %s" % (b_addr, b_addr in addrs)
    probe("break_lock blocklists the victim", "mon_command osd blocklist ls", blocklisted)
    for c in ("s1", "s4"):
        a.unlock(c)
    probe("lock_exclusive empty cookie", "a.lock_exclusive('')", lambda: a.lock_exclusive(""))
    probe("list_lockers with empty cookie", "list_lockers()", a.list_lockers)
    probe("unlock empty cookie", "a.unlock('')", lambda: a.unlock(""))

    # Breaking one's own lock, on a connection of its own.
    c3 = connect()
    d = opened(c3.open_ioctx(POOL), "probe-l")
    d.lock_exclusive("own")
    d_client = client_of(d, "own")
    probe("break_lock own lock", "d.break_lock(d_client,'own')", lambda: d.break_lock(d_client, "own"),
          timeout=20)
    probe("after breaking own lock: list_lockers", "d.list_lockers()", d.list_lockers, timeout=20)
    probe("after breaking own lock: read", "d.read(0,1)", lambda: d.read(0, 1), timeout=20)
    probe("after breaking own lock, seen by another client", "a.list_lockers()", a.list_lockers)
    for h in (a, a2):
        h.close()

    # Default features (exclusive-lock on): the feature's managed lock and the
    # advisory locks are the same RADOS lock ("rbd_lock") on the image header.
    ce, cf = connect(), connect()
    mk(io, "probe-lx", 8 * MiB)
    a = opened(ce.open_ioctx(POOL), "probe-lx")
    b = opened(cf.open_ioctx(POOL), "probe-lx")
    probe("[exclusive-lock feature] list_lockers before any write", "list_lockers()", a.list_lockers)
    a.write(b"x", 0)
    io_f = cf.open_ioctx(POOL)
    probe("[exclusive-lock feature] list_lockers after a wrote, handle opened before", "a.write(); b.list_lockers()",
          b.list_lockers)
    probe("[exclusive-lock feature] list_lockers after a wrote, writer's handle", "a.list_lockers()",
          a.list_lockers)
    probe("[exclusive-lock feature] list_lockers after a wrote, handle opened after",
          "Image(io,n).list_lockers()", lambda: opened(io_f, "probe-lx").list_lockers())
    probe("[exclusive-lock feature] lock_get_owners", "list(b.lock_get_owners())",
          lambda: list(b.lock_get_owners()))
    probe("[exclusive-lock feature] is_exclusive_lock_owner", "(a.…, b.is_exclusive_lock_owner())",
          lambda: (a.is_exclusive_lock_owner(), b.is_exclusive_lock_owner()))
    probe("[exclusive-lock feature] other client lock_exclusive after a wrote", "b.lock_exclusive('c')",
          lambda: b.lock_exclusive("c"))
    probe("[exclusive-lock feature] writer lock_exclusive after it wrote", "a.lock_exclusive('c')",
          lambda: a.lock_exclusive("c"))
    probe("[exclusive-lock feature] other client lock_shared after a wrote", "b.lock_shared('c','t')",
          lambda: b.lock_shared("c", "t"))
    probe("[exclusive-lock feature] other client writes (lock handover)", "b.write(b'y',0)",
          lambda: b.write(b"y", 0), timeout=20)
    probe("[exclusive-lock feature] owners after handover", "(a.…, b.is_exclusive_lock_owner())",
          lambda: (a.is_exclusive_lock_owner(), b.is_exclusive_lock_owner()))
    probe("[exclusive-lock feature] first writer writes again (handover back)", "a.write(b'z',0)",
          lambda: a.write(b"z", 0), timeout=20)

    def break_managed():
        with opened(io_f, "probe-lx") as fresh:
            client, cookie = fresh.list_lockers()["lockers"][0][:2]
            fresh.break_lock(client, cookie)
            return "broke (%r, %r)" % (client, cookie)
    probe("[exclusive-lock feature] break_lock of the managed lock (from list_lockers of a new handle)",
          "break_lock(client, 'auto …')", break_managed, timeout=20)
    probe("[exclusive-lock feature] old owner writes after its managed lock was broken", "a.write(b'w',0)",
          lambda: a.write(b"w", 0), timeout=20)
    probe("[exclusive-lock feature] breaker's connection writes", "b.write(b'v',0)",
          lambda: b.write(b"v", 0), timeout=20)

    # Advisory lock taken before any write on an exclusive-lock image. These
    # writes may block for good, so this comes last.
    cg, ch = connect(), connect()
    mk(io, "probe-ly", 8 * MiB)
    a = opened(cg.open_ioctx(POOL), "probe-ly")
    b = opened(ch.open_ioctx(POOL), "probe-ly")
    probe("[exclusive-lock feature] advisory lock_exclusive before any write", "a.lock_exclusive('adv')",
          lambda: a.lock_exclusive("adv"))
    probe("[exclusive-lock feature] holder writes while its advisory lock is held", "a.write(b'x',0)",
          lambda: a.write(b"x", 0), timeout=15)
    probe("[exclusive-lock feature] other client writes while advisory lock held", "b.write(b'x',0)",
          lambda: b.write(b"x", 0), timeout=15)
    probe("[exclusive-lock feature] list_lockers", "list_lockers()", lambda: b.list_lockers(), timeout=15)
    # a and b may be stuck in a write: leave them (the process ends with os._exit).


def main():
    global markdown, CONF, CLUSTER
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conf", default=os.environ.get("CEPH_CONF") or "/tmp/rbd-wasm-ceph/ceph.conf")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    markdown = args.markdown
    CONF = args.conf

    if not os.path.exists(CONF):
        print("probe-librbd: %s not found; start a cluster with scripts/ceph-cluster.sh start" % CONF,
              file=sys.stderr)
        sys.exit(2)
    try:
        cluster = CLUSTER = connect()
        cluster2 = connect()
    except rados.Error as e:
        print("probe-librbd: cluster unreachable via %s: %s" % (CONF, e), file=sys.stderr)
        sys.exit(2)

    t0 = time.time()
    fresh_pool(cluster, POOL)
    fresh_pool(cluster, POOL2)
    io = cluster.open_ioctx(POOL)
    io2 = cluster.open_ioctx(POOL2)
    io_b = cluster2.open_ioctx(POOL)

    probe_version()
    probe_create(io)
    probe_list_remove_rename(cluster, io)
    probe_open(io)
    probe_read_write(io)
    probe_snapshots(io)
    probe_diff(io)
    probe_clone(io, io2)
    probe_copy(io, io2)
    probe_locks(cluster, cluster2, io, io_b)

    if markdown:
        cur = None
        for sec, case, call, res in results:
            if sec != cur:
                cur = sec
                print("\n### %s\n\n| case | call | observed |\n| --- | --- | --- |" % sec)
            print("| %s | `%s` | %s |" % (md(case), call.replace("|", "\\|").replace("`", "'"), md(res)))
    else:
        print("\n%d cases in %.1f s" % (len(results), time.time() - t0))
    sys.stdout.flush()
    # Drop the scratch pools (images and all). Some handles may be stuck in a
    # write behind an advisory lock, and closing them or shutting the
    # connections down would wait for it: leave with os._exit.
    for pool in (POOL, POOL2):
        run_with_timeout(lambda pool=pool: cluster.delete_pool(pool), 30)
    os._exit(0)


def md(s):
    return s.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    main()
