"""Shared by bench/storm.py and bench/capacity.py: how each system's nodes are started, and
what is read about a process (CPU seconds, RSS, PSS) from /proc. Standard library only."""

import os
import random
import signal
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
# The benchmarks use release binaries; the smoke tests of `just test` the debug ones it builds.
# BENCH_TARGET, a target triple (x86_64-unknown-linux-musl: the image's static binaries), takes
# those cargo built with --target: a node's memory depends on the C library and its malloc.
BUILD_TARGET = os.environ.get("BENCH_TARGET", "")
BIN_DIR = os.path.join(TARGET_DIR, BUILD_TARGET, os.environ.get("BENCH_PROFILE", "release"))
DHT_NODE = os.path.join(BIN_DIR, "dht-node")
JOIN_LOAD = os.path.join(BIN_DIR, "join-load")
PYTHON = os.path.join(REPO, ".venv", "bin", "python")
# The replaced deployment's bucket size; both systems run with it, so answers are the same size.
K = 25
SYSTEMS = ("python", "dht-node")
LABELS = {"python": "Python kademlia 2.2.3", "dht-node": "dht-node"}


def cpu_seconds(pid):
    """CPU seconds a running process's threads have used so far, at nanosecond resolution (the
    first field of /proc/PID/task/TID/schedstat): a worker process's share of a storm can be
    shorter than the 10 ms tick of /proc/PID/stat."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        except FileNotFoundError:
            # The thread ended between the listing and the read.
            continue
    return total / 1e9


def memory_bytes(pid):
    """{"rss", "anon", "pss"} of a running process, in bytes. rss (VmRSS of /proc/PID/status):
    all resident pages. anon (RssAnon): the private heap and stacks alone, without the mapped
    pages of the executable and shared libraries. pss (Pss of /proc/PID/smaps_rollup): every
    resident page divided by the number of processes mapping it, so the pages of a binary that
    ten processes run count a tenth in each; the PSS of all processes adds up to the memory
    they use together."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                found[name] = int(value.split()[0]) * 1024
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, value = line.partition(":")
            if name == "Pss":
                found[name] = int(value.split()[0]) * 1024
    if len(found) != 3:
        raise RuntimeError(f"/proc/{pid} lacks VmRSS, RssAnon or Pss (has the process exited?): "
                           f"found {sorted(found)}")
    return {"rss": found["VmRSS"], "anon": found["RssAnon"], "pss": found["Pss"]}


def udp_receive_buffer_errors():
    """Datagrams the kernel dropped because a UDP socket's receive buffer was full (all sockets,
    the RcvbufErrors counter of /proc/net/snmp)."""
    with open("/proc/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def udp_ports_in_use():
    with open("/proc/net/udp") as sockets:
        return {int(line.split()[1].split(":")[1], 16) for line in list(sockets)[1:]}


def free_base_port(span):
    """A port P such that P..P+span-1 are free now (UDP), below the kernel's ephemeral range
    (ip_local_port_range, 32768 and up by default) so that no worker's socket takes them."""
    in_use = udp_ports_in_use()
    while True:
        base = random.randint(20000, 32000 - span)
        if not in_use.intersection(range(base, base + span)):
            return base


def bootstrap_command(system, port, peers, core=None):
    """The command of one bootstrap node as its system runs it: one node per process.
    `peers`: "host:port,..." of the bootstrap nodes started before it (empty for the first)."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    if system == "python":
        env = ["env", f"DHT_PORT={port}", "DHT_HOST=127.0.0.1", f"DHT_KSIZE={K}",
               f"BOOTSTRAP_NODES={peers}"]
        return env + pin + [PYTHON, os.path.join(REPO, "interop", "pyworker.py")]
    command = pin + [DHT_NODE, "bootstrap", "--port", str(port), "--host", "127.0.0.1",
                     "--k", str(K)]
    return command + (["--bootstrap", peers] if peers else [])


def display(command):
    """A command line for BENCHMARKS.md, with the repository's paths made relative."""
    return " ".join(command).replace(REPO + "/", "")


def start(command, log, stdin=None, stdout=None):
    return subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=log, text=True,
                            cwd=REPO)


def wait_listening(process, port, patience=15.0):
    """Waits until `process` is alive and a UDP socket is bound to port `port` (from
    /proc/net/udp). Not a ping: a Python node adds every pinger to its routing table, and a
    prober that then goes away would be handed to the joining workers as a dead contact."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} (port {port}) exited with {process.returncode}")
        if port in udp_ports_in_use():
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on UDP port {port} after {patience} s")


def stop(process, patience=10.0):
    """SIGTERM, then SIGKILL after `patience` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(patience)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def percentile(values, fraction):
    """Nearest rank (the index rounded), as join-load computes it; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[round((len(ordered) - 1) * fraction)]


def mib(nbytes):
    return nbytes / (1024 * 1024)
