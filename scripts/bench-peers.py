#!/usr/bin/env python3
"""Sandglass against node_exporter and collectd on this machine, in one run.

Run by scripts/bench-peers.sh (which builds and installs what it needs).
All three run side by side on 127.0.0.1 for WINDOW seconds, one collection
cycle per second, with equivalent collector sets:

  node_exporter  cpu, meminfo, loadavg, netdev, filesystem; a cycle is one
                 scrape of /metrics by this script
  collectd       cpu, memory, load, interface, df; Interval 1; csv writer
  sandglass      cpu, memory, loadavg, network, filesystem plugins at 1 s
                 (lean collectors; filesystem is statvfs of each real mount
                 point, as node_exporter's), sent to a local receiver

CPU time is each daemon's own (sum of its threads' /proc/PID/task/*/schedstat,
nanoseconds; cross-checked against utime+stime), not the scraper's, the
receiver's or collectd's disk writes' consumers. Every process started is
stopped at the end, also on error or Ctrl-C.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
BIN = os.path.join(ROOT, "target", "release")
PLUGINS = os.path.join(ROOT, "target", "plugins")
SANDGLASS_SERVICES = ["cpu", "memory", "loadavg", "network", "filesystem"]
TICK = os.sysconf("SC_CLK_TCK")

started = []


def spawn(args, **kwargs):
    proc = subprocess.Popen(args, **kwargs)
    started.append(proc)
    return proc


def stop_all():
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ns(pid):
    """CPU time of all the process's threads, in ns."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass  # the thread just ended
    return total


def cpu_ticks_ns(pid):
    """utime + stime (includes ended threads; 1/TICK s resolution), in ns."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(what, check, timeout=60.0, step=0.002):
    """Poll `check` until it returns a value; seconds waited and the value."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = check()
        if value:
            return time.monotonic() - start, value
        time.sleep(step)
    raise SystemExit(f"bench-peers: {what} did not happen within {timeout:.0f} s")


def scrape(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return None


class Peer:
    """One daemon under test: its process and what was measured of it."""

    def __init__(self, name):
        self.name = name
        self.proc = None
        self.startup_ms = None
        self.rss_start = None
        self.rss_end = None
        self.cpu_start = None
        self.cycles = 0
        self.samples_per_cycle = None
        self.cpu_us_per_cycle = None
        self.note = ""

    def begin(self):
        self.cpu_start = (cpu_ns(self.proc.pid), cpu_ticks_ns(self.proc.pid))
        self.window_start = time.time()

    def end(self, cycles):
        pid = self.proc.pid
        fine = cpu_ns(pid) - self.cpu_start[0]
        coarse = cpu_ticks_ns(pid) - self.cpu_start[1]
        # Threads that ended during the window are missing from schedstat;
        # the tick count has them. Trust the fine count unless it is clearly short.
        used = fine if fine * 1.0 + 2 * 1e9 / TICK >= coarse else coarse
        self.cycles = cycles
        self.cpu_us_per_cycle = used / 1000 / cycles
        self.rss_end = rss_kib(pid)


def node_exporter(work):
    peer = Peer("node_exporter")
    port = free_port()
    t0 = time.monotonic()
    peer.proc = spawn(
        ["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{port}",
         "--collector.disable-defaults", "--collector.cpu", "--collector.meminfo",
         "--collector.loadavg", "--collector.netdev", "--collector.filesystem"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "node_exporter.log"), "w"))
    # Idle RSS: started, never scraped. Start-up: until a scrape answers.
    wait_for("node_exporter listening", lambda: port_open(port))
    peer.rss_start = rss_kib(peer.proc.pid)
    text = wait_for("a node_exporter scrape", lambda: scrape(port))[1]
    peer.startup_ms = (time.monotonic() - t0) * 1000
    peer.samples_per_cycle = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    peer.port = port
    return peer


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def collectd(work):
    peer = Peer("collectd")
    csv = os.path.join(work, "csv")
    conf = os.path.join(work, "collectd.conf")
    with open(conf, "w") as f:
        f.write(f"""Interval 1
BaseDir "{work}"
PIDFile "{work}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin load
LoadPlugin interface
LoadPlugin df
LoadPlugin csv
<Plugin csv>
  DataDir "{csv}"
  StoreRates false
</Plugin>
""")
    t0 = time.monotonic()
    peer.proc = spawn(["collectd", "-f", "-C", conf], stdout=subprocess.DEVNULL,
                      stderr=open(os.path.join(work, "collectd.log"), "w"))
    wait_for("collectd's first values", lambda: csv_values(csv, 0) > 0)
    peer.startup_ms = (time.monotonic() - t0) * 1000
    peer.rss_start = rss_kib(peer.proc.pid)
    peer.csv = csv
    return peer


def csv_values(csv, since, until=float("inf")):
    """Values collectd wrote with a timestamp in [since, until)."""
    count = 0
    for dirpath, _, files in os.walk(csv):
        for name in files:
            with open(os.path.join(dirpath, name)) as f:
                for line in f:
                    fields = line.strip().split(",")
                    try:
                        stamp = float(fields[0])
                    except ValueError:
                        continue  # the header
                    if since <= stamp < until:
                        count += len(fields) - 1
    return count


