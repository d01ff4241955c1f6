#!/usr/bin/env python3
"""The fault matrix: real `receiver` and `agent` processes on 127.0.0.1, one
fault per case, counted end to end. Entry point: `bash scripts/faults.sh`.

What runs
  One host `f` whose only service, `counter`, runs the fixture `misbehave`
  in mode `counted` every 100 ms. Each run takes its run number N from the
  plugin state the agent keeps (N = previous + 1), reports sample `runs` = N
  with status text `counted run N at T` (T: the run's start, µs, on the
  plugin's clock), and writes the same line to the agent's log through the
  SDK's log import. Every agent process logs to a file of its own
  (agent-1.log, agent-2.log, ...), outside the agent's state_dir, so the log
  survives a full state disk and tells which process made which run.

Cases (durations: full / --short)
  kill        kill -9 of the receiver, then of the agent, alternating, random
              0.2-1.5 s apart: 10 / 3 rounds.
  hung2       SIGSTOP of the primary receiver for 40 / 25 s, then SIGCONT; a
              standby second in the agent's list (failback 5 s).
  hung1       the same with one receiver.
  rdisk       the receiver's database on a 2 MiB tmpfs, filled with a filler
              file for 40 / 15 s, then freed.
  adisk       the agent's state_dir on a 16 MiB tmpfs, filled for 20 / 8 s.
  spool-cut   [spool] max_size 256 KiB (16 KiB segments), 400-byte reports;
              receiver killed, agent killed 12 / 8 s later (3+ segments
              pending), 7 bytes cut from the end of the active segment, both
              restarted, drained.
  spool-flip  the same, one byte flipped in the middle of the active segment.
  spool-old   the same, one byte flipped in the middle of the segment before.
  spool-acked (beyond the issue's list) the receiver stays up; the agent is
              killed and the last 2,000 bytes of its active segment, entries
              the receiver already acknowledged, are cut (what a power cut
              does to unsynced writes); the agent restarts.
  failover    two receivers, the primary killed for 10 / 5 s, then restarted
              (failback 1 s).
  clock       libfaketime on the agent only (CLOCK_REALTIME; monotonic clocks
              untouched): 12 s after start its clock steps 1 h back; 30 / 15 s
              more. Notes: max |report time - arrival| after the step, and the
              host's status polled every 0.5 s.

What is counted
  run        one execution of the plugin: one `counted run N at T` line in an
             agent log. (N, T) names it; T tells apart runs that share N.
  produced   the runs the agent owed to the receiver. The agent keeps a run's
             state only once its report is in the spool, so a run whose report
             never reached the spool repeats its N:
             - inside one agent process, a repeated N is a run the living
               agent failed to spool (a full disk): it IS produced, and it must
               be stored or counted by a gap;
             - a run of an agent process killed with SIGKILL whose N the next
               agent process makes again (N >= the next process's first N) and
               that is not stored was in memory when the process died; the
               next process redoes it (at least once, by design). It counts
               once, by the run that redoes it, and is shown as `redone=K`.
             Every other logged run is produced.
  stored     produced runs whose (N, T) is in a receiver's database (table
             `reports` read with python's sqlite3, every receiver of the case,
             the whole window).
  dup        rows beyond the first of the same (N, T), over all receivers of
             the case: a run stored twice. A run stored by two receivers
             counts too (the row says so and whether both hold it under the
             same spool number: a primary killed between its commit and its
             acknowledgement leaves the agent no way to know, and the standby
             stores it again).
  gap        `lost.reports` of host f in `receiver status --json`, summed over
             the case's receivers: reports the agent said it dropped.
  lost       produced - stored - gap, at least 0: neither stored nor counted
             by a gap. If the gaps count more than is missing, the row says
             `gaps over-count by K`.
  RSS        VmRSS of the agent after warm-up and at the end, before it is
             stopped: the same process unless the row says otherwise (`*`).
             A first agent process compiles the plugin and holds ~30 MiB; a
             restarted one loads it from the cache and holds ~13 MiB.
  notes      what else the case saw: report times stored > 2 s off the run's
             start (the plugin's clock), UNREACHABLE transitions in the
             receiver logs, failover, catch-up, clock-step figures.

Each case ends by waiting until the agent has caught up (the newest run
logged 1.5 s earlier is stored), measuring RSS, stopping the agent with
SIGTERM (which flushes), then stopping the receivers and counting. A case
cleans up every process it started and every tmpfs it mounted.

Exit status: 1 if any row has lost > 0 or dup > 0, 2 on a harness error.
"""

