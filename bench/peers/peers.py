#!/usr/bin/python3
"""The measurements behind `bench/peers.sh` (issue 15, item 4): the dedup job
(`examples/dedup`, run by `rbd-wasm`) against Benji and restic on the same images, the same
cluster and the same radosgw, each into a bucket of its own. See bench/README.md, "Against
Benji and restic".

The change series, on images shared by the three tools: image `img` of MIB MiB filled whole
(`bench-native fill`, seed 1), a full backup; three incrementals, each after 25% of it
changed (`bench-native change`, seeds 2, 3, 4); image `img2`, filled with the same seed and
then 10% changed (seed 9), backed up into the same repository. At each step every tool
backs up the same image state in turn (the order rotates from step to step and round to
round); each takes its own snapshot, inside its measured time. Then the bytes in each
bucket, and a restore of each tool's last backup of `img` to a new image, checked
byte-identical to that backup's snapshot.

Every measured command is one process tree timed from spawn to exit. Writes one JSON
object per measurement to RESULTS/peers-<UTC timestamp>.jsonl and prints a Markdown table.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

POOL = "rbd"
TOOLS = ["rbd-wasm", "benji", "restic"]
NAMES = {"rbd-wasm": "rbd-wasm (dedup)", "benji": "Benji", "restic": "restic"}
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def log(*parts):
    print("peers:", *parts, file=sys.stderr, flush=True)


def read_env(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    return out


class Failed(RuntimeError):
    pass


class Peers:
    def __init__(self, args):
        self.args = args
        self.conf = args.conf
        s3 = read_env(args.s3_env)
        self.endpoint = s3["RBD_WASM_S3_ENDPOINT"]
        self.access = s3["RBD_WASM_S3_ACCESS_KEY"]
        self.secret = s3["RBD_WASM_S3_SECRET_KEY"]
        self.region = s3.get("RBD_WASM_S3_REGION", "default")
        # Copies of the binaries, so that a build during the run cannot change them midway.
        target, bin_dir = args.target_dir, os.path.join(args.work, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        for name, path in [("rbd_wasm", ("release", "rbd-wasm")), ("native", ("release", "bench-native")),
                           ("dedup_wasm", ("wasm32-wasip2", "release", "dedup.wasm"))]:
            copy = os.path.join(bin_dir, path[-1])
            shutil.copy2(os.path.join(target, *path), copy)
            setattr(self, name, copy)
        self.benji = os.path.join(args.benji_venv, "bin", "benji")
        self.stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        os.makedirs(args.results, exist_ok=True)
        self.out = os.path.join(args.results, f"peers-{self.stamp}.jsonl")
        self.env = dict(os.environ, RBD_WASM_CACHE=os.path.join(args.work, "component-cache"))
        self.env.pop("RBD_WASM_STORE", None)
        self.env.pop("CEPH_CONF", None)
        self.samples = []

    # --- running things -----------------------------------------------------------------

    def run(self, cmd, env=None, log_as=None):
        """An untimed step; its stdout. `cmd` is an argv list or a bash script."""
        return self._run(cmd, env, log_as)[0]

    def timed(self, cmd, env=None, log_as=None):
        """A measured command: (stdout, stderr, wall seconds from spawn to exit, CPU seconds
        of its process tree, user + system)."""
        return self._run(cmd, env, log_as)

    def _run(self, cmd, env, log_as):
        if isinstance(cmd, str):
            cmd = ["bash", "-c", "set -euo pipefail\n" + cmd]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        # Its own process group, so that a command that hangs (a stopped OSD) is ended whole.
        p = subprocess.Popen(cmd, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            p.stdout_bytes, p.stderr_bytes = p.communicate(timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise Failed(f"{shlex.join(cmd)[:2000]} did not finish in {self.args.timeout} s")
        secs = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        out, err = p.stdout_bytes.decode(errors="replace"), p.stderr_bytes.decode(errors="replace")
        if log_as:
            with open(os.path.join(self.round_dir, f"{log_as}.log"), "w") as f:
                f.write(f"$ {shlex.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
        if p.returncode != 0:
            raise Failed(f"{shlex.join(cmd)[:2000]} failed ({p.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
        return out, err, secs, cpu

    def rbd(self, *args):
        # `--no-progress` is an option of the commands that report progress, not a global one.
        quiet = ["--no-progress"] if args[0] in ("snap", "export", "import") else []
        return ["rbd", "-c", self.conf, *args, *quiet]

    def record(self, **fields):
        # The machine's load (1-minute average) goes with each sample: the run shares the
        # 2 cores with the cluster, and anything else running shows up in the times.
        fields = {"round": self.round, "image_mib": self.args.mib, **fields, "load1": os.getloadavg()[0]}
        self.samples.append(fields)
        with open(self.out, "a") as f:
            f.write(json.dumps(fields) + "\n")

    # --- S3 -----------------------------------------------------------------------------

    def bucket(self, tool):
        return f"peers-{self.stamp.lower()}-r{self.round}-{tool}"

    def make_bucket(self, name):
        # Through the S3 API (SigV4, the payload's hash signed), as scripts/ceph-cluster.sh
        # makes its bucket.
        code = self.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                         "-H", f"x-amz-content-sha256: {EMPTY_SHA256}",
                         "--aws-sigv4", f"aws:amz:{self.region}:s3",
                         "--user", f"{self.access}:{self.secret}", f"{self.endpoint}/{name}"])
        if code.strip() != "200":
            raise Failed(f"creating bucket {name} answered {code}")

    def bucket_stats(self, name):
        stats = json.loads(self.run(["radosgw-admin", "-c", self.conf, "bucket", "stats", "--bucket", name]))
        main = stats.get("usage", {}).get("rgw.main", {})
        return {"bytes": main.get("size", 0), "bytes_actual": main.get("size_actual", 0),
                "objects": main.get("num_objects", 0)}

    def remove_bucket(self, name):
        quietly(["radosgw-admin", "-c", self.conf, "bucket", "rm", "--bucket", name, "--purge-objects", "--bypass-gc"])

    # --- the tools ------------------------------------------------------------------------

    def setup(self):
        """Each tool's repository in its own empty bucket (untimed: init, database-init,
        and the component compiled into the cache)."""
        d = self.round_dir
        with open(os.path.join(d, "passphrase"), "w") as f:
            f.write("a peers benchmark passphrase\n")
        for tool in TOOLS:
            self.make_bucket(self.bucket(tool))

        # rbd-wasm: the dedup job on S3, as tests/tests/dedup.rs runs it.
        with open(os.path.join(d, "s3-access"), "w") as f:
            f.write(self.access)
        with open(os.path.join(d, "s3-secret"), "w") as f:
            f.write(self.secret)
        manifest = os.path.join(d, "dedup.toml")
        with open(manifest, "w") as f:
            f.write(f"""schema = 1
