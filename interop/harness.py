"""Shared helpers of the interop tests: free loopback ports, dht-node processes, Python nodes.

Everything binds to 127.0.0.1. Every process started here is registered with a
`ProcessGroup`, which the `procs` fixture tears down after each test, so no node
outlives the test that started it.
"""

import asyncio
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from kademlia.network import Server

HOST = "127.0.0.1"
INTEROP_DIR = Path(__file__).resolve().parent
REPO_ROOT = INTEROP_DIR.parent
STDERR_TAIL_LINES = 40

_ports_handed_out = set()


def free_port(kind=socket.SOCK_DGRAM):
    """A port on 127.0.0.1 that is free right now and not yet handed out in this test run."""
    while True:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def free_udp_port():
    return free_port(socket.SOCK_DGRAM)


def free_tcp_port():
    return free_port(socket.SOCK_STREAM)


def dht_node_bin():
    """Path of the dht-node binary under test (DHT_NODE_BIN, else target/debug/dht-node)."""
    path = Path(os.environ.get("DHT_NODE_BIN", REPO_ROOT / "target" / "debug" / "dht-node"))
    if not path.is_file():
        raise FileNotFoundError(
            f"dht-node binary not found at {path}: run `cargo build -p kadscale-node --bin dht-node` "
            "or set DHT_NODE_BIN"
        )
    return str(path)


def tail(path, lines=STDERR_TAIL_LINES):
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no output file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class Process:
    """A long-running child (dht-node or pyworker) with stdout/stderr captured to files."""

    def __init__(self, label, argv, env=None, stdin=None):
        self.label = label
        self.argv = argv
        self.logdir = Path(tempfile.mkdtemp(prefix=f"kadscale-{label}-"))
        self.stdout_path = self.logdir / "stdout"
        self.stderr_path = self.logdir / "stderr"
        self.stdout_file = open(self.stdout_path, "wb")
        self.stderr_file = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=self.stdout_file,
            stderr=self.stderr_file,
            env={**os.environ, **(env or {})},
        )

    def stderr_tail(self):
        return tail(self.stderr_path)

    def report(self):
        """Everything a reader of a failed test needs to know about this process."""
        status = self.popen.poll()
        state = "running" if status is None else f"exited with {status}"
        return (
            f"--- {self.label} ({state}): {' '.join(self.argv)}\n"
            f"stdout:\n{tail(self.stdout_path)}\nstderr:\n{self.stderr_tail()}"
        )

    def assert_running(self):
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.label} died\n{self.report()}")

    def terminate(self, grace=5.0):
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        self.stdout_file.close()
        self.stderr_file.close()
        return self.popen.returncode


class DhtNode(Process):
    """A `dht-node bootstrap` or `dht-node worker` process on 127.0.0.1."""

    def __init__(self, mode, bootstrap=(), k=None, extra=(), configure_by_env=False):
        """`configure_by_env` passes the port and bootstrap list as DHT_PORT and BOOTSTRAP_NODES,
        the way the Python workers of the replaced system were configured, instead of flags."""
        self.mode = mode
        self.port = free_udp_port()
        self.admin_port = free_tcp_port()
        argv = [dht_node_bin(), mode, "--host", HOST, "--admin-addr", f"{HOST}:{self.admin_port}"]
        env = {}
        if configure_by_env:
            env = {"DHT_PORT": str(self.port), "BOOTSTRAP_NODES": ",".join(bootstrap)}
        else:
            argv += ["--port", str(self.port)]
            if bootstrap:
                argv += ["--bootstrap", ",".join(bootstrap)]
        if k is not None:
            argv += ["--k", str(k)]
        argv += list(extra)
        super().__init__(f"dht-node-{mode}-{self.port}", argv, env=env)

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    def admin_get(self, path, timeout=1.0):
        """(status, body) of an admin endpoint; (None, error) when it does not answer."""
        url = f"http://{HOST}:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as err:
            return None, str(err)

    def wait_ready(self, timeout=15.0):
        """Waits for /readyz to answer 200; fails with the node's stderr otherwise."""
        deadline = time.monotonic() + timeout
        status, body = None, ""
        while time.monotonic() < deadline:
            self.assert_running()
            status, body = self.admin_get("/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"{self.label}: /readyz not 200 within {timeout}s (last: {status} {body!r})\n{self.report()}"
        )

    async def wait_ready_async(self, timeout=15.0):
        """wait_ready for code running on an event loop that must keep serving Python nodes."""
        deadline = time.monotonic() + timeout
        status, body = None, ""
        while time.monotonic() < deadline:
            self.assert_running()
            status, body = await asyncio.to_thread(self.admin_get, "/readyz")
            if status == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"{self.label}: /readyz not 200 within {timeout}s (last: {status} {body!r})\n{self.report()}"
        )


