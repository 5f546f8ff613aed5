#!/usr/bin/env python3
"""A Python DHT worker as the system kadscale replaces ran it, on PyPI `kademlia` 2.2.3.

Configuration comes from the environment, like the original workers:
  DHT_PORT          UDP port to listen on (default 7000)
  BOOTSTRAP_NODES   "host1:port1,host2:port2"; host names are resolved to IPv4 addresses
                    because kademlia's bootstrap() accepts IP addresses only (empty: first node)
  DHT_KSIZE         k of the routing table (default 20; the replaced deployment used 25)
  DHT_HOST          interface to listen on (default 0.0.0.0)

With --control, the worker also reads JSON commands from stdin, one per line, and answers
each with one JSON line on stdout. Tests use it to drive a worker that runs as its own
process. Values travel as {"type": "str|bytes|int|float|bool", "value": ...}, bytes as hex.
  {"op": "info"}                               -> {"ok": true, "id": hex, "port": int}
  {"op": "contacts"}                           -> {"ok": true, "contacts": [[id hex, ip, port], ...]}
  {"op": "set", "key": k, "type": t, "value": v} -> {"ok": <set() result>}
  {"op": "get", "key": k}                      -> {"ok": true, "found": bool, "type": t, "value": v}
The first line on stdout is {"ready": true, ...} once bootstrap() has returned. EOF on stdin
stops a controlled worker; SIGTERM/SIGINT stop any worker.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys

from kademlia.network import Server

DEFAULT_PORT = 7000
DEFAULT_KSIZE = 20

ENCODERS = {
    bool: ("bool", lambda v: v),
    int: ("int", lambda v: v),
    float: ("float", lambda v: v),
    str: ("str", lambda v: v),
    bytes: ("bytes", lambda v: v.hex()),
}
DECODERS = {
    "bool": bool,
    "int": int,
    "float": float,
    "str": str,
    "bytes": bytes.fromhex,
}


def parse_bootstrap_nodes(text):
    """[(ip, port)] from "host1:port1,host2:port2", resolving host names to IPv4 addresses."""
    addrs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"BOOTSTRAP_NODES entry {item!r} is not host:port")
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
        addrs.append((infos[0][4][0], int(port)))
    return addrs


def encode_value(value):
    kind, encode = ENCODERS[type(value)]
    return {"type": kind, "value": encode(value)}


def decode_value(kind, value):
    if kind not in DECODERS:
        raise ValueError(f"unknown value type {kind!r}; expected one of {sorted(DECODERS)}")
    return DECODERS[kind](value)


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def handle_command(server, command):
    op = command.get("op")
    if op == "info":
        return {"ok": True, "id": server.node.id.hex(), "port": server.kadscale_port}
    if op == "contacts":
        contacts = [
            [node.id.hex(), node.ip, node.port]
            for bucket in server.protocol.router.buckets
            for node in bucket.get_nodes()
        ]
        return {"ok": True, "contacts": contacts}
    if op == "set":
        value = decode_value(command["type"], command["value"])
        return {"ok": bool(await server.set(command["key"], value))}
    if op == "get":
        value = await server.get(command["key"])
        if value is None:
            return {"ok": True, "found": False}
        return {"ok": True, "found": True, **encode_value(value)}
    raise ValueError(f"unknown op {op!r}")


async def serve_control(server):
    """Answers JSON commands from stdin until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            emit(await handle_command(server, json.loads(line)))
        except (ValueError, KeyError, TypeError) as err:
            emit({"ok": False, "error": f"{type(err).__name__}: {err}"})


async def run(control):
    port = int(os.environ.get("DHT_PORT", DEFAULT_PORT))
    ksize = int(os.environ.get("DHT_KSIZE", DEFAULT_KSIZE))
    host = os.environ.get("DHT_HOST", "0.0.0.0")
    bootstrap_nodes = parse_bootstrap_nodes(os.environ.get("BOOTSTRAP_NODES", ""))

    server = Server(ksize=ksize)
    server.kadscale_port = port
    await server.listen(port, interface=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        if bootstrap_nodes:
            await server.bootstrap(bootstrap_nodes)
        if control:
            emit({"ready": True, "id": server.node.id.hex(), "port": port})
            control_task = asyncio.ensure_future(serve_control(server))
            stop_task = asyncio.ensure_future(stop.wait())
            await asyncio.wait([control_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
            for task in (control_task, stop_task):
                task.cancel()
        else:
            await stop.wait()
    finally:
        server.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Python kademlia worker (DHT_PORT, BOOTSTRAP_NODES)")
    parser.add_argument("--control", action="store_true", help="answer JSON commands on stdin")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "WARNING"), stream=sys.stderr)
    asyncio.run(run(args.control))


if __name__ == "__main__":
    main()