[job]
id = "dedup"
[[grants]]
pool = "{POOL}"
operations = ["all"]
[limits]
host_memory_mib = 256
[secrets]
repo-passphrase = "passphrase"
s3-access-key = "s3-access"
s3-secret-key = "s3-secret"
[[outbound]]
url = "{self.endpoint}/{self.bucket('rbd-wasm')}/"
""")
        self.dedup_cmd = [self.rbd_wasm, "run", "--json", "--progress", "none", "--manifest", manifest,
                          "--conf", self.conf, self.dedup_wasm, "--",
                          "--s3", self.endpoint, self.bucket("rbd-wasm"), "repo"]
        self.dedup("init", log_as="rbd-wasm-init")

        # Benji: its rbd source, its s3 storage, zstd then AES-256-GCM, its defaults otherwise
        # (4 MiB blocks, 3 reads and 3 writes in flight); the database in a local sqlite file.
        self.benji_db = os.path.join(d, "benji.sqlite")
        key = base64.b64encode(os.urandom(32)).decode()
        self.benji_conf = os.path.join(d, "benji.yaml")
        with open(os.open(self.benji_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"""configurationVersion: '1'
databaseEngine: 'sqlite:///{self.benji_db}'
defaultStorage: s3
storages:
  - name: s3
    storageId: 1
    module: s3
    configuration:
      awsAccessKeyId: '{self.access}'
      awsSecretAccessKey: '{self.secret}'
      endpointUrl: '{self.endpoint}'
      regionName: '{self.region}'
      addressingStyle: path
      bucketName: '{self.bucket('benji')}'
      activeTransforms: [zstd, aes]
