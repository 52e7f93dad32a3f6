"""Snapshot rotation in Python: take a snapshot named PREFIX + the UTC time, then keep the
newest KEEP snapshots whose names start with PREFIX and remove the older ones.

    rbd-wasm build-py examples/python/snap_rotate.py -o snap_rotate.wasm
    rbd-wasm run snap_rotate.wasm -- rbd vm-1 --keep 7 --dry-run

"Newest" is the order the snapshots were taken in (their ids), so a clock that went back
cannot make a fresh snapshot look old. Snapshots of other names are never touched; a
protected snapshot, or one with clones, is kept and reported. One line per action:

    create rbd/vm-1@auto-20261125T010000Z
    remove rbd/vm-1@auto-20261118T010000Z
    keep rbd/vm-1@auto-20261117T010000Z (protected)
    rbd/vm-1: created 1, removed 1, kept 7 (1 protected)

With --dry-run every action line starts with `would ` and nothing changes:

    would create rbd/vm-1@auto-20261125T010000Z
    would remove rbd/vm-1@auto-20261118T010000Z
    rbd/vm-1: would create 1, remove 1, keep 7
"""

import argparse
import datetime

import rados
import rbd


def parse(args):
    parser = argparse.ArgumentParser(prog="snap_rotate", description="Take a snapshot and keep the newest KEEP of them.")
    parser.add_argument("pool")
    parser.add_argument("image")
    parser.add_argument("--prefix", default="auto-", help="name prefix of the rotated snapshots (default auto-)")
    parser.add_argument("--keep", type=int, default=7, help="how many to keep, the new one included (default 7)")
    parser.add_argument("--now", help="the time to name the new snapshot after, ISO 8601 (default: the clock)")
    parser.add_argument("--no-take", action="store_true", help="prune only")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    options = parser.parse_args(args)
    if options.keep < 0 or (options.keep == 0 and not options.no_take):
        parser.error("--keep must be 1 or more (0, which removes them all, only with --no-take)")
    if not options.prefix:
        parser.error("--prefix must not be empty")
    return options


def snapshot_name(prefix, now):
    if now is None:
        moment = datetime.datetime.now(datetime.timezone.utc)
    else:
        moment = datetime.datetime.fromisoformat(now.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
    return prefix + moment.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run(args):
    options = parse(args)
    spec = f"{options.pool}/{options.image}"
    would = "would " if options.dry_run else ""
    created = removed = 0
    kept_protected = kept_busy = 0

    with rados.Rados(conffile="") as cluster:
        with cluster.open_ioctx(options.pool) as ioctx:
            with rbd.Image(ioctx, options.image) as image:
                ours = [s for s in image.list_snaps() if s["name"].startswith(options.prefix)]
                if not options.no_take:
                    name = snapshot_name(options.prefix, options.now)
                    print(f"{would}create {spec}@{name}")
                    if not options.dry_run:
                        image.create_snap(name)
                    # Taken last: the newest, whatever its name says.
                    ours = [s for s in ours if s["name"] != name] + [{"name": name}]
                    created += 1

                expired = ours[:len(ours) - options.keep] if options.keep else ours
                for snap in expired:
                    name = snap["name"]
                    if image.is_protected_snap(name):
                        print(f"keep {spec}@{name} (protected)")
                        kept_protected += 1
                        continue
                    print(f"{would}remove {spec}@{name}")
                    if options.dry_run:
                        removed += 1
                        continue
                    try:
                        image.remove_snap(name)
                        removed += 1
                    except rbd.ImageBusy as e:
                        print(f"keep {spec}@{name} (busy: {e})")
                        kept_busy += 1

    kept = len(ours) - removed
    notes = [f"{n} {what}" for n, what in ((kept_protected, "protected"), (kept_busy, "busy")) if n]
    counts = f"create {created}, remove {removed}, keep {kept}" if options.dry_run else \
        f"created {created}, removed {removed}, kept {kept}"
    print(f"{spec}: {would}{counts}" + (f" ({', '.join(notes)})" if notes else ""))