def sandglass(work):
    peer = Peer("sandglass")
    port = free_port()
    services = "".join(
        f'[services.{s}]\nplugin = "{s}"\ninterval = "1s"\n' for s in SANDGLASS_SERVICES)
    receiver_conf = os.path.join(work, "receiver.toml")
    with open(receiver_conf, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\ndatabase = "{work}/receiver.db"\n'
                f'plugin_dir = "{PLUGINS}"\n{services}'
                f'[hosts.bench]\ntoken = "bench-token-0123"\nservices = {json.dumps(SANDGLASS_SERVICES)}\n'
                f'liveness_service = "loadavg"\n')
    receiver_out = os.path.join(work, "receiver.out")
    spawn([f"{BIN}/receiver", "run", "--config", receiver_conf],
          stdout=open(receiver_out, "w"), stderr=open(os.path.join(work, "receiver.log"), "w"))
    wait_for("the receiver listening", lambda: "listening on" in open(receiver_out).read())
    agent_conf = os.path.join(work, "agent.toml")
    with open(agent_conf, "w") as f:
        f.write(f'host_id = "bench"\nreceiver = "127.0.0.1:{port}"\ntoken = "bench-token-0123"\n'
                # Default [connection]: a cycle's batch goes as soon as its
                # last report is in, so start-up to first data needs no tuning.
                f'plugin_dir = "{PLUGINS}"\nstate_dir = "{work}/agent-state"\n')
    os.chmod(agent_conf, 0o600)

    def start_agent(tag):
        log = os.path.join(work, f"agent-{tag}.log")
        t0 = time.monotonic()
        proc = spawn([f"{BIN}/agent", "run", "--config", agent_conf],
                     stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                     env={**os.environ, "SANDGLASS_LOG": "info"})
        line = wait_for(f"the agent's first stored reports ({tag})",
                        lambda: next((l for l in open(log) if "first reports stored" in l), None))[1]
        waited = (time.monotonic() - t0) * 1000
        own = float(line.split("receiver ")[1].split(" ms")[0])
        return proc, waited, own

    # Cold: nothing compiled yet. Then warm: what every later start costs.
    cold, peer.cold_ms, _ = start_agent("cold")
    cold.send_signal(signal.SIGTERM)
    cold.wait(timeout=30)
    peer.proc, peer.startup_ms, peer.own_startup_ms = start_agent("warm")
    peer.rss_start = rss_kib(peer.proc.pid)
    peer.receiver_conf = receiver_conf
    return peer


def sandglass_points(peer, since_s):
    """The values the receiver stored in the last `since_s` seconds (and a bit)."""
    out = subprocess.run([f"{BIN}/receiver", "query", "--config", peer.receiver_conf,
                          "--host", "bench", "--since", f"{int(since_s) + 5}s", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main():
    for tool in ("prometheus-node-exporter", "collectd"):
        if not shutil.which(tool):
            raise SystemExit(f"bench-peers: {tool} is missing; run scripts/bench-peers.sh")
    os.makedirs(os.path.join(ROOT, "target"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-peers-", dir=os.path.join(ROOT, "target"))
    try:
        peers = [node_exporter(work), collectd(work), sandglass(work)]
        ne, cd, sg = peers
        time.sleep(1.5)  # let every daemon settle into its cycle
        for p in peers:
            p.begin()
        start = time.time()
        scrapes = 0
        while time.time() - start < WINDOW:
            scrape(ne.port)
            scrapes += 1
            time.sleep(max(0.0, start + scrapes - time.time()))
        elapsed = time.time() - start
        for p in peers:
            p.end(scrapes if p is ne else elapsed)
        cd.samples_per_cycle = csv_values(cd.csv, cd.window_start, cd.window_start + elapsed) / elapsed
        points = sandglass_points(sg, elapsed)
        in_window = [p for p in points if sg.window_start <= p["time_ms"] / 1000 < sg.window_start + elapsed]
        sg.samples_per_cycle = len(in_window) / elapsed
    finally:
        stop_all()
    print_table(peers, elapsed)
    shutil.rmtree(work, ignore_errors=True)


def print_table(peers, elapsed):
    ne, cd, sg = peers
    print(f"\nbench-peers: {elapsed:.0f} s side by side, one collection cycle per second, on {os.cpu_count()} cores\n")
    header = f"{'':<15}{'CPU µs/cycle':>14}{'samples':>10}{'µs/sample':>11}{'RSS start':>12}{'RSS 1 min':>12}{'start-up':>11}"
    print(header)
    print("-" * len(header))
    for p in peers:
        print(f"{p.name:<15}{p.cpu_us_per_cycle:>14.0f}{p.samples_per_cycle:>10.0f}"
              f"{p.cpu_us_per_cycle / p.samples_per_cycle:>11.2f}"
              f"{p.rss_start / 1024:>9.1f} MiB{p.rss_end / 1024:>8.1f} MiB{p.startup_ms:>8.0f} ms")
    print(f"\nsandglass start-up: warm {sg.startup_ms:.0f} ms as seen from outside (the agent's own count from main: "
          f"{sg.own_startup_ms:.1f} ms), cold {sg.cold_ms:.0f} ms (compiling the plugins)")
    print("\nratios sandglass / peer (below 1: sandglass costs less)")
    print(f"{'':<15}{'CPU/cycle':>11}{'CPU/sample':>12}{'RSS 1 min':>11}{'start-up':>10}")
    for p in (ne, cd):
        print(f"{p.name:<15}{sg.cpu_us_per_cycle / p.cpu_us_per_cycle:>11.2f}"
              f"{(sg.cpu_us_per_cycle / sg.samples_per_cycle) / (p.cpu_us_per_cycle / p.samples_per_cycle):>12.2f}"
              f"{sg.rss_end / p.rss_end:>11.2f}{sg.startup_ms / p.startup_ms:>10.2f}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
