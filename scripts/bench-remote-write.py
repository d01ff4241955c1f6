#!/usr/bin/env python3
"""Remote-write throughput and catch-up, against a real VictoriaMetrics.

1. Fill: a real receiver and a real agent (cpu, loadavg, memory, network,
   uptime every second) run for FILL_SECS; the stored reports are then
   copied, shifted back in time, until the store holds REPORTS reports
   (SQL on the `reports` table: the bench's only knowledge of the layout).
2. Throughput, RUNS times: a fresh VictoriaMetrics, the receiver started on
   a copy of the store with `[[remote_write]]`, timed from its start until
   /metrics says nothing is pending; samples/s = samples sent / that time.
3. Outage: receiver + AGENTS agents reporting every second into
   VictoriaMetrics; VictoriaMetrics stopped OUTAGE_SECS and started again;
   timed from its restart until nothing is pending.

Every process it starts, it stops. Ports: 127.0.0.1, picked free.
"""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(ROOT, "target", "release")
PLUGINS = os.path.join(ROOT, "target", "plugins")
REPORTS = int(os.environ.get("REPORTS", "200000"))
FILL_SECS = int(os.environ.get("FILL_SECS", "15"))
RUNS = int(os.environ.get("RUNS", "2"))
AGENTS = int(os.environ.get("AGENTS", "4"))
OUTAGE_SECS = int(os.environ.get("OUTAGE_SECS", "60"))
SERVICES = ["cpu", "loadavg", "memory", "network", "uptime"]
started = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True)
    started.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def wait(what, check, limit=600):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def receiver_toml(dir, hosts, vm_port):
    text = 'database = "receiver.db"\n[http]\nlisten = "127.0.0.1:0"\n'
    if vm_port:
        text += (
            f'[[remote_write]]\nname = "vm"\nurl = "http://127.0.0.1:{vm_port}/api/v1/write"\n'
        )
    for s in SERVICES:
        text += f'[services.{s}]\nplugin = "{s}"\ninterval = "1s"\n'
    for h in hosts:
        text += f'[hosts.{h}]\ntoken = "token-{h}-bench"\nservices = {json.dumps(SERVICES)}\n'
    path = os.path.join(dir, "receiver.toml")
    open(path, "w").write(text)
    return path


def start_receiver(dir, hosts, vm_port):
    config = receiver_toml(dir, hosts, vm_port)
    p = start([f"{BIN}/receiver", "run", "--config", config, "--listen", "127.0.0.1:0"],
              os.path.join(dir, "receiver.log"))
    address = p.stdout.readline().strip().removeprefix("listening on ")
    http = p.stdout.readline().strip().removeprefix("http on ").rstrip("/")
    return p, address, http


def start_agent(dir, host, address):
    config = os.path.join(dir, f"{host}.toml")
    open(config, "w").write(
        f'host_id = "{host}"\nreceiver = ["{address}"]\ntoken = "token-{host}-bench"\n'
        f'plugin_dir = "{PLUGINS}"\nstate_dir = "{dir}/{host}-state"\n'
    )
    return start([f"{BIN}/agent", "run", "--config", config], os.path.join(dir, f"{host}.log"))


def start_vm(dir, port):
    p = start(["victoria-metrics", f"-httpListenAddr=127.0.0.1:{port}",
               f"-storageDataPath={dir}/vm-data", "-retentionPeriod=100y"],
              os.path.join(dir, "vm.log"))
    wait("VictoriaMetrics", lambda: get(f"http://127.0.0.1:{port}/health").strip() == "OK")
    return p


def metric(http, name):
    for line in get(f"{http}/metrics").splitlines():
        if line.startswith(name + '{endpoint="vm"} '):
            return float(line.split()[-1])
    raise OSError(f"no {name} yet")


def caught_up(http):
    return metric(http, "sandglass_remote_write_pending_reports") == 0 and \
        metric(http, "sandglass_remote_write_sent_samples_total") > 0


def fill(dir):
    receiver, address, _ = start_receiver(dir, ["a"], None)
    agent = start_agent(dir, "a", address)
    time.sleep(FILL_SECS)
    stop(agent)
    stop(receiver)
    db = sqlite3.connect(os.path.join(dir, "receiver.db"))
    have = db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    if have == 0:
        sys.exit("the agent stored no report: see " + dir)
    while have < REPORTS:
        # Shift the copies past everything stored: no series gets one
        # timestamp twice.
        low, high = db.execute("SELECT MIN(time_ms), MAX(time_ms) FROM reports").fetchone()
        shift = high - low + 1000
        db.execute(
            "INSERT INTO reports (service_id, time_ms, received_ms, seq, level, text, layout_id, samples) "
            "SELECT service_id, time_ms - ?1, received_ms - ?1, seq, level, text, layout_id, samples "
            "FROM reports WHERE rowid <= ?2 ORDER BY rowid",
            (shift, min(have, REPORTS - have)),
        )
        db.commit()
        have = db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    db.close()
    return have


def throughput(filled, run):
    dir = tempfile.mkdtemp(prefix=f"sg-rw-run{run}-")
    shutil.copy(os.path.join(filled, "receiver.db"), dir)
    vm_port = free_port()
    vm = start_vm(dir, vm_port)
    t0 = time.monotonic()
    receiver, _, http = start_receiver(dir, ["a"], vm_port)
    wait("catch-up", lambda: caught_up(http))
    elapsed = time.monotonic() - t0
    samples = metric(http, "sandglass_remote_write_sent_samples_total")
    stop(receiver)
    stop(vm)
    shutil.rmtree(dir)
    return samples, elapsed


def outage():
    dir = tempfile.mkdtemp(prefix="sg-rw-outage-")
    vm_port = free_port()
    vm = start_vm(dir, vm_port)
    hosts = [f"h{i}" for i in range(AGENTS)]
    receiver, address, http = start_receiver(dir, hosts, vm_port)
    agents = [start_agent(dir, h, address) for h in hosts]
    wait("first samples", lambda: caught_up(http))
    time.sleep(5)
    stop(vm)
    time.sleep(OUTAGE_SECS)
    pending = metric(http, "sandglass_remote_write_pending_reports")
    t0 = time.monotonic()
    vm = start_vm(dir, vm_port)
    wait("catch-up", lambda: metric(http, "sandglass_remote_write_pending_reports") == 0)
    elapsed = time.monotonic() - t0
    for p in agents + [receiver, vm]:
        stop(p)
    shutil.rmtree(dir)
    return pending, elapsed


def main():
    filled = tempfile.mkdtemp(prefix="sg-rw-fill-")
    try:
        reports = fill(filled)
        print(f"store: {reports} reports ({', '.join(SERVICES)} of one real agent, copied back in time)")
        rates = []
        for run in range(1, RUNS + 1):
            samples, elapsed = throughput(filled, run)
            rates.append(samples / elapsed)
            print(f"run {run}: {samples:.0f} samples to VictoriaMetrics in {elapsed:.2f} s "
                  f"= {samples / elapsed:,.0f} samples/s")
        print(f"remote-write throughput: {min(rates):,.0f} - {max(rates):,.0f} samples/s")
        if OUTAGE_SECS > 0:
            pending, elapsed = outage()
            print(f"outage: {AGENTS} agents x {len(SERVICES)} services/s, VictoriaMetrics down "
                  f"{OUTAGE_SECS} s, {pending:.0f} reports pending; caught up {elapsed:.2f} s "
                  "after its restart (including its start-up)")
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(filled, ignore_errors=True)


main()
