#!/usr/bin/env python3
"""What a process's resident pages are, from /proc/PID/smaps, by category.

    python3 scripts/agent-rss.py PID BINARY PLUGIN_CACHE_DIR [--detail] [--referenced]

--referenced sums the pages accessed since `echo 1 > /proc/PID/clear_refs`
instead of the resident ones: what the process really touched meanwhile.

Categories (KiB of Rss; Pss for the file-backed ones is about the same:
nothing else maps them):
  binary text      the executable's r-x mapping (code)
  binary data      its other mappings (read-only data, unwind tables, .data)
  plugin code      mappings of files under PLUGIN_CACHE_DIR (compiled plugins)
  shared libs      other file-backed mappings (libc, ld.so, libgcc, ...)
  pool             wasmtime's instance pool: anonymous reservations of 128
                   MiB or more (memories, tables, instances) and the slots
                   of linear memory made accessible between their guards
  malloc arenas    glibc's thread arenas: an anonymous mapping whose
                   read-write part and PROT_NONE rest make 64 MiB
  heap             [heap], the main arena (brk)
  thread stacks    [stack] and anonymous read-write mappings right above a
                   one-page PROT_NONE guard
  other anon       the rest (large malloc blocks are mmapped: > 128 KiB)
"""
import os
import sys

ARENA = 64 << 10  # KiB: glibc's HEAP_MAX_SIZE on 64-bit
POOL = 128 << 10  # KiB


def mappings(pid, field):
    """(start, end, perms, path, KiB of `field`) per mapping."""
    out = []
    with open(f"/proc/{pid}/smaps") as f:
        current = None
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                start, end = (int(x, 16) for x in head[0].split("-"))
                path = head[5].strip() if len(head) > 5 else ""
                current = [start, end, head[1], path, 0]
                out.append(current)
            elif head[0] == field + ":":
                current[4] = int(head[1])
    return out


def beside_pool_guard(maps, i):
    """An anonymous mapping next to a PROT_NONE one of 128 MiB or more: the
    accessible part of a pool slot (a linear memory between its guards)."""
    for j in (i - 1, i + 1):
        if 0 <= j < len(maps):
            start, end, perms, path = maps[j][:4]
            touching = end == maps[i][0] or start == maps[i][1]
            if touching and perms.startswith("---") and not path and (end - start) >> 10 >= POOL:
                return True
    return False


def classify(maps, binary, cache):
    binary = os.path.realpath(binary)
    cache = os.path.realpath(cache)
    totals = {}
    detail = []
    for i, (start, end, perms, path, rss) in enumerate(maps):
        size = (end - start) >> 10
        if path == binary:
            cat = "binary text" if "x" in perms else "binary data"
        elif path.startswith(cache + "/"):
            cat = "plugin code"
        elif path.startswith("/"):
            cat = "shared libs"
        elif path == "[heap]":
            cat = "heap"
        elif path == "[stack]":
            cat = "thread stacks"
        elif path.startswith("["):
            cat = "kernel ([vdso], [vvar])"
        elif size >= POOL or beside_pool_guard(maps, i):
            cat = "pool"
        else:
            prev = maps[i - 1] if i > 0 else None
            nxt = maps[i + 1] if i + 1 < len(maps) else None
            if (
                nxt
                and nxt[0] == end
                and nxt[2].startswith("---")
                and not nxt[3]
                and (nxt[1] - start) >> 10 == ARENA
            ) or (size == ARENA and "rw" in perms):
                cat = "malloc arenas"
            elif (
                prev
                and prev[1] == start
                and prev[2].startswith("---")
                and (prev[1] - prev[0]) >> 10 <= 64
            ):
                cat = "thread stacks"
            else:
                cat = "other anon"
        totals[cat] = totals.get(cat, 0) + rss
        if rss:
            detail.append((rss, cat, size, perms, path))
    return totals, detail


def main():
    pid, binary, cache = sys.argv[1:4]
    maps = mappings(pid, "Referenced" if "--referenced" in sys.argv else "Rss")
    totals, detail = classify(maps, binary, cache)
    total = sum(totals.values())
    print(f"    {'total':<24}{total:>8} KiB")
    for cat, kib in sorted(totals.items(), key=lambda t: -t[1]):
        if kib:
            print(f"    {cat:<24}{kib:>8} KiB")
    if "--detail" in sys.argv:
        for rss, cat, size, perms, path in sorted(detail, reverse=True):
            print(f"      {rss:>7} of {size:>10} KiB {perms} {cat:<16} {path}")


if __name__ == "__main__":
    main()
