#!/usr/bin/env python3
"""Capture the exact datagrams the Python `kademlia` 2.2.3 / `rpcudp` 5.0.1 packages send.

Runs real `kademlia.network.Server` instances on 127.0.0.1, makes one of them (node "A")
call every remote procedure of another (node "B"), and records each request A puts on
the wire and each response B sends back, byte for byte. The Rust codec tests in
node/tests read the result (node/tests/fixtures/python_datagrams.json), so the byte
layout kadscale must reproduce comes from the Python package itself, not from a reading
of its source.

Reproducibility: node ids are fixed, ports are fixed (--ports to override) and message
ids come from a counter instead of os.urandom (rpcudp hashes 32 "random" bytes with
sha1; only the source of those bytes is replaced, the framing code is untouched). Running
the script twice with the same ports writes the same file.

Usage: python interop/capture_fixtures.py [--out PATH] [--ports A,B,C,...]
"""

import argparse
import asyncio
import hashlib
import json
import sys
import types
from pathlib import Path

import rpcudp.protocol
import umsgpack
from kademlia.network import Server
from kademlia.utils import digest

HOST = "127.0.0.1"
REQUEST = 0x00
RESPONSE = 0x01
FULL_TABLE_EXTRA_IDS = 16
DEFAULT_PORTS = (45671, 45672, 45673, 45674, 45675, 45676)
NODE_NAMES = ("A", "B", "C", "D", "E", "F")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "node" / "tests" / "fixtures" / "python_datagrams.json"

# Every value type a Python node accepts (check_dht_value_type), at each msgpack encoding
# boundary the Rust codec has to read and write the same way umsgpack does.
STORED_VALUES = (
    ("str_short", "hello kadscale", "str (fixstr)"),
    ("str_empty", "", "empty str (fixstr of length 0)"),
    ("str_unicode", "grüße, 世界 🌍", "non-ASCII str, utf-8 encoded"),
    ("str_medium", "m" * 100, "str of 100 bytes (str8)"),
    ("str_long", "x" * 300, "str of 300 bytes (str16)"),
    ("bytes_short", bytes(range(16)), "bytes (bin8)"),
    ("bytes_empty", b"", "empty bytes (bin8 of length 0)"),
    ("bytes_long", bytes(range(256)) * 2, "bytes of 512 (bin16)"),
    ("int_small", 42, "positive fixint"),
    ("int_zero", 0, "zero (positive fixint)"),
    ("int_negative_small", -5, "negative fixint"),
    ("int_negative", -1000, "int16"),
    ("int_large", 123456789012, "uint64 (umsgpack picks the smallest unsigned width)"),
    ("int_i64_max", 2**63 - 1, "i64::MAX, packed as uint64"),
    ("int_i64_min", -(2**63), "i64::MIN (int64)"),
    ("int_u64_max", 2**64 - 1, "u64::MAX: a Python node accepts it, it does not fit an i64"),
    ("float", 3.141592653589793, "float64 (umsgpack always packs double precision)"),
    ("float_negative", -0.5, "negative float64"),
    ("float_integral", 2.0, "float64 holding an integral value: must stay a float"),
    ("bool_true", True, "true"),
    ("bool_false", False, "false"),
)


def fixed_node_id(name):
    """A stable 20-byte node id per fixture node, spread over the id space like sha1 ids are."""
    return hashlib.sha1(f"kadscale-fixture-node-{name}".encode()).digest()


class CountingRandom:
    """Stands in for `os` inside rpcudp.protocol so message ids are reproducible.

    rpcudp computes `sha1(os.urandom(32)).digest()`; this returns 32 bytes derived from a
    counter, so the n-th call of a capture run always gets the same message id.
    """

    def __init__(self):
        self.calls = 0

    def urandom(self, size):
        self.calls += 1
        return hashlib.sha256(f"kadscale-fixture-msgid-{self.calls}".encode()).digest()[:size]


class RecordingTransport:
    """Wraps a node's UDP transport and records every datagram the node sends."""

    def __init__(self, node_name, transport, log):
        self.node_name = node_name
        self.transport = transport
        self.log = log

    def sendto(self, data, addr):
        self.log.append((self.node_name, bytes(data), addr))
        self.transport.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self.transport, name)


def describe(value):
    """A readable rendering of a decoded msgpack body for the fixture notes (bytes as hex)."""
    if isinstance(value, bytes):
        return f"bin({value.hex()})" if len(value) <= 20 else f"bin({len(value)} bytes)"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else f"{value[:20]}...({len(value)} chars)")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{describe(k)}: {describe(v)}" for k, v in value.items()) + "}"
    return repr(value)


