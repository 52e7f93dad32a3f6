#!/usr/bin/python3
"""The python-rbd peer: the diff of POOL/IMAGE from FROM to TO, written to OUT in the
`rbd export-diff` v1 format, the plain way the reference API offers: diff_iterate with a
callback that collects the extents, then one read and one record per extent, then fsync.

Usage: pyrbd_export_diff.py CONF POOL IMAGE FROM|- TO OUT [--create-snap]
  `-` for a full export; with --create-snap the snapshot TO is taken first, as a backup would.

Run with the system Python (`/usr/bin/python3`), which has Ceph's `rados` and `rbd` modules.
"""

import os
import struct
import sys

import rados
import rbd


def main(conf, pool, image_name, from_snap, to_snap, out, create_snap=False):
    from_snap = None if from_snap == "-" else from_snap
    with rados.Rados(conffile=conf) as cluster, cluster.open_ioctx(pool) as ioctx:
        if create_snap:
            with rbd.Image(ioctx, image_name) as head:
                head.create_snap(to_snap)
        with rbd.Image(ioctx, image_name, snapshot=to_snap, read_only=True) as image:
            size = image.size()
            extents = []
            image.diff_iterate(0, size, from_snap, lambda o, l, e: extents.append((o, l, e)))
            with open(out, "wb", buffering=1 << 20) as f:
                f.write(b"rbd diff v1\n")
                if from_snap is not None:
                    name = from_snap.encode()
                    f.write(b"f" + struct.pack("<I", len(name)) + name)
                name = to_snap.encode()
                f.write(b"t" + struct.pack("<I", len(name)) + name)
                f.write(b"s" + struct.pack("<Q", size))
                for offset, length, exists in extents:
                    if exists:
                        data = image.read(offset, length)
                        f.write(b"w" + struct.pack("<QQ", offset, length))
                        f.write(data)
                    else:
                        f.write(b"z" + struct.pack("<QQ", offset, length))
                f.write(b"e")
                f.flush()
                os.fsync(f.fileno())


if __name__ == "__main__":
    args = sys.argv[1:]
    create = "--create-snap" in args
    args = [a for a in args if a != "--create-snap"]
    if len(args) != 6:
        sys.exit(__doc__)
    main(*args, create_snap=create)
