#!/usr/bin/env python3
"""Fold `perf script` output into one line per stack (`frame;frame;... count`), the format
flame graph tools read, and print a summary of where the samples went.

Usage: perf script -i perf.data | bench/profiles/fold.py OUT.folded > OUT.summary
"""
import collections
import re
import sys

# Buckets for the summary, tried in order on each stack (leaf first); the first match wins.
BUCKETS = [
    ("sha256 (hashing)", re.compile(r"sha2|sha256|Sha256|compress256")),
    ("copies across the boundary (lift/lower, memmove)", re.compile(r"linear_lift|linear_lower|lift_list|lower_list|memmove|memcpy|__memcpy|__memmove")),
    ("kernel: page cache and file writes", re.compile(r"ext4_|generic_perform_write|filemap_|copy_page_from_iter|copy_user|iomap_|pagecache")),
    ("kernel: network (messenger sockets)", re.compile(r"tcp_|inet_|sock_|skb_|__sys_sendmsg|__sys_recvmsg|ip_")),
    ("librados/librbd (messenger, objecter, librbd)", re.compile(r"librados|librbd|libceph|ceph::|Objecter|AsyncConnection|ProtocolV|librbd::|bufferlist|buffer::")),
    ("allocation (malloc, free, page faults)", re.compile(r"malloc|free|_int_|mmap|munmap|do_anonymous_page|clear_page|handle_mm_fault|page_fault")),
    ("wasm guest code", re.compile(r"wasm\[|wasm-function|<wasm")),
    ("wasmtime runtime", re.compile(r"wasmtime")),
    ("tokio and scheduling", re.compile(r"tokio|futex|schedule|__schedule|pthread_cond")),
]


def main():
    out_path = sys.argv[1]
    stacks = collections.Counter()
    frames = []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                stacks[";".join(reversed(frames))] += 1
                frames = []
            continue
        if line[0] not in " \t":
            continue  # the sample's header line
        parts = line.strip().split(None, 1)
        if len(parts) == 2:
            sym = parts[1]
            sym = re.sub(r"\+0x[0-9a-f]+", "", sym)
            sym = re.sub(r" \(.*\)$", lambda m: " (" + m.group(0).strip(" ()").split("/")[-1] + ")", sym)
            frames.append(sym.replace(";", ":"))
    if frames:
        stacks[";".join(reversed(frames))] += 1
    with open(out_path, "w") as f:
        for stack, n in stacks.most_common():
            f.write(f"{stack} {n}\n")
    total = sum(stacks.values()) or 1
    buckets = collections.Counter()
    for stack, n in stacks.items():
        leaf_first = list(reversed(stack.split(";")))
        for name, pattern in BUCKETS:
            if any(pattern.search(frame) for frame in leaf_first[:6]):
                buckets[name] += n
                break
        else:
            buckets["other"] += n
    print(f"{total} samples")
    for name, n in buckets.most_common():
        print(f"{100.0 * n / total:5.1f}%  {name}")
    leaves = collections.Counter()
    for stack, n in stacks.items():
        leaves[stack.rsplit(";", 1)[-1]] += n
    print("\ntop leaf functions:")
    for leaf, n in leaves.most_common(15):
        print(f"{100.0 * n / total:5.1f}%  {leaf[:150]}")


if __name__ == "__main__":
    main()