import argparse
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "target/release/agent"
RECEIVER = ROOT / "target/release/receiver"
FIXTURE = ROOT / "target/fixtures/misbehave.wasm"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TOKEN = "fault-token-0123"
HOST = "f"
RUN = re.compile(r"counted run (\d+) at (\d+)")

# Durations (seconds) and rounds: full, and --short for CI.
FULL = dict(kill_rounds=10, hang=40, rdisk_full=40, adisk_full=20,
            spool_away=12, failover_down=10, clock_after=30)
SHORT = dict(kill_rounds=3, hang=25, rdisk_full=15, adisk_full=8,
             spool_away=8, failover_down=5, clock_after=15)

# Everything started, so that it can be ended whatever happens.
PROCESSES = []   # subprocess.Popen
MOUNTS = []      # Path


def log(text):
    print(text, file=sys.stderr, flush=True)


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


def rss_kib(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def end_process(proc, sig=signal.SIGTERM, wait=15):
    """Signal our own child `proc` and wait for it (SIGKILL after `wait` s)."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)   # a stopped process cannot exit
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    if proc in PROCESSES:
        PROCESSES.remove(proc)
    return proc.returncode


def mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", str(path)],
                   check=True)
    MOUNTS.append(path)


def unmount(path):
    if subprocess.run(["umount", str(path)], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", str(path)])
    MOUNTS.remove(path)


def fill(directory):
    """Write a filler file until the filesystem is full; returns its path."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    return filler


def cleanup():
    for proc in list(PROCESSES):
        end_process(proc, signal.SIGKILL, wait=5)
    for path in list(MOUNTS):
        unmount(path)


def model(pad):
    return """
[services.counter]
plugin = "misbehave"
interval = "100ms"
params = {{ mode = "counted", pad = {pad} }}

[hosts.{host}]
token = "{token}"
services = ["counter"]
liveness_service = "counter"
""".format(pad=pad, host=HOST, token=TOKEN)


class Receiver:
    """`receiver run` with its own directory; restarts keep the address."""

    def __init__(self, directory, database=None, pad=0):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.database = Path(database or self.dir / "receiver.db")
        self.config = self.dir / "receiver.toml"
        self.config.write_text(
            'database = "%s"\nlate_tolerance = "2s"\nschedule_refresh = "60s"\n%s'
            % (self.database, model(pad)))
        self.address = None
        self.proc = None

    def start(self):
        stderr = open(self.dir / "receiver.log", "ab")
        listen = self.address or "127.0.0.1:0"
        for attempt in range(50):
            self.proc = subprocess.Popen(
                [str(RECEIVER), "run", "--config", str(self.config), "--listen", listen],
                stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
            PROCESSES.append(self.proc)
            line = self.proc.stdout.readline().decode()
            self.proc.stdout.close()
            if line.startswith("listening on "):
                self.address = line.split()[-1]
                return self
            end_process(self.proc, signal.SIGKILL)
            time.sleep(0.2)  # the address may still be held for a moment
        raise RuntimeError("receiver did not start; see %s" % (self.dir / "receiver.log"))

    def kill9(self):
        end_process(self.proc, signal.SIGKILL)

    def stop(self):
        end_process(self.proc)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def status(self):
        out = subprocess.run([str(RECEIVER), "status", "--config", str(self.config), "--json"],
                             capture_output=True, timeout=30)
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def host(self):
        for h in self.status() or []:
            if h.get("name") == HOST:
                return h
        return {}

    def lost(self):
        return int((self.host().get("lost") or {}).get("reports") or 0)

    def rows(self):
        """(N, T, time_ms, received_ms, seq) of every stored report of the
        counter, and how many other reports (not a counted run) are stored."""
        if not self.database.exists():
            return [], 0
        try:
            db = sqlite3.connect("file:%s?mode=ro" % self.database, uri=True, timeout=10)
            found = db.execute(
                "SELECT r.text, r.time_ms, r.received_ms, r.seq FROM reports r "
                "JOIN services s ON s.id = r.service_id "
                "WHERE s.host = ? AND s.name = 'counter'", (HOST,)).fetchall()
            db.close()
        except sqlite3.Error as e:
            log("  (cannot read %s: %s)" % (self.database, e))
            return [], 0
        rows, other = [], 0
        for text, time_ms, received_ms, seq in found:
            m = RUN.search(text)
            if m:
                rows.append((int(m.group(1)), int(m.group(2)), time_ms, received_ms, seq))
            else:
                other += 1
        return rows, other

    def log_text(self):
        return (self.dir / "receiver.log").read_text(errors="replace")


class Agent:
    """`agent run` of host f; every process it starts logs to its own file."""

    def __init__(self, directory, receivers, extra="", state_dir=None, env=None):
        self.dir = directory
        self.state_dir = Path(state_dir or directory / "f-state")
        self.config = directory / "f.toml"
        plugins = directory / "plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "misbehave.wasm").write_bytes(FIXTURE.read_bytes())
        self.config.write_text(
            'host_id = "%s"\nreceiver = %s\ntoken = "%s"\nplugin_dir = "%s"\nstate_dir = "%s"\n'
            '[connection]\nreconnect_min = "100ms"\nreconnect_max = "500ms"\nbatch_delay = "50ms"\n%s'
            % (HOST, json.dumps([r.address for r in receivers]), TOKEN, plugins,
               self.state_dir, extra))
        os.chmod(self.config, 0o600)
        self.env = dict(os.environ, **(env or {}))
        self.env["SANDGLASS_LOG"] = "info"   # the plugin's run lines are info
        self.procs = []   # [Popen, log path, how it ended]
        self.proc = None

    def start(self):
        logfile = self.dir / ("agent-%d.log" % (len(self.procs) + 1))
        self.proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(logfile, "ab"),
            stdin=subprocess.DEVNULL, env=self.env)
        PROCESSES.append(self.proc)
        self.procs.append([self.proc, logfile, None])
        return self

    def rss(self):
        return rss_kib(self.proc.pid)

    def kill9(self):
        end_process(self.proc, signal.SIGKILL)
        self.procs[-1][2] = "kill"

    def stop(self):
        code = end_process(self.proc, signal.SIGTERM, wait=20)
        self.procs[-1][2] = "term"
        return code

    def runs(self):
        """Per process: its runs (N, T) in order."""
        out = []
        for _, logfile, _ in self.procs:
            seen, runs = set(), []
            for line in logfile.read_text(errors="replace").splitlines():
                m = RUN.search(line)
                if m:
                    run = (int(m.group(1)), int(m.group(2)))
                    if run not in seen:
                        seen.add(run)
                        runs.append(run)
            out.append(runs)
        return out

    def log_text(self):
        return "".join(p[1].read_text(errors="replace") for p in self.procs)


def stored_ids(receivers):
    ids = set()
    for r in receivers:
        ids.update((n, t) for n, t, *_ in r.rows()[0])
    return ids


def wait_stored(agent, receivers, count, limit=60):
    """Until `count` runs of the current agent process are stored."""
    end = time.time() + limit
    while time.time() < end:
        if len(set(agent.runs()[-1]) & stored_ids(receivers)) >= count:
            return True
        time.sleep(0.3)
    return False


def wait_caught_up(agent, receivers, limit=90):
    """Until the newest run logged 1.5 s ago is stored: the agent sends its
    spool oldest first, so everything before it went too. Returns seconds
    waited, or None if it never caught up within `limit`."""
    start = time.time()
    while time.time() - start < limit:
        runs = agent.runs()[-1]
        if runs:
            newest = runs[-1]
            time.sleep(1.5)
            if newest in stored_ids(receivers):
                return time.time() - start
        else:
            time.sleep(0.5)
    return None


class Row:
    def __init__(self, case):
        self.case = case
        self.produced = self.stored = self.lost = self.dup = self.gap = 0
        self.rss = (0, 0)
        self.same_process = True
        self.secs = 0.0
        self.notes = []
        self.error = None
        self.own_clock = False   # the case moves the agent's clock

    def bad(self):
        return self.error is not None or self.lost > 0 or self.dup > 0

    def line(self):
        if self.error:
            return "%-11s ERROR %s" % (self.case, self.error)
        rss = "%d->%d%s" % (self.rss[0], self.rss[1], "" if self.same_process else "*")
        return "%-11s %8d %7d %5d %4d %5d %14s %5.0f  %s" % (
            self.case, self.produced, self.stored, self.lost, self.dup, self.gap, rss,
            self.secs, "; ".join(self.notes))


HEADER = "%-11s %8s %7s %5s %4s %5s %14s %5s  %s" % (
    "case", "produced", "stored", "lost", "dup", "gap", "agent RSS KiB", "secs", "notes")


def tally(row, agent, receivers):
    """Fill the counts of `row` from the agent's logs and the receivers'
    databases and status (see the header)."""
    per_process = agent.runs()
    rows, other, where, shifted = [], 0, {}, []
    for i, r in enumerate(receivers):
        found, o = r.rows()
        rows += [(n, t) for n, t, *_ in found]
        other += o
        for n, t, time_ms, _, seq in found:
            where.setdefault((n, t), []).append((i, seq))
            # The stored report time against the run's start on the plugin's
            # clock (the agent's clock: equal unless the case moves it).
            if abs(time_ms - t // 1000) > 2000:
                shifted.append(abs(time_ms - t // 1000))
    stored = set(rows)
    produced, redone = [], 0
    for i, runs in enumerate(per_process):
        killed = agent.procs[i][2] == "kill"
        following = per_process[i + 1] if i + 1 < len(per_process) else []
        next_first = following[0][0] if following else None
        for n, t in runs:
            if (killed and next_first is not None and n >= next_first
                    and (n, t) not in stored):
                redone += 1
            else:
                produced.append((n, t))
    produced_ids = set(produced)
    row.produced = len(produced)
    row.stored = len(produced_ids & stored)
    row.dup = len(rows) - len(stored)
    across = [w for w in where.values() if len(set(i for i, _ in w)) > 1]
    if across:
        same = all(len(set(seq for _, seq in w)) == 1 for w in across)
        row.notes.append("%d run(s) stored on two receivers%s" % (
            len(across), " with the same spool number" if same else ""))
    if shifted and not row.own_clock:
        row.notes.append("%d rows stored with a time > 2 s off the run's start (max %.1f s)"
                         % (len(shifted), max(shifted) / 1000))
    row.gap = sum(r.lost() for r in receivers)
    missing = row.produced - row.stored
    row.lost = max(0, missing - row.gap)
    if row.gap > missing:
        row.notes.append("gaps over-count by %d" % (row.gap - missing))
    if redone:
        row.notes.append("redone=%d" % redone)
    strangers = len(stored - produced_ids)
    if strangers:
        row.notes.append("%d stored runs not in the agent logs" % strangers)
    if other:
        row.notes.append("%d other reports stored" % other)
    if len(per_process) > 1:
        row.notes.append("%d agent processes" % len(per_process))
    flips = ["%s x%d" % (r.dir.name, r.log_text().count("-> UNREACHABLE")) for r in receivers
             if "-> UNREACHABLE" in r.log_text()]
    if flips:
        row.notes.append("host went UNREACHABLE (receiver logs): " + ", ".join(flips))
    left = re.findall(r"stopping with (\d+) entries", agent.procs[-1][1].read_text(errors="replace"))
    if left:
        row.notes.append("%s entries left in the spool at the final stop" % left[-1])
    return row


def finish(row, agent, receivers, limit=90):
    """Common end of a case: catch up, RSS, stop everything, count."""
    waited = wait_caught_up(agent, receivers, limit)
    if waited is None:
        row.notes.append("NOT caught up after %d s" % limit)
    row.rss = (row.rss[0], agent.rss())
    agent.stop()
    for r in receivers:
        r.stop()
    return tally(row, agent, receivers)


# ---------------------------------------------------------------- the cases

def case_kill(d, o, row):
    """kill -9 of the receiver and of the agent, alternating, N rounds."""
    rounds = o["kill_rounds"]
    rec = Receiver(d / "r").start()
    agent = Agent(d, [rec]).start()
    assert wait_stored(agent, [rec], 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    for _ in range(rounds):
        time.sleep(random.uniform(0.5, 1.5))
        rec.kill9()
        time.sleep(random.uniform(0.2, 1.0))
        rec.start()
        time.sleep(random.uniform(0.5, 1.5))
        agent.kill9()
        agent.start()
    time.sleep(2)
    row.same_process = False
    row.notes.append("%d rounds; RSS of the first and the last agent process" % rounds)
    return finish(row, agent, [rec])


def hung(d, o, row, two):
    """SIGSTOP of the (first) receiver for `hang` s, then SIGCONT."""
    first = Receiver(d / "r1").start()
    receivers = [first]
    extra = ""
    if two:
        receivers.append(Receiver(d / "r2").start())
        extra = 'failback = "5s"\n'
    agent = Agent(d, receivers, extra).start()
    assert wait_stored(agent, [first], 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    time.sleep(2)
    stopped = time.time()
    first.pause()
    time.sleep(o["hang"])
    first.resume()
    resumed = time.time()
    row.notes.append("SIGSTOP %d s" % o["hang"])
    if two:
        on_second = [rec for _, _, _, rec, _ in receivers[1].rows()[0]]
        if on_second:
            row.notes.append("failover after %.1f s" % (min(on_second) / 1000 - stopped))
        else:
            row.notes.append("NO failover during the hang")
    time.sleep(5)
    result = finish(row, agent, receivers)
    noticed = re.search(r"^(\S+)Z .*nothing heard from the receiver", agent.log_text(), re.M)
    if noticed:
        at = time.mktime(time.strptime(noticed.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        result.notes.append("agent noticed the silence after %.0f s" % (at - stopped))
    else:
        result.notes.append("agent never noticed the silence")
    if not two:
        after = sorted(rec for _, _, _, rec, _ in first.rows()[0] if rec / 1000 > resumed)
        if after:
            result.notes.append("delivery resumed %.1f s after SIGCONT" % (after[0] / 1000 - resumed))
    else:
        result.notes.append("rows r1/r2 %d/%d; moved back after SIGCONT: %s" % (
            len(first.rows()[0]), len(receivers[1].rows()[0]),
            "yes" if "moving back" in agent.log_text() else "no"))
    return result


def case_hung2(d, o, row):
    """Hung primary receiver, a standby in the agent's list."""
    return hung(d, o, row, two=True)


def case_hung1(d, o, row):
    """Hung receiver, the only one."""
    return hung(d, o, row, two=False)


def full_disk_for(disk, agent, receivers, secs, row):
    """Let runs flow, fill `disk` for `secs`, free it, and count."""
    assert wait_stored(agent, receivers, 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    time.sleep(2)
    filler = fill(disk)
    time.sleep(secs)
    filler.unlink()
    row.notes.append("full %d s" % secs)
    return finish(row, agent, receivers)


def case_rdisk(d, o, row):
    """The receiver's database on a 2 MiB tmpfs, filled, freed after a while."""
    disk = d / "rdisk"
    mount_tmpfs(disk, "2m")
    try:
        rec = Receiver(d / "r", database=disk / "receiver.db").start()
        agent = Agent(d, [rec]).start()
        result = full_disk_for(disk, agent, [rec], o["rdisk_full"], row)
        failed = rec.log_text().count("store write failed")
        used = sum(f.stat().st_size for f in disk.glob("receiver.db*"))
        result.notes.append("%d failed store writes logged; database+WAL %d KiB at the end"
                            % (failed, used // 1024))
        return result
    finally:
        for p in list(PROCESSES):
            end_process(p, signal.SIGKILL)
        unmount(disk)


def case_adisk(d, o, row):
    """The agent's state_dir on a 16 MiB tmpfs, filled, freed after a while."""
    disk = d / "adisk"
    mount_tmpfs(disk, "16m")
    try:
        rec = Receiver(d / "r").start()
        agent = Agent(d, [rec], state_dir=disk).start()
        result = full_disk_for(disk, agent, [rec], o["adisk_full"], row)
        errors = agent.log_text().count("this report is lost")
        result.notes.append("%d 'report is lost' log lines" % errors)
        return result
    finally:
        for p in list(PROCESSES):
            end_process(p, signal.SIGKILL)
        unmount(disk)


def damaged(d, o, row, how):
    """Receiver away, agent killed with entries pending, the spool damaged
    (`how`), both restarted, drained. 256 KiB spool: 16 KiB segments.
    `acked`: the receiver stays, and the tail cut from the active segment
    holds entries it already stored (what a power cut does to unsynced
    writes)."""
    rec = Receiver(d / "r", pad=300).start()
    agent = Agent(d, [rec], '[spool]\nmax_size = "256KiB"\n').start()
    assert wait_stored(agent, [rec], 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    time.sleep(2)
    spool = agent.state_dir / "spool"
    segments = lambda: sorted(spool.glob("*.spool"))
    if how == "acked":
        end = time.time() + 30
        while time.time() < end and segments()[-1].stat().st_size < 8192:
            time.sleep(0.2)
        agent.kill9()
        target = segments()[-1]
        cut = min(2000, target.stat().st_size // 2)
        os.truncate(target, target.stat().st_size - cut)
        row.notes.append("receiver up; %d bytes (acknowledged entries) cut from the active "
                         "segment" % cut)
        agent.start()
        wait_stored(agent, [rec], 5)
        row.rss = (agent.rss(), 0)
        row.notes.append("RSS of the restarted agent")
        result = finish(row, agent, [rec])
        warn = re.findall(r"kept=(\d+)", agent.log_text())
        if warn:
            result.notes.append("agent log kept=%s" % ",".join(warn))
        return result
    rec.kill9()
    end = time.time() + 60
    time.sleep(o["spool_away"])
    while len(segments()) < 3 and time.time() < end:
        time.sleep(0.5)
    agent.kill9()
    segs = segments()
    row.notes.append("%d segments" % len(segs))
    if how == "cut":
        target = segs[-1]
        os.truncate(target, target.stat().st_size - 7)
        row.notes.append("7 bytes cut from the active segment")
    else:
        target = segs[-1] if how == "flip" else segs[-2]
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x5A
        target.write_bytes(bytes(data))
        row.notes.append("byte %d of %d flipped in the %s segment" % (
            len(data) // 2, len(data), "active" if how == "flip" else "older"))
    rec.start()
    agent.start()
    # RSS of the restarted process, which recovers the damaged spool.
    wait_stored(agent, [rec], 5)
    row.rss = (agent.rss(), 0)
    row.notes.append("RSS of the restarted agent")
    result = finish(row, agent, [rec])
    warn = re.findall(r"kept=(\d+)", agent.log_text())
    if warn:
        result.notes.append("agent log kept=%s" % ",".join(warn))
    return result


def case_spool_cut(d, o, row):
    """Damaged spool: a few bytes cut from the end of the active segment."""
    return damaged(d, o, row, "cut")


def case_spool_flip(d, o, row):
    """Damaged spool: one byte flipped in the middle of the active segment."""
    return damaged(d, o, row, "flip")


def case_spool_old(d, o, row):
    """Damaged spool: one byte flipped in the middle of an older segment."""
    return damaged(d, o, row, "old")


def case_spool_acked(d, o, row):
    """Damaged spool: the tail of the active segment, already acknowledged,
    lost (a power cut), the receiver up all along."""
    return damaged(d, o, row, "acked")


def case_failover(d, o, row):
    """Primary killed: the agent goes to the standby; primary restarted: the
    agent goes back (failback 1 s)."""
    first = Receiver(d / "r1").start()
    second = Receiver(d / "r2").start()
    agent = Agent(d, [first, second], 'failback = "1s"\n').start()
    assert wait_stored(agent, [first], 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    time.sleep(2)
    first.kill9()
    time.sleep(o["failover_down"])
    first.start()
    time.sleep(o["failover_down"])
    result = finish(row, agent, [first, second])
    result.notes.append("primary down %d s; rows r1/r2 %d/%d; moved back: %s" % (
        o["failover_down"], len(first.rows()[0]), len(second.rows()[0]),
        "yes" if "moving back" in agent.log_text() else "NO"))
    return result


def case_clock(d, o, row):
    """The agent's clock steps 1 h back while connected (libfaketime on the
    agent only, monotonic clocks left alone)."""
    if not os.path.exists(FAKETIME_LIB):
        raise RuntimeError("libfaketime missing: apt-get install faketime")
    row.own_clock = True
    offset = d / "faketime"
    offset.write_text("+0\n")
    rec = Receiver(d / "r").start()
    agent = Agent(d, [rec], env={
        "LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}).start()
    assert wait_stored(agent, [rec], 5), "no runs stored"
    row.rss = (agent.rss(), 0)
    time.sleep(12)   # at least one Ping/Pong before the step
    offset.write_text("-3600\n")
    step = time.time()
    seen = {}
    while time.time() - step < o["clock_after"]:
        status = rec.host().get("status", "?")
        seen[status] = seen.get(status, 0) + 1
        time.sleep(0.5)
    result = finish(row, agent, [rec])
    rows = rec.rows()[0]
    after = [abs(t - r) for _, _, t, r, _ in rows if r / 1000 >= step]
    late = [abs(t - r) for _, _, t, r, _ in rows if r / 1000 >= step + 11]
    skewed = sum(1 for x in after if x > 1000)
    result.notes.append("step -1 h; max |time-arrival| after step %.1f s (%d of %d rows > 1 s), "
                        "from step+11 s %.1f s" % (max(after or [0]) / 1000, skewed, len(after),
                                                   max(late or [0]) / 1000))
    result.notes.append("status after step: %s" % ", ".join(
        "%s x%d" % kv for kv in sorted(seen.items())))
    if seen.get("UNREACHABLE"):
        result.notes.append("shown UNREACHABLE while delivering")
    return result


CASES = [
    ("kill", case_kill),
    ("hung2", case_hung2),
    ("hung1", case_hung1),
    ("rdisk", case_rdisk),
    ("adisk", case_adisk),
    ("spool-cut", case_spool_cut),
    ("spool-flip", case_spool_flip),
    ("spool-old", case_spool_old),
    ("spool-acked", case_spool_acked),
    ("failover", case_failover),
    ("clock", case_clock),
]


def main():
    names = [n for n, _ in CASES]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(names),
                   help="comma-separated, from: " + ",".join(names))
    p.add_argument("--short", action="store_true", help="shorter durations (CI)")
    p.add_argument("--keep", action="store_true", help="keep the case directories")
    args = p.parse_args()
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        p.error("unknown case(s) %s; known: %s" % (",".join(unknown), ",".join(names)))
    for path in (AGENT, RECEIVER, FIXTURE):
        if not path.exists():
            p.error("%s missing: build first (bash scripts/faults.sh builds)" % path)
    if os.geteuid() != 0 and {"rdisk", "adisk"} & set(chosen):
        p.error("cases rdisk and adisk mount a tmpfs: run as root or leave them out")
    durations = SHORT if args.short else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    base = Path(tempfile.mkdtemp(prefix="sandglass-faults-"))
    log("fault matrix (%s): %s; work in %s" % (
        "short" if args.short else "full",
        ", ".join("%s=%s" % kv for kv in durations.items()), base))
    print(HEADER, flush=True)
    rows = []
    try:
        for name, case in CASES:
            if name not in chosen:
                continue
            row = Row(name)
            d = base / name
            d.mkdir()
            started = time.time()
            try:
                case(d, durations, row)
            except Exception as e:  # a harness failure: shown, the matrix goes on
                row.error = "%s: %s" % (type(e).__name__, e)
                traceback.print_exc()
            finally:
                cleanup()
            row.secs = time.time() - started
            rows.append(row)
            print(row.line(), flush=True)
    finally:
        cleanup()
    print("\n" + HEADER)
    for row in rows:
        print(row.line())
    print("(* RSS of two different agent processes: the case restarts the agent)")
    if not args.keep:
        subprocess.run(["rm", "-rf", str(base)])
    else:
        log("kept %s" % base)
    if any(r.error for r in rows):
        return 2
    return 1 if any(r.bad() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