class Capture:
    """Runs the fixture nodes and turns recorded exchanges into fixture entries."""

    def __init__(self, ports):
        self.ports = dict(zip(NODE_NAMES, ports))
        self.sent = []
        self.entries = []
        self.servers = {}

    def addr(self, name):
        return (HOST, self.ports[name])

    async def start(self):
        for name in NODE_NAMES:
            server = Server(ksize=20, node_id=fixed_node_id(name))
            await server.listen(self.ports[name], interface=HOST)
            server.protocol.transport = RecordingTransport(name, server.protocol.transport, self.sent)
            self.servers[name] = server

    def stop(self):
        for server in self.servers.values():
            server.stop()

    def node_label(self, name):
        return f"{name} ({HOST}:{self.ports[name]}, id {fixed_node_id(name).hex()[:8]}..)"

    async def exchange(self, name, call, note):
        """Makes node A perform `call()` against B and records the request and response datagrams."""
        first = len(self.sent)
        ok, _ = await call()
        if not ok:
            raise RuntimeError(f"{name}: node B did not answer node A")
        # Let B's welcome_if_new side effects (they may send datagrams) settle before the next call.
        await asyncio.sleep(0.05)
        datagrams = self.sent[first:]
        request = next(d for n, d, _ in datagrams if n == "A" and d[0] == REQUEST)
        msg_id = request[1:21]
        response = next(d for n, d, _ in datagrams if n == "B" and d[0] == RESPONSE and d[1:21] == msg_id)
        request_body = umsgpack.unpackb(request[21:])
        response_body = umsgpack.unpackb(response[21:])
        self.entries.append(
            {
                "name": f"{name}_request",
                "hex": request.hex(),
                "note": f"{note}. Request from {self.node_label('A')} to {self.node_label('B')}: "
                f"{describe(request_body)}",
            }
        )
        self.entries.append(
            {
                "name": f"{name}_response",
                "hex": response.hex(),
                "note": f"{note}. Response of B: {describe(response_body)}",
            }
        )

    async def run(self):
        caller = self.servers["A"]
        proto, own_id, b_addr = caller.protocol, caller.node.id, self.addr("B")

        await self.exchange(
            "stun", lambda: proto.stun(b_addr), "stun: no args, answer is the caller's [ip, port]"
        )
        await self.exchange(
            "ping", lambda: proto.ping(b_addr, own_id), "ping [caller id]: answer is the callee's id"
        )

        lookup_key = digest("kadscale-fixture-lookup")
        await self.exchange(
            "find_node_empty",
            lambda: proto.find_node(b_addr, own_id, lookup_key),
            "find_node [caller id, key] to a node that knows only the caller: empty contact list",
        )

        # C..F introduce themselves to B, so B's routing table holds several contacts.
        for name in NODE_NAMES[2:]:
            ok, _ = await self.servers[name].protocol.ping(b_addr, self.servers[name].node.id)
            if not ok:
                raise RuntimeError(f"node B did not answer the ping of node {name}")
        await self.exchange(
            "find_node",
            lambda: proto.find_node(b_addr, own_id, lookup_key),
            "find_node [caller id, key]: [id, ip, port] contacts closest to the key first, caller excluded",
        )
        await self.exchange(
            "find_value_miss",
            lambda: proto.find_value(b_addr, own_id, digest("kadscale-fixture-absent")),
            "find_value [caller id, key] for a key B does not hold: the find_node answer",
        )

        for name, value, note in STORED_VALUES:
            key = digest(f"kadscale-fixture-{name}")
            await self.exchange(
                f"store_{name}",
                lambda: proto.store(b_addr, own_id, key, value),
                f"store [caller id, key, value] with value {note}: answer true",
            )
            await self.exchange(
                f"find_value_hit_{name}",
                lambda: proto.find_value(b_addr, own_id, key),
                f"find_value for the key stored with value {note}: answer {{'value': v}}",
            )

        # Fill B's table past 15 contacts so the answer needs a msgpack array16 header: C claims
        # made-up ids from its own socket (B keys contacts by id, and excludes only A's address).
        c = self.servers["C"]
        for index in range(FULL_TABLE_EXTRA_IDS):
            ok, _ = await c.protocol.ping(b_addr, fixed_node_id(f"C-alias-{index}"))
            if not ok:
                raise RuntimeError("node B did not answer a ping of node C")
        await self.exchange(
            "find_node_full",
            lambda: proto.find_node(b_addr, own_id, lookup_key),
            "find_node answered with k = 20 contacts (array16 header); 16 of them are ids node C "
            "claimed from its own address",
        )
        return self.entries


async def capture(ports):
    """Runs a capture on the given six ports and returns the fixture entries."""
    recorder = Capture(ports)
    await recorder.start()
    try:
        return await recorder.run()
    finally:
        recorder.stop()


def parse_ports(text):
    ports = tuple(int(p) for p in text.split(","))
    if len(ports) != len(NODE_NAMES):
        raise argparse.ArgumentTypeError(f"--ports needs {len(NODE_NAMES)} ports, got {len(ports)}")
    return ports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixture file to write")
    parser.add_argument(
        "--ports",
        type=parse_ports,
        default=DEFAULT_PORTS,
        help=f"{len(NODE_NAMES)} comma-separated UDP ports on {HOST} (default {DEFAULT_PORTS})",
    )
    args = parser.parse_args(argv)
    rpcudp.protocol.os = types.SimpleNamespace(urandom=CountingRandom().urandom)
    try:
        entries = asyncio.run(capture(args.ports))
    except OSError as err:
        sys.exit(f"cannot listen on {HOST} ports {args.ports}: {err} (pick others with --ports)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(entries)} datagrams to {args.out}")


if __name__ == "__main__":
    main()