class PyWorker(Process):
    """interop/pyworker.py as its own process, configured through DHT_PORT and BOOTSTRAP_NODES
    like the Python workers of the replaced system, driven through its --control channel."""

    def __init__(self, bootstrap_nodes, ksize=20):
        self.port = free_udp_port()
        env = {
            "DHT_PORT": str(self.port),
            "DHT_HOST": HOST,
            "DHT_KSIZE": str(ksize),
            "BOOTSTRAP_NODES": bootstrap_nodes,
        }
        super().__init__(
            f"pyworker-{self.port}",
            [sys.executable, str(INTEROP_DIR / "pyworker.py"), "--control"],
            env=env,
            stdin=subprocess.PIPE,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._follow_stdout, daemon=True).start()

    def _follow_stdout(self):
        """Feeds the JSON lines the worker writes to its stdout file into `self.lines`."""
        with open(self.stdout_path, "rb") as out:
            buffer = b""
            while True:
                chunk = out.readline()
                if not chunk:
                    if self.popen.poll() is not None:
                        return
                    time.sleep(0.02)
                    continue
                buffer += chunk
                if buffer.endswith(b"\n"):
                    self.lines.put(json.loads(buffer))
                    buffer = b""

    def next_line(self, timeout):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.label}: no answer within {timeout}s\n{self.report()}") from None

    def wait_ready(self, timeout=20.0):
        line = self.next_line(timeout)
        assert line.get("ready") is True, f"{self.label}: unexpected first line {line!r}"
        return line

    def command(self, timeout=20.0, **command):
        self.assert_running()
        self.popen.stdin.write((json.dumps(command) + "\n").encode())
        self.popen.stdin.flush()
        answer = self.next_line(timeout)
        assert answer.get("ok") is not False, f"{self.label}: {command} failed: {answer}\n{self.report()}"
        return answer

    def terminate(self, grace=5.0):
        if self.popen.stdin and not self.popen.stdin.closed:
            self.popen.stdin.close()
        return super().terminate(grace)


class ProcessGroup:
    """Every child process of one test, torn down together."""

    def __init__(self):
        self.processes = []

    def add(self, process):
        self.processes.append(process)
        return process

    def dht_node(self, mode, **kwargs):
        return self.add(DhtNode(mode, **kwargs))

    def pyworker(self, bootstrap_nodes, ksize=20):
        return self.add(PyWorker(bootstrap_nodes, ksize))

    def report(self):
        return "\n".join(p.report() for p in self.processes)

    def stop_all(self):
        for process in self.processes:
            process.terminate()


class CliResult:
    def __init__(self, argv, returncode, stdout, stderr):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    def describe(self):
        return (
            f"`{' '.join(self.argv)}` exited {self.returncode}\n"
            f"stdout: {self.stdout!r}\nstderr: {self.stderr[-3000:]}"
        )


async def run_cli(*args, timeout=30.0):
    """Runs a one-shot dht-node command (put/get/ping) without blocking the event loop."""
    argv = [dht_node_bin(), *args]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(), timeout)
    except asyncio.TimeoutError:
        child.kill()
        stdout, stderr = await child.communicate()
        return CliResult(
            argv,
            f"timeout after {timeout}s",
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )
    return CliResult(argv, child.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


# Which `--type` the dht-node CLI needs for a Python value, and how the value is spelled.
def cli_type_and_text(value):
    if isinstance(value, bool):
        return "bool", "true" if value else "false"
    if isinstance(value, int):
        return "int", str(value)
    if isinstance(value, float):
        return "float", repr(value)
    if isinstance(value, bytes):
        return "bytes", value.hex()
    if isinstance(value, str):
        return "str", value
    raise TypeError(f"no dht-node type for {type(value).__name__}")


def value_from_cli_json(text):
    """The Python value a `dht-node get --output json` answer stands for (bytes arrive as hex)."""
    answer = json.loads(text)
    kind, value = answer["type"], answer["value"]
    if kind == "bytes":
        return bytes.fromhex(value)
    expected = {"str": str, "int": int, "float": float, "bool": bool}[kind]
    if kind == "float" and type(value) is int:
        # JSON has one number type; an integral float may come back without a fraction.
        value = float(value)
    if type(value) is not expected:
        raise AssertionError(f"dht-node said type {kind} but the JSON value is {value!r}")
    return value


async def cli_put(bootstrap, key, value):
    kind, text = cli_type_and_text(value)
    # `--` ends the options: values such as -7 and keys starting with "-" are positionals.
    return await run_cli("put", "--bootstrap", bootstrap, "--type", kind, "--", key, text)


async def cli_get(bootstrap, key):
    """(value or None, CliResult) of `dht-node get --output json`."""
    result = await run_cli("get", "--bootstrap", bootstrap, "--output", "json", "--", key)
    if result.returncode == 0:
        return value_from_cli_json(result.stdout), result
    return None, result


class Phases:
    """What a long scenario is doing right now, so a timeout says where it got stuck."""

    def __init__(self):
        self.started = time.monotonic()
        self.log = []

    def enter(self, name):
        self.log.append(f"{time.monotonic() - self.started:6.1f}s {name}")

    def __str__(self):
        return "\n".join(self.log) or "(no phase entered)"


def run_async(coro, timeout, phases=None):
    """Runs one test scenario on a fresh event loop, failing it after `timeout` seconds."""

    async def bounded():
        try:
            return await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"scenario did not finish within {timeout}s; phases:\n{phases}") from None

    return asyncio.run(bounded())


async def gather_limited(limit, coros):
    """asyncio.gather with at most `limit` of `coros` running at once (CLI processes on 2 cores)."""
    semaphore = asyncio.Semaphore(limit)

    async def limited(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(limited(c) for c in coros))


class PythonNodes:
    """In-process kademlia Servers on the running loop; `async with` stops them all on exit."""

    def __init__(self):
        self.servers = []

    async def start(self, ksize=20, bootstrap=(), server_class=Server):
        """A `kademlia.network.Server` on a free loopback port, bootstrapped off `bootstrap` (host:port)."""
        server = server_class(ksize=ksize)
        port = free_udp_port()
        await server.listen(port, interface=HOST)
        self.servers.append(server)
        server.kadscale_addr = f"{HOST}:{port}"
        if bootstrap:
            await server.bootstrap([parse_addr(a) for a in bootstrap])
        return server

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for server in self.servers:
            server.stop()


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def routing_table_addrs(server):
    """The (ip, port) of every contact in a Python node's routing table."""
    return {(n.ip, n.port) for bucket in server.protocol.router.buckets for n in bucket.get_nodes()}


def same_value(expected, actual):
    return type(expected) is type(actual) and expected == actual