transforms:
  - name: zstd
    module: zstd
    configuration:
      level: 3
  - name: aes
    module: aes_256_gcm
    configuration:
      masterKey: '{key}'
ios:
  - name: rbd
    module: rbd
    configuration:
      cephConfigFile: '{self.conf}'
      clientIdentifier: admin
""")
        # boto3 from 1.36 on sends checksums Pacific's radosgw may refuse (the install pins
        # boto3 below 1.36; this keeps a newer one working too).
        self.benji_env = dict(self.env, AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
                              AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
        self.run([self.benji, "-c", self.benji_conf, "database-init"], env=self.benji_env, log_as="benji-init")
        self.benji_last = {}

        # restic: a format-2 repository (zstd, "auto"), its defaults otherwise.
        self.restic_env = dict(self.env, AWS_ACCESS_KEY_ID=self.access, AWS_SECRET_ACCESS_KEY=self.secret,
                               AWS_DEFAULT_REGION=self.region,
                               RESTIC_REPOSITORY=f"s3:{self.endpoint}/{self.bucket('restic')}/repo",
                               RESTIC_PASSWORD_FILE=os.path.join(d, "passphrase"),
                               RESTIC_CACHE_DIR=os.path.join(d, "restic-cache"))
        self.restic = ["restic", "-o", "s3.bucket-lookup=path"]
        self.run([*self.restic, "init", "--repository-version", "2"], env=self.restic_env, log_as="restic-init")
        self.restic_snapshots = {}

    def dedup(self, *args, log_as=None):
        out, err, secs, cpu = self.timed([*self.dedup_cmd, *args], log_as=log_as)
        report = json.loads(out)
        if report.get("status") != "ok":
            raise Failed(f"dedup {' '.join(args)}: {report}\n{err[-3000:]}")
        said = [line.split("] ", 1)[-1] for line in err.splitlines() if line.startswith("[dedup]")]
        return secs, cpu, {"job_elapsed_secs": report.get("elapsed_secs"), "job_cpu_ms": report.get("usage", {}).get("cpu_ms"),
                           "said": said[-1] if said else ""}

    def backup(self, tool, image, n):
        """Backup n of `image` by `tool`: (wall seconds, CPU seconds, details). The
        snapshot is taken inside the measured time, by every tool."""
        tag = f"{tool}-{image}-{n}"
        if tool == "rbd-wasm":
            secs, cpu, detail = self.dedup("backup", POOL, image, log_as=tag)
            detail["snapshot"] = f"dedup-{n}"
            return secs, cpu, detail
        if tool == "benji":
            snap = f"benji-{n}"
            hints = os.path.join(self.round_dir, f"{tag}.hints.json")
            base = self.benji_last.get(image)
            uid = f"{image}-{n}"
            # Benji's documented procedure: snapshot, `rbd diff --whole-object` (since the
            # previous backup's snapshot for an incremental) as hints, backup on that base.
            diff = shlex.join(self.rbd("diff", "--whole-object", "--format=json",
                                       *(["--from-snap", base[1]] if base else []), f"{POOL}/{image}@{snap}"))
            script = f"""{shlex.join(self.rbd("snap", "create", f"{POOL}/{image}@{snap}"))}
{diff} >{shlex.quote(hints)}
{shlex.join([self.benji, "-c", self.benji_conf, "-m", "backup", "-s", snap, "-r", hints,
             *(["-f", base[0]] if base else []), "-u", uid, f"rbd:{POOL}/{image}@{snap}", image])}"""
            out, err, secs, cpu = self.timed(script, env=self.benji_env, log_as=tag)
            self.benji_last[image] = (uid, snap)
            return secs, cpu, {"snapshot": snap, "version": uid, "base": base[0] if base else None}
        if tool == "restic":
            snap = f"restic-{n}"
            # restic reads the whole image every time (`rbd export` of the snapshot), and
            # deduplicates what it has already stored.
            script = f"""{shlex.join(self.rbd("snap", "create", f"{POOL}/{image}@{snap}"))}
{shlex.join(self.rbd("export", f"{POOL}/{image}@{snap}", "-"))} | {shlex.join([*self.restic, "backup", "--stdin", "--stdin-filename", f"{image}.raw", "--json"])}"""
            out, err, secs, cpu = self.timed(script, env=self.restic_env, log_as=tag)
            summary = [json.loads(l) for l in out.splitlines() if '"summary"' in l][-1]
            self.restic_snapshots[image] = summary["snapshot_id"]
            return secs, cpu, {"snapshot": snap, "restic_snapshot": summary["snapshot_id"],
                               "data_added": summary.get("data_added"),
                               "bytes_processed": summary.get("total_bytes_processed")}
        raise ValueError(tool)

    def restore(self, tool, image, target):
        """Restore the last backup of `image` to the new image `target`."""
        tag = f"{tool}-restore"
        if tool == "rbd-wasm":
            return self.dedup("restore", POOL, image, target, log_as=tag)
        if tool == "benji":
            uid, _ = self.benji_last[image]
            _, _, secs, cpu = self.timed([self.benji, "-c", self.benji_conf, "-m", "restore", "--sparse", uid,
                                          f"rbd:{POOL}/{target}"], env=self.benji_env, log_as=tag)
            return secs, cpu, {"version": uid}
        if tool == "restic":
            snap = self.restic_snapshots[image]
            script = (f"{shlex.join([*self.restic, 'dump', snap, f'{image}.raw'])} | "
                      f"{shlex.join(self.rbd('import', '-', f'{POOL}/{target}'))}")
            _, _, secs, cpu = self.timed(script, env=self.restic_env, log_as=tag)
            return secs, cpu, {"restic_snapshot": snap}
        raise ValueError(tool)

    def sha256(self, spec):
        return self.run(f"{shlex.join(self.rbd('export', f'{POOL}/{spec}', '-'))} | sha256sum").split()[0]

    # --- the series -----------------------------------------------------------------------

    def order(self, step):
        k = (step + self.round) % len(TOOLS)
        return TOOLS[k:] + TOOLS[:k]

    def series(self, rnd):
        self.round = rnd
        self.round_dir = os.path.join(self.args.work, f"round-{rnd}")
        shutil.rmtree(self.round_dir, ignore_errors=True)
        os.makedirs(self.round_dir)
        mib = self.args.mib
        img, img2 = f"peers-r{rnd}-img", f"peers-r{rnd}-img2"
        self.images = [img, img2]
        for name in self.images:
            self.run([self.native, "-c", self.conf, "--pool", POOL, "rm", name])
        self.setup()
        log(f"round {rnd}: filling {img} ({mib} MiB)")
        self.run([self.native, "-c", self.conf, "--pool", POOL, "fill", img, "--mib", str(mib), "--seed", "1"])

        steps = [("full", img, 1, None)]
        for i, seed in enumerate([2, 3, 4], start=1):
            steps.append((f"incremental-{i}", img, i + 1, seed))
        steps.append(("second-image", img2, 1, None))
        snapshots = {}
        for k, (step, image, n, seed) in enumerate(steps):
            if seed is not None:
                changed = self.run([self.native, "-c", self.conf, "--pool", POOL, "change", image,
                                    "--fraction", str(self.args.fraction), "--seed", str(seed)])
                self.record(kind="change", image=image, seed=seed, **json.loads(changed))
            if step == "second-image":
                self.run([self.native, "-c", self.conf, "--pool", POOL, "fill", img2, "--mib", str(mib), "--seed", "1"])
                changed = self.run([self.native, "-c", self.conf, "--pool", POOL, "change", img2,
                                    "--fraction", "0.10", "--seed", "9"])
                self.record(kind="change", image=img2, seed=9, **json.loads(changed))
            for tool in self.order(k):
                secs, cpu, detail = self.backup(tool, image, n)
                log(f"round {rnd}: {step:14} {tool:8} {secs:7.2f} s  {detail.get('said', '')}")
                self.record(kind="backup", step=step, tool=tool, image=image, secs=round(secs, 3),
                            cpu_secs=round(cpu, 3), **detail)
                if image == img:
                    snapshots[tool] = detail["snapshot"]

        # Bytes in each bucket after the series (`size`: the objects' bytes, what S3 bills;
        # `size_actual` rounds each object up to 4 KiB), and what each keeps on the client.
        for tool in TOOLS:
            stats = self.bucket_stats(self.bucket(tool))
            local = {"benji": self.benji_db, "restic": os.path.join(self.round_dir, "restic-cache")}.get(tool)
            local_bytes = du(local) if local else 0
            self.record(kind="stored", tool=tool, bucket=self.bucket(tool), local_bytes=local_bytes, **stats)
            log(f"round {rnd}: stored         {tool:8} {stats['bytes'] / 1e6:9.1f} MB in {stats['objects']} objects"
                f" (+ {local_bytes / 1e6:.1f} MB local)")

        # A restore of the last backup of img to a new image, checked against its snapshot.
        for tool in self.order(len(steps)):
            target = f"{img}-restored-{tool}"
            self.run([self.native, "-c", self.conf, "--pool", POOL, "rm", target])
            secs, cpu, detail = self.restore(tool, img, target)
            want = self.sha256(f"{img}@{snapshots[tool]}")
            got = self.sha256(target)
            log(f"round {rnd}: restore        {tool:8} {secs:7.2f} s  {'identical' if got == want else 'DIFFERENT'}")
            self.record(kind="restore", tool=tool, image=img, target=target, secs=round(secs, 3),
                        cpu_secs=round(cpu, 3), identical=got == want, sha256=got,
                        snapshot_sha256=want, **detail)
            self.run([self.native, "-c", self.conf, "--pool", POOL, "rm", target])
            if got != want:
                raise Failed(f"{tool}'s restore of {img}@{snapshots[tool]} differs from the snapshot")

    def cleanup_round(self):
        for name in getattr(self, "images", []):
            quietly([self.native, "-c", self.conf, "--pool", POOL, "rm", name])
        for tool in TOOLS:
            self.remove_bucket(self.bucket(tool))

    # --- the table --------------------------------------------------------------------------

    def table(self):
        def med(xs):
            return statistics.median(xs) if xs else float("nan")

        rows = []

        def times(tool, pred):
            return [s["secs"] for s in self.samples if s.get("tool") == tool and pred(s)]

        def per_round_mean(tool, prefix):
            by_round = {}
            for s in self.samples:
                if s.get("kind") == "backup" and s["tool"] == tool and s["step"].startswith(prefix):
                    by_round.setdefault(s["round"], []).append(s["secs"])
            return [statistics.mean(v) for v in by_round.values()]

        measures = [
            ("full backup (s)", lambda t: med(times(t, lambda s: s.get("step") == "full"))),
            ("incremental, mean of 3 (s)", lambda t: med(per_round_mean(t, "incremental-"))),
            ("second image (s)", lambda t: med(times(t, lambda s: s.get("step") == "second-image"))),
            ("restore (s)", lambda t: med(times(t, lambda s: s.get("kind") == "restore"))),
            ("bytes stored (MB)", lambda t: med([s["bytes"] / 1e6 for s in self.samples
                                                   if s.get("kind") == "stored" and s["tool"] == t])),
            ("objects stored", lambda t: med([s["objects"] for s in self.samples
                                                if s.get("kind") == "stored" and s["tool"] == t])),
        ]
        lines = [f"| {self.args.mib} MiB image, {self.rounds} round(s) | rbd-wasm | Benji | restic "
                 "| rbd-wasm / Benji | rbd-wasm / restic |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, f in measures:
            v = {t: f(t) for t in TOOLS}
            fmt = (lambda x: f"{x:.0f}") if "objects" in name else (lambda x: f"{x:.1f}" if "MB" in name else f"{x:.2f}")
            ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
            ratios = ("", "") if "objects" in name else (ratio(v["rbd-wasm"], v["benji"]), ratio(v["rbd-wasm"], v["restic"]))
            lines.append(f"| {name} | {fmt(v['rbd-wasm'])} | {fmt(v['benji'])} | {fmt(v['restic'])} "
                         f"| {ratios[0]} | {ratios[1]} |")
        identical = all(s["identical"] for s in self.samples if s.get("kind") == "restore")
        lines.append("")
        lines.append(f"Times: wall seconds of the whole command, snapshot included (medians over rounds); "
                     f"bytes: the bucket's objects after the series (radosgw `size`); a ratio below 1 is "
                     f"rbd-wasm faster or smaller. Restores byte-identical: {'all' if identical else 'NOT ALL'}.")
        return "\n".join(lines)

    def meta(self):
        """What was measured, with what: one record before the samples."""
        self.round = 0
        store = "?"
        with open(self.conf) as f:
            for line in f:
                if line.strip().startswith("osd objectstore"):
                    store = line.split("=", 1)[1].strip()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True).stdout.strip()
        with open(self.dedup_wasm, "rb") as f:
            wasm_sha = hashlib.sha256(f.read()).hexdigest()[:16]
        self.record(kind="meta", commit=commit, dedup_wasm_sha256=wasm_sha, osd_objectstore=store,
                    ceph=self.run(["ceph", "--version"]).strip(),
                    restic=self.run(["restic", "version"]).strip(),
                    benji=self.run([os.path.join(self.args.benji_venv, "bin", "python"), "-c",
                                    "import importlib.metadata as m; print(m.version('benji'))"]).strip(),
                    fraction=self.args.fraction, runs=self.args.runs)

    def main(self):
        self.rounds = self.args.runs
        self.round_dir = self.args.work
        self.meta()
        try:
            for rnd in range(1, self.rounds + 1):
                try:
                    self.series(rnd)
                finally:
                    if not self.args.keep:
                        self.cleanup_round()
        finally:
            log(f"samples: {self.out}")
        table = self.table()
        print(table)
        return 0


def quietly(cmd):
    """A clean-up step: its failure is not the run's (but it may not hang the run)."""
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    except subprocess.TimeoutExpired:
        log(f"gave up on {shlex.join(cmd)} after 300 s")


def du(path):
    total = 0
    if os.path.isfile(path):
        return os.path.getsize(path)
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conf", required=True, help="the cluster's ceph.conf")
    p.add_argument("--s3-env", required=True, help="the gateway's s3.env (scripts/ceph-cluster.sh)")
    p.add_argument("--work", required=True)
    p.add_argument("--results", required=True)
    p.add_argument("--target-dir", required=True)
    p.add_argument("--benji-venv", default="/opt/rbd-wasm/benji")
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--fraction", type=float, default=0.25)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the images and buckets")
    p.add_argument("--timeout", type=float, default=1800, help="seconds any one command may take")
    args = p.parse_args()
    try:
        return Peers(args).main()
    except Failed as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
