#!/usr/bin/env python3
"""Receiver memory under half-sent handshakes (issue: rounds of ~1,000
connections each holding a half-sent 64 KiB handshake frame raised RSS in
steps that never came back).

Starts `receiver run` on 127.0.0.1, then ROUNDS times: opens CONNS
connections, each sending the preamble and the first 60 KiB of a frame that
claims 64 KiB - 1 (the handshake limit), holds them until the receiver has
buffered them, closes them all, waits, and prints the receiver's RSS.
A leak grows every round; allocator retention stops growing after the
first rounds (freed memory kept by malloc for reuse).

    python3 scripts/handshake-memory.py RECEIVER_BIN [ROUNDS] [CONNS]
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """database = "db.sqlite"
max_connections = 5000
max_handshakes = 1000
handshake_timeout = "30s"
[services.uptime]
plugin = "uptime"
interval = "1s"
[hosts.a]
token = "0123456789abcdef"
services = ["uptime"]
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    conns = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "receiver.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        receiver = subprocess.Popen(
            [binary, "run", "--config", config, "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            address = receiver.stdout.readline().strip().removeprefix("listening on ")
            host, port = address.rsplit(":", 1)
            time.sleep(0.5)
            print(f"start: RSS {rss_kib(receiver.pid)} KiB")
            frame = b"SGLS\x00\x01\x00\x00" + (64 * 1024 - 1).to_bytes(4, "big") + b"\x00" * (60 * 1024)
            for r in range(1, rounds + 1):
                socks = []
                for _ in range(conns):
                    s = socket.create_connection((host, int(port)))
                    s.sendall(frame)
                    socks.append(s)
                time.sleep(2)
                held = rss_kib(receiver.pid)
                for s in socks:
                    s.close()
                # Longer than the receiver's 5 s housekeeping tick.
                time.sleep(7)
                print(f"round {r}: {conns} half-sent handshakes held: RSS {held} KiB; after closing: {rss_kib(receiver.pid)} KiB")
        finally:
            receiver.terminate()
            receiver.wait()


if __name__ == "__main__":
    main()
