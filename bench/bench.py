#!/usr/bin/python3
"""The measurements behind `bench/run.sh` (which builds everything and starts the cluster
first; see bench/README.md). Every peer is a separate process, timed from spawn to exit.

Writes RESULTS/latest.json (every sample, medians, ratios, targets) and RESULTS/latest.png,
and prints a Markdown table on stdout.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOL = "rbd"
IMAGE = "bench"


def log(*parts):
    print("bench:", *parts, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.conf = args.conf
        self.work = args.work
        target = args.target_dir
        self.rbd_wasm = os.path.join(target, "release", "rbd-wasm")
        self.native = os.path.join(target, "release", "bench-native")
        self.host = os.path.join(target, "release", "bench-host")
        wasm = os.path.join(target, "wasm32-wasip2", "release")
        self.backup = os.path.join(wasm, "backup.wasm")
        self.restore = os.path.join(wasm, "restore.wasm")
        self.hello = os.path.join(wasm, "hello.wasm")
        self.guest = os.path.join(wasm, "bench_guest.wasm")
        self.cache = os.path.join(self.work, "component-cache")
        self.env = dict(os.environ, RBD_WASM_CACHE=self.cache)
        self.env.pop("RBD_WASM_STORE", None)
        self.results = {}

    # --- running things -------------------------------------------------------------------

    def sh(self, cmd, capture=True):
        """Run an untimed step; its stdout (stripped) on success."""
        p = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE if capture else None,
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout or ''}{p.stderr}")
        return (p.stdout or "").strip()

    def timed(self, cmd):
        """Run a measured command: its wall time in seconds, from spawn to exit."""
        t = time.perf_counter()
        p = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        secs = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n"
                               f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
        return secs

    def native_cmd(self, *args, store=None):
        where = ["--store", store] if store else ["-c", self.conf]
        return [self.native, *where, "--pool", POOL, *args]

    def ours(self, job, args, output_dir, store=None):
        where = ["--store", store] if store else ["-c", self.conf]
        return [self.rbd_wasm, "run", *where, "--pool", POOL, "--output-dir", output_dir,
                "--progress", "none", job, "--", *args]

    def rbd(self, *args):
        return ["rbd", "-c", self.conf, *args]

    # --- scenarios ------------------------------------------------------------------------

    def warm_cache(self):
        """Compile every component once (a job with bad arguments still gets compiled)."""
        os.makedirs(self.cache, exist_ok=True)
        store = os.path.join(self.work, "warm-store")
        for job in (self.backup, self.restore, self.hello, self.guest):
            cmd = [self.rbd_wasm, "run", "--store", store, "--progress", "none", job, "--", "--bench-warm-up"]
            subprocess.run(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fresh_dir(self, name):
        path = os.path.join(self.work, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def full_backups(self, store=None):
        """Our backup job with no base, N times; the last run's repository is kept."""
        samples = []
        for i in range(self.args.runs):
            repo = self.fresh_dir(f"full-{'emb' if store else 'rbd'}")
            samples.append(self.timed(self.ours(self.backup, [POOL, IMAGE], repo, store)))
            self.check_manifest(repo, 1, None)
            if i < self.args.runs - 1:
                self.sh(self.native_cmd("snap-rm", IMAGE, "backup-1", store=store))
        return samples, repo

    def incremental_backup(self, base_repo, name, store=None):
        """One incremental run of our backup job: a fresh copy of the repository of backup 1,
        the image's snapshots as they were after it (backup-2 removed after the run)."""
        repo = os.path.join(self.work, name)
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(base_repo, repo)
        secs = self.timed(self.ours(self.backup, [POOL, IMAGE], repo, store))
        manifest = self.check_manifest(repo, 2, "backup-1")
        self.sh(self.native_cmd("snap-rm", IMAGE, "backup-2", store=store))
        return secs, repo, manifest

    def check_manifest(self, repo, n, from_snapshot):
        path = os.path.join(repo, POOL, IMAGE, f"{n}.json")
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("from_snapshot") != from_snapshot:
            raise RuntimeError(f"{path}: from {manifest.get('from_snapshot')}, expected {from_snapshot}")
        return manifest

    def fsync_secs(self, path):
        t = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return time.perf_counter() - t

    # A memstore OSD keeps every snapshot's copy of an object in RAM: runs on 1 GiB images
    # fill it, and a full OSD makes writes wait (restores of 162 s and 302 s in one run, 30 s
    # instead of 7 s when measured). A sample taken so measures the OSD, not the jobs.
    FULL_WARN = 0.70
    FULL_STOP = 0.85

    def check_cluster(self, when):
        """Refuse to measure on a cluster that is near full or unhealthy; note a fuller one."""
        if self.conf is None:
            return
        df = json.loads(self.sh(["ceph", "-c", self.conf, "df", "-f", "json"]))
        used = df["stats"]["total_used_raw_ratio"]
        health = json.loads(self.sh(["ceph", "-c", self.conf, "health", "-f", "json"]))["status"]
        state = f"{when}: cluster {used:.0%} full, {health}"
        if used >= self.FULL_STOP or health == "HEALTH_ERR":
            raise RuntimeError(f"{state}: samples now would measure a full OSD, not the jobs; "
                               "restart the cluster with a larger RBD_WASM_CEPH_MEMSTORE_BYTES")
        if used >= self.FULL_WARN or health != "HEALTH_OK":
            log("warning: " + state)
            self.results.setdefault("cluster_warnings", []).append(state)

    def run_rotating(self, peers, runs):
        """Run each peer `runs` times, the order rotating every round so no peer always goes
        first (or always follows the same neighbour). `peers` maps a name to a function that
        does one measured run and returns its seconds."""
        names = list(peers)
        samples = {name: [] for name in names}
        # The CPU (user + sys) of each run's processes, from the kernel's accounting of
        # waited-for children: what the sandbox costs apart from the cluster's time.
        self.last_cpu = {name: [] for name in names}
        for i in range(runs):
            self.check_cluster(f"before round {i + 1} of {', '.join(names)}")
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                before = children_cpu()
                samples[name].append(peers[name](i))
                self.last_cpu[name].append(children_cpu() - before)
            log(f"  round {i + 1}/{runs}: " + ", ".join(f"{n} {samples[n][-1]:.3f}s" for n in names))
        return samples

    def stream_peers(self, out, kind, from_snap, to_snap, rbd_fsync, digests):
        """The peers that export a snapshot with existing tools, each a function of the round
        number that does one measured run. Those named `+ snap create` take the snapshot they
        export first, inside the measured time, as a backup must (and as the backup job does);
        the snapshot is removed, untimed, after the run. The others export `to_snap`, taken
        beforehand. `kind` is `full` or `inc`."""
        py = ["/usr/bin/python3", os.path.join(ROOT, "bench", "pyrbd_export_diff.py"), self.conf, POOL, IMAGE]
        frm = ["--from-snap", from_snap] if from_snap else []
        native_from = ["--from", from_snap] if from_snap else []
        spec = f"{POOL}/{IMAGE}"

        def peer(name, commands, snap=None, fsync=None, digest=None):
            def run(i):
                path = os.path.join(out, f"{kind}.{name}")
                t = time.perf_counter()
                for cmd in commands(path):
                    self.timed(cmd)
                secs = time.perf_counter() - t
                if fsync is not None:
                    fsync.append(self.fsync_secs(path))
                if digest is not None and i == 0:
                    digests[digest] = sha256_file(path)
                os.remove(path)
                if snap:
                    self.sh(self.native_cmd("snap-rm", IMAGE, snap))
                return secs
            return run

        peers = {}
        if kind == "full":
            peers["rbd export"] = peer("rbd.img", lambda p: [self.rbd("export", "--no-progress", f"{spec}@{to_snap}", p)],
                                       fsync=rbd_fsync)
            peers["rbd snap create + export"] = peer("rbd-snap.img", lambda p: [
                self.rbd("snap", "create", "--no-progress", f"{spec}@peer-snap"),
                self.rbd("export", "--no-progress", f"{spec}@peer-snap", p)], snap="peer-snap")
        peers["rbd export-diff"] = peer("rbd.diff", lambda p: [
            self.rbd("export-diff", "--no-progress", *frm, f"{spec}@{to_snap}", p)],
            fsync=rbd_fsync if kind != "full" else None, digest="rbd")
        if kind != "full":
            peers["rbd snap create + export-diff"] = peer("rbd-snap.diff", lambda p: [
                self.rbd("snap", "create", "--no-progress", f"{spec}@peer-snap"),
                self.rbd("export-diff", "--no-progress", *frm, f"{spec}@peer-snap", p)], snap="peer-snap")
        peers["python-rbd loop"] = peer("py.diff", lambda p: [py + [from_snap or "-", to_snap, p]], digest="python")
        if kind != "full":
            peers["python-rbd loop + snap create"] = peer("py-snap.diff", lambda p: [
                py + [from_snap or "-", "peer-snap", p, "--create-snap"]], snap="peer-snap")
        peers["native Rust loop"] = peer("native.diff", lambda p: [
            self.native_cmd("export-diff", IMAGE, p, *native_from, "--to", to_snap)], digest="native")
        peers["native Rust loop + snap create"] = peer("native-snap.diff", lambda p: [
            self.native_cmd("export-diff", IMAGE, p, *native_from, "--to", "peer-snap", "--create-snap")],
            snap="peer-snap")
        return peers

    def librbd(self):
        size = self.args.size_mib
        out = self.fresh_dir("streams")
        log(f"filling rbd/{IMAGE} ({size} MiB)")
        self.sh(self.native_cmd("rm", IMAGE))
        self.sh(self.native_cmd("fill", IMAGE, "--mib", str(size), "--seed", "1"))
        self.sh(self.native_cmd("snap-create", IMAGE, "full"))

        # Full backup. Our job snapshots the image itself (backup-1); the plain peers export
        # the snapshot `full`, taken at the same point.
        log("full backup")
        full_repo = {}
        rbd_fsync, digests = [], {}

        def ours_full(i):
            repo = self.fresh_dir("full-rbd")
            secs = self.timed(self.ours(self.backup, [POOL, IMAGE], repo))
            self.check_manifest(repo, 1, None)
            full_repo["last"] = repo
            if i < self.args.runs - 1:
                self.sh(self.native_cmd("snap-rm", IMAGE, "backup-1"))
            return secs

        # The repository of the last round is kept (its backup-1 stays on the image): the
        # base of the incremental runs.
        full = self.run_rotating({"rbd-wasm backup": ours_full,
                                  **self.stream_peers(out, "full", None, "full", rbd_fsync, digests)},
                                 self.args.runs)
        base_repo = os.path.join(self.work, "base-repo")
        shutil.rmtree(base_repo, ignore_errors=True)
        shutil.move(full_repo["last"], base_repo)
        cpu = self.last_cpu
        self.results["full"] = {
            "cpu_samples": cpu,
            "title": f"Full backup ({size} MiB image)",
            "ours": "rbd-wasm backup",
            "samples": full,
            "streams_identical": len(set(digests.values())) == 1,
            "extra": {"rbd export: fsync of its file afterwards (s)": rbd_fsync},
            "notes": "rbd-wasm backup: the backup job on librbd, process wall time; it takes the snapshot backup-1 "
                     "itself, writes N.rbddiff + N.sums + N.json, digests every 64 KiB chunk (sha256), fsyncs. "
                     "rbd export writes a raw sparse image file and does not fsync; rbd export-diff writes the "
                     "same v1 stream, no fsync; the python and native loops write the v1 stream and fsync. "
                     "Peers named '+ snap create' take their snapshot inside the measured time, like the job; "
                     "the others export the snapshot `full` taken beforehand. streams_identical: the rbd "
                     "export-diff, python and native streams are byte-identical.",
        }

        # The change: 25% in scattered extents, then the snapshot the peers diff to.
        log("changing the image")
        change = json.loads(self.sh(self.native_cmd("change", IMAGE, "--fraction", str(self.args.fraction),
                                                    "--seed", "2")))
        self.sh(self.native_cmd("snap-create", IMAGE, "bench-to"))

        log("incremental backup")
        chain = {}
        rbd_fsync, digests = [], {}

        def ours_inc(_):
            secs, repo, manifest = self.incremental_backup(base_repo, "inc-rbd")
            chain["repo"], chain["manifest"] = repo, manifest
            return secs

        inc = self.run_rotating({"rbd-wasm backup": ours_inc,
                                 **self.stream_peers(out, "inc", "backup-1", "bench-to", rbd_fsync, digests)},
                                self.args.runs)
        chain_repo = os.path.join(self.work, "chain-repo")
        shutil.rmtree(chain_repo, ignore_errors=True)
        shutil.move(chain["repo"], chain_repo)
        cpu = self.last_cpu
        self.results["incremental"] = {
            "cpu_samples": cpu,
            "title": f"Incremental backup ({self.args.fraction:.0%} of {size} MiB changed)",
            "ours": "rbd-wasm backup",
            "samples": inc,
            "change": change,
            "streams_identical": len(set(digests.values())) == 1,
            "stream_bytes": {"rbd-wasm backup": chain["manifest"]["stream_bytes"]},
            "extra": {"rbd export-diff: fsync of its file afterwards (s)": rbd_fsync},
            "notes": "All peers diff backup-1 against the same image state. The backup job takes its own snapshot "
                     "backup-2 (included in its time, removed untimed after each run), starts from a fresh copy "
                     "of the repository holding backup 1, digests the changed 64 KiB chunks, writes and fsyncs "
                     "N.rbddiff, N.sums and N.json. Peers named '+ snap create' also take their snapshot inside "
                     "the measured time; the others read the snapshot bench-to, taken beforehand. rbd export-diff "
                     "does not fsync (its fsync, timed apart, is under extra). streams_identical: the rbd, python "
                     "and native streams are byte-identical.",
        }

        # Restore: the chain (full + incremental) onto a new image, both ways.
        log("restore")
        streams = [os.path.join(chain_repo, POOL, IMAGE, f"{n}.rbddiff") for n in (1, 2)]
        digest_secs = []

        def ours_restore(i):
            target = f"restored-{i}"
            self.sh(self.native_cmd("rm", target))
            secs = self.timed(self.ours(self.restore, [POOL, IMAGE, target], chain_repo))
            digest_secs.append(self.timed(self.ours(self.guest, ["digest", POOL, target, "backup-2"], chain_repo)))
            self.sh(self.native_cmd("rm", target))
            return secs

        def rbd_import(i):
            target = f"imported-{i}"
            self.sh(self.native_cmd("rm", target))
            t = time.perf_counter()
            self.timed(self.rbd("create", "--size", "1", f"{POOL}/{target}"))
            for stream in streams:
                self.timed(self.rbd("import-diff", "--no-progress", stream, f"{POOL}/{target}"))
            secs = time.perf_counter() - t
            self.sh(self.native_cmd("rm", target))
            return secs

        restore = self.run_rotating({"rbd-wasm restore": ours_restore, "rbd import-diff": rbd_import},
                                    self.args.runs)
        cpu = self.last_cpu
        self.results["restore"] = {
            "cpu_samples": cpu,
            "title": "Restore (full + incremental onto a new image)",
            "ours": "rbd-wasm restore",
            "samples": restore,
            "extra": {"rbd-wasm digest job alone (s)": digest_secs},
            "notes": "rbd-wasm restore applies both streams (creating backup-1 and backup-2 on the target), "
                     "checking each against its manifest's stream check as it goes and comparing every chunk it "
                     "wrote whole with the backup's chunk digest; it reads back only chunks a stream touched in "
                     "part. rbd import-diff: `rbd create` then one `rbd import-diff` per stream (three "
                     "processes), no verification. 'digest job alone' is a separate job that reads the restored "
                     "image back whole for its digest, what the restore did before it checked from its writes.",
        }

    def embedded(self):
        size = self.args.size_mib
        store = os.path.join(self.work, "embedded-store")
        shutil.rmtree(store, ignore_errors=True)
        log(f"embedded store: filling {IMAGE} ({size} MiB)")
        self.sh(self.native_cmd("fill", IMAGE, "--mib", str(size), "--seed", "1", store=store))
        full, base_repo = self.full_backups(store)
        base = os.path.join(self.work, "base-repo-emb")
        shutil.rmtree(base, ignore_errors=True)
        shutil.move(base_repo, base)
        self.sh(self.native_cmd("change", IMAGE, "--fraction", str(self.args.fraction), "--seed", "2", store=store))
        inc = []
        for _ in range(self.args.runs):
            secs, repo, _ = self.incremental_backup(base, "inc-emb", store)
            inc.append(secs)
        restore = []
        # The chain of the last incremental run (its backup-2 snapshot is gone from the image,
        # which the restore does not need).
        for i in range(self.args.runs):
            target = f"restored-{i}"
            restore.append(self.timed(self.ours(self.restore, [POOL, IMAGE, target], repo, store)))
            self.sh(self.native_cmd("rm", target, store=store))
        self.results["embedded"] = {
            "title": f"The same jobs on the embedded backend ({size} MiB image)",
            "samples": {"full backup": full, "incremental backup": inc, "restore": restore},
            "notes": "The backup and restore jobs on `--store DIR` (files under the work directory, through the "
                     "page cache), with the same data and change as on librbd.",
        }
        log("  embedded: " + ", ".join(f"{k} {statistics.median(v):.3f}s"
                                       for k, v in self.results["embedded"]["samples"].items()))

    def cached_job(self):
        """`rbd-wasm run` of hello (create an image, write 600 bytes), component cached."""
        store = os.path.join(self.work, "hello-store")
        shutil.rmtree(store, ignore_errors=True)
        samples = {"embedded": [], "librbd": []}
        for i in range(self.args.small_runs + 1):
            secs = self.timed([self.rbd_wasm, "run", "--store", store, "--progress", "none", self.hello, "--",
                               POOL, f"hello-{i}"])
            if i > 0:
                samples["embedded"].append(secs)
        for i in range(self.args.small_runs + 1):
            secs = self.timed([self.rbd_wasm, "run", "-c", self.conf, "--progress", "none", self.hello, "--",
                               POOL, f"hello-{i}"])
            self.sh(self.native_cmd("rm", f"hello-{i}"))
            if i > 0:
                samples["librbd"].append(secs)
        self.results["cached_job"] = {
            "title": "`rbd-wasm run` of a small cached job (hello)",
            "samples": samples,
            "notes": "Process wall time of `rbd-wasm run hello.wasm -- rbd hello-N` (creates a 4 GiB image, writes "
                     "600 bytes), the component already in the cache; the first run is a warm-up and not counted. "
                     "librbd includes connecting to the cluster.",
        }
        log("  cached job: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in samples.items()))

    def startup(self):
        out = self.sh([self.host, "startup", "--guest", self.guest, "--cache", self.cache,
                       "--store", os.path.join(self.work, "startup-store"), "--iterations", "2000"])
        self.results["startup"] = json.loads(out)
        log(f"  instantiation {self.results['startup']['instantiate_us']['median']:.1f} us, empty job run "
            f"{self.results['startup']['empty_job_run_us']['median']:.1f} us")

    def scale(self):
        self.results["scale"] = {}
        backends = [("embedded", ["--store", os.path.join(self.work, "scale-store")])]
        if not self.args.scale_embedded_only:
            backends.append(("librbd", ["-c", self.conf]))
        for name, where in backends:
            log(f"scale: {self.args.jobs} jobs at once on {name}")
            out_dir = self.fresh_dir(f"scale-out-{name}")
            cmd = [self.host, "scale", *where, "--pool", POOL, "--jobs", str(self.args.jobs),
                   "--backup", self.backup, "--guest", self.guest, "--cache", self.cache, "--out", out_dir,
                   "--image-mib", str(self.args.scale_image_mib), "--park-secs", str(self.args.park_secs),
                   "--prefix", f"scale-{name}"]
            p = subprocess.run(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                result = json.loads(p.stdout)
            except json.JSONDecodeError:
                result = {"error": f"bench-host scale failed ({p.returncode}): {p.stderr[-2000:]}"}
            if p.returncode != 0:
                result.setdefault("error", p.stderr[-2000:])
            self.results["scale"][name] = result
            shutil.rmtree(out_dir, ignore_errors=True)
            if "backup" in result:
                log(f"  {name}: backups {result['backup']['total_secs']:.2f}s, peak RSS "
                    f"{result['backup']['peak_rss_mib']:.0f} MiB, idle job {result['idle']['per_idle_job_kib']:.0f} KiB")
            else:
                log(f"  {name}: {result.get('error')}")


def children_cpu():
    """User + system CPU seconds of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def median(samples):
    return statistics.median(samples) if samples else float("nan")


def summarize(results):
    """Medians and ratios next to the samples, and the targets."""
    for key in ("full", "incremental", "restore"):
        s = results.get(key)
        if not s:
            continue
        s["medians"] = {peer: median(v) for peer, v in s["samples"].items()}
        ours = s["medians"][s["ours"]]
        s["ratios"] = {f"{s['ours']} / {peer}": ours / m for peer, m in s["medians"].items() if peer != s["ours"]}
        s["extra_medians"] = {k: median(v) for k, v in s.get("extra", {}).items()}
    if "embedded" in results:
        e = results["embedded"]
        e["medians"] = {k: median(v) for k, v in e["samples"].items()}
    if "cached_job" in results:
        c = results["cached_job"]
        c["medians"] = {k: median(v) for k, v in c["samples"].items()}

    targets = []

    def target(name, measured, op, limit, unit=""):
        met = measured <= limit if op == "<=" else measured >= limit
        targets.append({"target": name, "measured": measured, "op": op, "limit": limit, "unit": unit, "met": met})

    # Each target twice: against the peer as the issue names it (exporting a snapshot taken
    # beforehand), and like for like (the peer takes its snapshot too, as the backup job does).
    inc = results.get("incremental")
    if inc:
        m = inc["medians"]
        ours = m["rbd-wasm backup"]
        for suffix, note in (("", ""), (" + snap create", " (like for like)")):
            rbd = "rbd export-diff" if not suffix else "rbd snap create + export-diff"
            target(f"incremental backup / {rbd}{note}", ours / m[rbd], "<=", 0.8, "x")
            target(f"python-rbd loop{suffix} / incremental backup (speed-up){note}",
                   m["python-rbd loop" + suffix] / ours, ">=", 3.0, "x")
            target(f"incremental backup / native Rust loop{suffix}{note}", ours / m["native Rust loop" + suffix],
                   "<=", 1.10, "x")
    full = results.get("full")
    if full:
        m = full["medians"]
        target("full backup / rbd export", m["rbd-wasm backup"] / m["rbd export"], "<=", 1.0, "x")
        target("full backup / rbd snap create + export (like for like)",
               m["rbd-wasm backup"] / m["rbd snap create + export"], "<=", 1.0, "x")
    rest = results.get("restore")
    if rest:
        m = rest["medians"]
        target("restore / rbd import-diff", m["rbd-wasm restore"] / m["rbd import-diff"], "<=", 1.0, "x")
    if "cached_job" in results:
        target("`rbd-wasm run` of a small cached job (embedded)", results["cached_job"]["medians"]["embedded"] * 1e3,
               "<=", 50.0, "ms")
    if "startup" in results:
        target("instantiation", results["startup"]["instantiate_us"]["median"], "<=", 50.0, "us")
    for name, sc in results.get("scale", {}).items():
        if "backup" not in sc:
            targets.append({"target": f"100 concurrent jobs ({name})", "measured": None, "met": False,
                            "error": sc.get("error")})
            continue
        peak = max(sc["backup"]["peak_rss_mib"], sc["idle"]["peak_rss_mib"])
        target(f"{sc['jobs']} concurrent jobs ({name}): host peak RSS", peak, "<=", 512.0, "MiB")
        targets.append({"target": f"{sc['jobs']} concurrent jobs ({name}): all finish",
                        "measured": sc["backup"]["ok"] + sc["idle"]["ok"], "op": "==", "limit": 2 * sc["jobs"],
                        "unit": "jobs", "met": sc["backup"]["all_finished"] and sc["idle"]["all_finished"]})
    # No sample far from its scenario's median: a spread of 100x is not evidence.
    spreads = []
    for key in ("incremental", "full", "restore", "embedded"):
        for peer, v in results.get(key, {}).get("samples", {}).items():
            if v and median(v) > 0:
                spreads.append((max(v) / median(v), f"{key}: {peer}"))
    if spreads:
        worst, where = max(spreads)
        target(f"slowest sample / its median (worst: {where})", worst, "<=", 3.0, "x")
    results["targets"] = targets


def fmt_s(x):
    return f"{x:.3f} s" if x < 10 else f"{x:.2f} s"


def markdown(results, meta):
    lines = []
    lines.append(f"Medians of {meta['runs']} runs, {meta['size_mib']} MiB image, {meta['date']} "
                 f"({meta['cpus']} cores, single memstore OSD; `{meta['command']}`).")
    lines.append("")
    lines.append("| scenario | rbd-wasm | peer | peer time | rbd-wasm / peer | target |")
    lines.append("| --- | ---: | --- | ---: | ---: | --- |")
    goals = {
        ("incremental", "rbd export-diff"): "<= 0.80",
        ("incremental", "rbd snap create + export-diff"): "<= 0.80",
        ("incremental", "python-rbd loop"): "<= 0.33",
        ("incremental", "python-rbd loop + snap create"): "<= 0.33",
        ("incremental", "native Rust loop"): "<= 1.10",
        ("incremental", "native Rust loop + snap create"): "<= 1.10",
        ("full", "rbd export"): "<= 1.00",
        ("full", "rbd snap create + export"): "<= 1.00",
        ("restore", "rbd import-diff"): "<= 1.00",
    }
    for key in ("incremental", "full", "restore"):
        s = results.get(key)
        if not s:
            continue
        ours = s["medians"][s["ours"]]
        first = True
        for peer, m in s["medians"].items():
            if peer == s["ours"]:
                continue
            ratio = ours / m
            goal = goals.get((key, peer))
            if goal:
                limit = float(goal.split()[1])
                goal = f"{goal} {'met' if ratio <= limit else '**not met**'}"
            lines.append(f"| {s['title'] if first else ''} | {fmt_s(ours) if first else ''} | {peer} | "
                         f"{fmt_s(m)} | {ratio:.2f} | {goal or ''} |")
            first = False
    e = results.get("embedded")
    if e:
        m = e["medians"]
        lines.append(f"| {e['title']} | full {fmt_s(m['full backup'])}, incremental "
                     f"{fmt_s(m['incremental backup'])}, restore {fmt_s(m['restore'])} | | | | |")
    lines.append("")
    lines.append("| measure | value | target |")
    lines.append("| --- | ---: | --- |")
    c = results.get("cached_job")
    if c:
        v = c["medians"]["embedded"] * 1e3
        lines.append(f"| `rbd-wasm run` of a small cached job (hello, embedded store), process wall time | {v:.1f} ms "
                     f"| < 50 ms {'met' if v < 50 else '**not met**'} |")
        lines.append(f"| the same on librbd (includes connecting to the cluster) | "
                     f"{c['medians']['librbd'] * 1e3:.1f} ms | |")
    st = results.get("startup")
    if st:
        v = st["instantiate_us"]["median"]
        lines.append(f"| instantiation (pooling allocator, `InstancePre::instantiate_async`) | {v:.1f} us | "
                     f"< 50 us {'met' if v < 50 else '**not met**'} |")
        lines.append(f"| an empty job, end to end in the host (store, WASI, instantiate, call, teardown) | "
                     f"{st['empty_job_run_us']['median']:.1f} us | |")
    for name, sc in results.get("scale", {}).items():
        if "backup" not in sc:
            lines.append(f"| {name}: concurrent jobs | failed: {str(sc.get('error'))[:80]} | |")
            continue
        b, i = sc["backup"], sc["idle"]
        peak = max(b["peak_rss_mib"], i["peak_rss_mib"])
        lines.append(f"| {sc['jobs']} concurrent backups of {sc['image_mib']} MiB images ({name}): all finish, "
                     f"total time | {b['ok']}/{sc['jobs']} in {b['total_secs']:.2f} s | all finish "
                     f"{'met' if b['all_finished'] and i['all_finished'] else '**not met**'} |")
        lines.append(f"| host peak RSS with {sc['jobs']} jobs ({name}) | {peak:.0f} MiB | < 512 MiB "
                     f"{'met' if peak < 512 else '**not met**'} |")
        lines.append(f"| memory per idle job ({name}; RSS with {sc['jobs']} parked jobs minus before, / {sc['jobs']}) | "
                     f"{i['per_idle_job_kib']:.0f} KiB | |")
    cpu_lines = []
    for key, peer in (("full", "rbd export-diff"), ("incremental", "rbd export-diff"), ("restore", "rbd import-diff")):
        sc = results.get(key)
        if not sc or "cpu_samples" not in sc or peer not in sc["cpu_samples"]:
            continue
        gib = meta["size_mib"] / 1024 * (meta["fraction_changed"] if key == "incremental" else 1.0)
        ours, theirs = median(sc["cpu_samples"][sc["ours"]]), median(sc["cpu_samples"][peer])
        cpu_lines.append(f"| {sc['title']} | {ours:.2f} s ({ours / gib:.2f} s/GiB) | {peer} | "
                         f"{theirs:.2f} s ({theirs / gib:.2f} s/GiB) | {ours / theirs:.2f} |")
    if cpu_lines:
        lines.append("")
        lines.append("CPU (user + sys) of the processes each run started, median; per GiB of the image's data "
                     "(the changed part for the incremental):")
        lines.append("")
        lines.append("| scenario | rbd-wasm CPU | peer | peer CPU | ratio |")
        lines.append("| --- | ---: | --- | ---: | ---: |")
        lines.extend(cpu_lines)
    for warning in results.get("cluster_warnings", []):
        lines.append("")
        lines.append(f"**Cluster warning** ({warning}): samples taken then may measure the OSD, not the jobs.")
    inc = results.get("incremental")
    if inc:
        notes = []
        fs = inc["extra_medians"].get("rbd export-diff: fsync of its file afterwards (s)")
        if fs is not None:
            notes.append(f"`rbd export-diff` does not fsync its file; doing so afterwards took another {fmt_s(fs)} "
                         f"(the backup job and the native and python loops fsync)")
        if "restore" in results:
            d = results["restore"]["extra_medians"].get("rbd-wasm digest job alone (s)")
            r = results["restore"]["medians"]["rbd-wasm restore"]
            if d is not None:
                notes.append(f"the restore checks what it writes against the backup's chunk digests and reads back "
                             f"only chunks written in part; reading the restored image back whole for its digest, as "
                             f"it did before, took {fmt_s(d)} in a job of its own (the restore took {fmt_s(r)})")
        notes.append("the backup job's time includes taking its snapshot and digesting every changed 64 KiB chunk")
        lines.append("")
        for n in notes:
            lines.append(f"- {n[0].upper()}{n[1:]}.")
    return "\n".join(lines)


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [k for k in ("incremental", "full", "restore") if k in results]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(18, 6), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"rbd-wasm job (backup / restore)": "#1f77b4", "rbd export-diff": "#ff7f0e",
              "rbd export": "#d62728", "rbd import-diff": "#ff7f0e", "python-rbd loop": "#2ca02c",
              "native Rust loop": "#9467bd"}
    x = 0
    ticks, labels, used = [], [], set()
    for key in groups:
        s = results[key]
        peers = list(s["medians"])
        start = x
        for peer in peers:
            m = s["medians"][peer]
            lo, hi = min(s["samples"][peer]), max(s["samples"][peer])
            base = peer.replace(" + snap create", "").replace("rbd snap create + ", "rbd ")
            snap = base != peer
            if base.startswith("rbd-wasm"):
                base = "rbd-wasm job (backup / restore)"
            ax.bar(x, m, color=colors.get(base, "#7f7f7f"), hatch="//" if snap else None,
                   edgecolor="white" if snap else None, yerr=[[m - lo], [hi - m]], capsize=3,
                   label=None if base in used else base)
            if snap and "snap" not in used:
                ax.bar(x, 0, color="#bbbbbb", hatch="//", edgecolor="white", label="hatched: the peer takes its "
                       "snapshot inside the measured time")
                used.add("snap")
            used.add(base)
            ax.text(x, m, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
            x += 1
        ticks.append((start + x - 1) / 2)
        labels.append(s["title"].replace(" onto a new image", "").replace(" changed", "").replace(" (", "\n("))
        x += 1
    e = results.get("embedded")
    if e:
        start = x
        for k, v in e["medians"].items():
            lo, hi = min(e["samples"][k]), max(e["samples"][k])
            ax.bar(x, v, color="#17becf", yerr=[[v - lo], [hi - v]], capsize=3,
                   label=None if "embedded" in used else "rbd-wasm on the embedded store")
            ax.text(x, v, f"{k.split()[0]}\n{v:.2f}", ha="center", va="bottom", fontsize=7)
            used.add("embedded")
            x += 1
        ticks.append((start + x - 1) / 2)
        labels.append("embedded store\n(full, incr., restore)")
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    # Log scale: one slow scenario (or outlier) must not flatten the others' bars.
    ax.set_yscale("log")
    ax.set_ylabel("wall time, s, log scale (median; whiskers: min to max)")
    ax.set_title("Medians per scenario, peers side by side")
    ax.legend(fontsize=8)

    ratio_targets = [t for t in results.get("targets", []) if t.get("unit") == "x"]
    names = [t["target"] for t in ratio_targets]
    values = [t["measured"] for t in ratio_targets]
    limits = [t["limit"] for t in ratio_targets]
    ys = range(len(names))
    bx.barh(list(ys), values, color=["#2ca02c" if t["met"] else "#d62728" for t in ratio_targets])
    for y, (v, limit, t) in enumerate(zip(values, limits, ratio_targets)):
        bx.plot([limit, limit], [y - 0.4, y + 0.4], color="black", linewidth=2)
        bx.text(v, y, f" {v:.2f} ({t['op']} {limit:g})", va="center", fontsize=8)
    bx.set_yticks(list(ys))
    bx.set_yticklabels(names, fontsize=8)
    bx.invert_yaxis()
    bx.set_title("Ratios against their targets (black line; green met, red not)")
    bx.set_xscale("log")
    if values:
        bx.set_xlim(min(values + limits) / 1.5, max(values + limits) * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True)
    ap.add_argument("--target-dir", required=True)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--small-runs", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--scale-image-mib", type=int, default=8)
    ap.add_argument("--park-secs", type=int, default=8)
    ap.add_argument("--scale-embedded-only", action="store_true")
    ap.add_argument("--only", default="librbd,embedded,cached,startup,scale",
                    help="comma-separated parts to run")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)

    bench = Bench(args)
    only = set(args.only.split(","))
    started = time.time()
    log("warming the component cache")
    bench.warm_cache()
    if "librbd" in only:
        bench.librbd()
    if "embedded" in only:
        bench.embedded()
    if "cached" in only:
        bench.cached_job()
    if "startup" in only:
        bench.startup()
    if "scale" in only:
        bench.scale()

    results = bench.results
    summarize(results)
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True).stdout.strip()
    ceph = subprocess.run(["rbd", "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True).stdout.strip()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "size_mib": args.size_mib,
        "runs": args.runs,
        "fraction_changed": args.fraction,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "ceph": ceph,
        "git": git,
        "bench_secs": round(time.time() - started, 1),
        "command": " ".join([f"BENCH_RUNS={args.runs}", f"BENCH_SIZE_MIB={args.size_mib}"]
                            + ([f"BENCH_JOBS={args.jobs}"] if args.jobs != 100 else [])
                            + ([f"BENCH_SCALE_MIB={args.scale_image_mib}"] if args.scale_image_mib != 8 else [])
                            + ["bench/run.sh"]),
    }
    doc = {"meta": meta, **results}
    json_path = os.path.join(args.results, "latest.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=2)
    png_path = os.path.join(args.results, "latest.png")
    try:
        chart(results, png_path)
    except Exception as e:  # the numbers matter more than the picture
        log(f"could not draw the chart: {e}")
    table = markdown(results, meta)
    with open(os.path.join(args.results, "latest.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    log(f"wrote {json_path}, {png_path} and latest.md in {meta['bench_secs']} s")


if __name__ == "__main__":
    main()
