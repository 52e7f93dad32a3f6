#!/usr/bin/python3
"""The reference half of the differential test: run an operation script through python-rbd.

Usage: oracle.py CEPH_CONF PREFIX OP...
       oracle.py --two-clients CEPH_CONF PREFIX OP...   (see TwoClients)

This is the reference for the operation language that tests/guests/differential
implements too. Each OP is one string of space-separated words; image aliases become
PREFIX-ALIAS in pool `rbd`. One output line per OP: `ok[ VALUE]` or `err KIND`, where KIND
is the WIT error case named after the python-rbd exception.

  create A SIZE [ORDER]   close A          remove A        rename A B      list
  clone A SNAP B          copy A B         flatten A
  write A OFF LEN SEED    read A OFF LEN   discard A OFF LEN               resize A SIZE
  snap A S   rmsnap A S   protect A S      unprotect A S   rollback A S    setsnap A S|-
  lockx A COOKIE          locks A COOKIE TAG               unlock A COOKIE lockers A
  diff A FROM|-           state A
  flush A   invalidate A  oldformat A      version         children A SNAP rowrite A OFF
  createf A SIZE FEATURES clonef A SNAP B FEATURES [ORDER]  removeopen A (keeps its handle)
  isprot A S              breaklock A CLIENT COOKIE

Data written by `write` is byte i = ((i + SEED) * 31) mod 251.
"""

import hashlib
import sys

import rados
import rbd

KINDS = {
    "ImageNotFound": "not-found",
    "ObjectNotFound": "not-found",
    "ImageExists": "exists",
    "ObjectExists": "exists",
    "ImageBusy": "busy",
    "ImageHasSnapshots": "has-snapshots",
    "ReadOnlyImage": "read-only",
    "InvalidArgument": "invalid-argument",
    "ArgumentOutOfRange": "out-of-range",
    "FunctionNotSupported": "not-supported",
    "OperationNotSupported": "not-supported",
    "PermissionError": "permission-denied",
    "IOError": "io",
    "IncompleteWriteError": "incomplete-write",
    "LogicError": "logic",
    "TypeError": "type-error",
    "NoSpace": "no-space",
    "DiskQuotaExceeded": "quota-exceeded",
    "Timeout": "timeout",
    "ConnectionShutdown": "connection-shutdown",
}


