#!/usr/bin/env python3
"""Print the chunked-sha256 check of an `rbd export-diff` v1 stream (docs/backup-format.md).

    tools/rbddiff-check.py [--chunk-size N] FILE|-

The check is the SHA-256 of the stream with each `w` record's data replaced by the SHA-256
of each of its pieces, cut at the image offsets that are multiples of the chunk size
(65536 unless told); every other byte counts as it is. A backup manifest records it as
`stream_check.digest`, with the stream's length as `stream_bytes`. Standard library only.
"""
import hashlib
import struct
import sys


def check(stream, chunk):
    outer = hashlib.sha256()
    total = 0

    def take(n):
        nonlocal total
        data = stream.read(n)
        if len(data) != n:
            sys.exit(f"the stream ends early (at byte {total + len(data)})")
        total += n
        return data

    def raw(n):
        data = take(n)
        outer.update(data)
        return data

    if raw(12) != b"rbd diff v1\n":
        sys.exit("not an rbd diff v1 stream")
    while True:
        tag = raw(1)
        if tag in (b"f", b"t"):
            (length,) = struct.unpack("<I", raw(4))
            raw(length)
        elif tag == b"s":
            raw(8)
        elif tag == b"z":
            raw(16)
        elif tag == b"w":
            offset, length = struct.unpack("<QQ", raw(16))
            while length:
                n = min(length, chunk - offset % chunk)
                piece = hashlib.sha256()
                left = n
                while left:
                    part = take(min(left, 1 << 20))
                    piece.update(part)
                    left -= len(part)
                outer.update(piece.digest())
                offset += n
                length -= n
        elif tag == b"e":
            break
        else:
            sys.exit(f"unknown record tag {tag!r} at byte {total - 1}")
    # Bytes after the end record are the file's, not the stream's: they count in its length.
    while True:
        rest = stream.read(1 << 20)
        if not rest:
            break
        total += len(rest)
    return outer.hexdigest(), total


def main(argv):
    chunk = 65536
    if len(argv) >= 2 and argv[0] == "--chunk-size":
        chunk, argv = int(argv[1]), argv[2:]
    if len(argv) != 1 or chunk <= 0:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    stream = sys.stdin.buffer if argv[0] == "-" else open(argv[0], "rb")
    digest, total = check(stream, chunk)
    print(f"{digest}  {total} bytes  {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