def pattern(length, seed):
    period = bytes(((j + seed) * 31) % 251 for j in range(251))
    reps = length // 251 + 1
    return (period * reps)[:length]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def read_all(img):
    size = img.size()
    out = bytearray()
    while len(out) < size:
        chunk = img.read(len(out), min(4 << 20, size - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


class Runner:
    def __init__(self, ioctx, prefix):
        self.ioctx = ioctx
        self.prefix = prefix
        self.images = {}

    def name(self, alias):
        return "%s-%s" % (self.prefix, alias)

    def image(self, alias):
        if alias not in self.images:
            self.images[alias] = rbd.Image(self.ioctx, self.name(alias))
        return self.images[alias]

    def drop(self, alias):
        img = self.images.pop(alias, None)
        if img is not None:
            img.close()
            return True
        return False

    def op(self, line):
        w = line.split()
        op, alias = w[0], (w[1] if len(w) > 1 else "")
        num = lambda i: int(w[i])
        r = rbd.RBD()
        if op == "create":
            kwargs = {"old_format": False}
            if len(w) > 3:
                kwargs["order"] = num(3)
            r.create(self.ioctx, self.name(alias), num(2), **kwargs)
            return "ok"
        if op == "createf":
            r.create(self.ioctx, self.name(alias), num(2), old_format=False, features=num(3))
            return "ok"
        if op == "clonef":
            kwargs = {"features": num(4)}
            if len(w) > 5:
                kwargs["order"] = num(5)
            r.clone(self.ioctx, self.name(alias), w[2], self.ioctx, self.name(w[3]), **kwargs)
            return "ok"
        if op == "removeopen":
            self.image(alias)
            r.remove(self.ioctx, self.name(alias))
            return "ok"
        if op == "close":
            return "ok" if self.drop(alias) else "ok not-open"
        if op == "remove":
            self.drop(alias)
            r.remove(self.ioctx, self.name(alias))
            return "ok"
        if op == "rename":
            self.drop(alias)
            r.rename(self.ioctx, self.name(alias), self.name(w[2]))
            return "ok"
        if op == "list":
            mine = self.prefix + "-"
            names = sorted(n[len(mine):] for n in r.list(self.ioctx) if n.startswith(mine))
            return "ok " + ",".join(names)
        if op == "clone":
            r.clone(self.ioctx, self.name(alias), w[2], self.ioctx, self.name(w[3]))
            return "ok"
        if op == "version":
            return "ok %d.%d.%d" % r.version()
        if op == "rowrite":
            with rbd.Image(self.ioctx, self.name(alias), read_only=True) as ro:
                return "ok %d" % ro.write(b"x", num(2))
        if op == "copy":
            self.image(alias).copy(self.ioctx, self.name(w[2]))
            return "ok"
        img = self.image(alias)
        if op == "write":
            return "ok %d" % img.write(pattern(num(3), num(4)), num(2))
        if op == "read":
            data = img.read(num(2), num(3))
            return "ok %d %s" % (len(data), sha(data))
        if op == "discard":
            img.discard(num(2), num(3))
            return "ok"
        if op == "resize":
            img.resize(num(2))
            return "ok"
        if op == "isprot":
            return "ok " + str(bool(img.is_protected_snap(w[2]))).lower()
        if op == "breaklock":
            img.break_lock(w[2], w[3])
            return "ok"
        if op == "flush":
            img.flush()
            return "ok"
        if op == "invalidate":
            img.invalidate_cache()
            return "ok"
        if op == "oldformat":
            return "ok " + str(bool(img.old_format())).lower()
        if op == "children":
            img.set_snap(w[2])
            try:
                children = img.list_children()
            finally:
                img.set_snap(None)
            mine = self.prefix + "-"
            names = sorted("%s/%s" % (p, n[len(mine):] if n.startswith(mine) else n) for p, n in children)
            return "ok " + ",".join(names)
        if op == "flatten":
            img.flatten()
            return "ok"
        simple = {
            "snap": img.create_snap,
            "rmsnap": img.remove_snap,
            "protect": img.protect_snap,
            "unprotect": img.unprotect_snap,
            "rollback": img.rollback_to_snap,
            "lockx": img.lock_exclusive,
            "unlock": img.unlock,
        }
        if op in simple:
            simple[op](w[2])
            return "ok"
        if op == "setsnap":
            img.set_snap(None if w[2] == "-" else w[2])
            return "ok"
        if op == "locks":
            img.lock_shared(w[2], w[3])
            return "ok"
        if op == "lockers":
            info = img.list_lockers()
            lockers = info.get("lockers", []) if info else []
            cookies = sorted(l[1] for l in lockers)
            exclusive = bool(cookies) and bool(info.get("exclusive"))
            tag = info.get("tag", "") if info else ""
            return "ok exclusive=%s tag=%s cookies=%s" % (str(exclusive).lower(), tag, ",".join(cookies))
        if op == "diff":
            return self.diff(img, None if w[2] == "-" else w[2])
        if op == "state":
            return self.state(img)
        return "err unknown-op " + op

    def diff(self, img, from_snap):
        size = img.size()
        extents = []
        img.diff_iterate(0, size, from_snap, lambda o, l, e: extents.append((o, l, e)))
        new = read_all(img)
        if from_snap is None:
            old = bytearray(size)
        else:
            with rbd.Image(self.ioctx, img.get_name(), snapshot=from_snap, read_only=True) as at:
                old = bytearray(read_all(at))
        old = old[:size] + bytearray(max(0, size - len(old)))
        for off, length, exists in extents:
            if off + length > len(old):
                return "ok diff-extent-past-end %d+%d" % (off, length)
            old[off:off + length] = new[off:off + length] if exists else bytes(length)
        listed = ",".join("%d+%d%s" % (o, l, "d" if e else "z") for o, l, e in extents)
        verdict = "diff-reproduces" if bytes(old) == new else "diff-mismatch"
        return "ok %s [%s]" % (verdict, listed)

    def state(self, img):
        st = img.stat()
        parts = ["size=%d order=%d obj_size=%d num_objs=%d features=%d stripe=%d/%d" % (
            st["size"], st["order"], st["obj_size"], st["num_objs"], img.features(),
            img.stripe_unit(), img.stripe_count())]
        parts.append("head=" + sha(read_all(img)))
        try:
            _pool, image, snap = img.parent_info()
            parent = "%s@%s" % (image, snap)
            parent = parent.replace(self.prefix + "-", "")
        except rbd.ImageNotFound:
            parent = "-"
        parts.append("parent=" + parent)
        for s in img.list_snaps():
            with rbd.Image(self.ioctx, img.get_name(), snapshot=s["name"], read_only=True) as at:
                data = read_all(at)
            parts.append("snap=%s:%d:%s:%s" % (s["name"], s["size"], str(img.is_protected_snap(s["name"])).lower(), sha(data)))
        return "ok " + " ".join(parts)


def run_op(runner, line):
    try:
        return runner.op(line)
    except rbd.Error as e:
        return "err " + KINDS.get(type(e).__name__, "other")
    except rados.Error as e:
        return "err " + KINDS.get(type(e).__name__, "other")
    except TypeError:
        return "err type-error"


class TwoClients:
    """`--two-clients`: each OP starts with the client that runs it, `a` or `b`, each its own
    connection with its own image handles. Ops that name a client or show lock holders
    use the symbols instead of client ids, and `auto` for the exclusive-lock feature's
    cookies (`auto <n>`, different on every run):

      lockers A            from a new read-only handle (librbd's handles cache the lock
                           list): `ok exclusive=E tag=T holders=X:COOKIE,...`
      watchers A           from a new read-only handle: `ok X,...`
      breaklock A X COOKIE COOKIE `auto` is X's exclusive-lock feature cookie
      write/discard        `err busy` where python-rbd would wait for ever (an advisory
                           lock held, the exclusive-lock feature on), as both backends do
    """

    def __init__(self, clusters, prefix):
        self.runners = {}
        self.names = {}
        for sym, cluster in clusters.items():
            self.runners[sym] = Runner(cluster.open_ioctx("rbd"), prefix)
            self.names["client.%d" % cluster.get_instance_id()] = sym

    def sym(self, client):
        return self.names.get(client, "?")

    def fresh(self, runner, alias):
        return rbd.Image(runner.ioctx, runner.name(alias), read_only=True)

    def advisory_lock_held(self, runner, alias):
        try:
            with self.fresh(runner, alias) as img:
                info = img.list_lockers()
        except rbd.Error:
            return False  # the write answers for itself (not-found, connection-shutdown)
        lockers = info.get("lockers", []) if info else []
        managed = info and info.get("tag") == "internal" and all(k.startswith("auto ") for _, k, _ in lockers)
        return bool(lockers) and not managed and bool(runner.image(alias).features() & rbd.RBD_FEATURE_EXCLUSIVE_LOCK)

    def op(self, line):
        w = line.split()
        runner, op = self.runners[w[0]], w[1]
        if op == "lockers":
            with self.fresh(runner, w[2]) as img:
                info = img.list_lockers()
            lockers = info.get("lockers", []) if info else []
            holders = sorted("%s:%s" % (self.sym(c), "auto" if k.startswith("auto ") else k) for c, k, _ in lockers)
            exclusive = bool(holders) and bool(info.get("exclusive"))
            tag = info.get("tag", "") if info else ""
            return "ok exclusive=%s tag=%s holders=%s" % (str(exclusive).lower(), tag, ",".join(holders))
        if op == "watchers":
            with self.fresh(runner, w[2]) as img:
                ids = [self.sym("client.%d" % x["id"]) for x in img.watchers_list()]
            return "ok " + ",".join(sorted(ids))
        if op in ("write", "discard") and self.advisory_lock_held(runner, w[2]):
            # python-rbd's write would wait for ever (an advisory lock on an image with the
            # exclusive-lock feature); both backends answer `busy` there
            # (docs/librbd-semantics.md), and so does this oracle, so the scripts can be random.
            return "err busy"
        if op == "breaklock":
            client = next((c for c, s in self.names.items() if s == w[3]), w[3])
            cookie = w[4]
            if cookie == "auto":
                with self.fresh(runner, w[2]) as img:
                    info = img.list_lockers()
                autos = [k for c, k, _ in (info.get("lockers", []) if info else []) if c == client and k.startswith("auto ")]
                cookie = autos[0] if autos else "auto ?"
            runner.image(w[2]).break_lock(client, cookie)
            return "ok"
        return runner.op(" ".join(w[1:]))


def main_two_clients(conf, prefix, ops):
    clusters = {sym: rados.Rados(conffile=conf) for sym in ("a", "b")}
    for cluster in clusters.values():
        cluster.connect()
    two = TwoClients(clusters, prefix)
    for line in ops:
        print(run_op(two, line), flush=True)
    # A blocklisted client cannot close cleanly: whatever it answers, go on.
    for runner in two.runners.values():
        for alias in list(runner.images):
            try:
                runner.drop(alias)
            except Exception:
                pass
        try:
            runner.ioctx.close()
        except Exception:
            pass
    for cluster in clusters.values():
        try:
            cluster.shutdown()
        except Exception:
            pass


def main():
    if sys.argv[1] == "--two-clients":
        main_two_clients(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    conf, prefix, ops = sys.argv[1], sys.argv[2], sys.argv[3:]
    with rados.Rados(conffile=conf) as cluster:
        with cluster.open_ioctx("rbd") as ioctx:
            runner = Runner(ioctx, prefix)
            for line in ops:
                print(run_op(runner, line), flush=True)
            for alias in list(runner.images):
                runner.drop(alias)


if __name__ == "__main__":
    main()
