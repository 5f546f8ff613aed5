#!/usr/bin/env python3
"""COUNT Python kademlia 2.2.3 workers in one asyncio process: the Python side of bench-storm.

Each worker does what the replaced system's worker did: `Server(ksize=K)`, `listen(port)`,
then `bootstrap([(host, port), ...])` with every bootstrap node. The machine cannot hold a
process per node at 1,000 nodes (25 to 40 MB each), so several share one process; the driver
(bench/storm.py) runs dht-node workers the same way (join-load workers).

Protocol with the driver, one JSON line each way:
  stdout {"ready": true, "nodes": COUNT, "pid": PID}   once every worker listens
  stdin  go                                            every worker starts bootstrap() at once
  stdout {"nodes": [{"start", "end", "ok", "routing_table"}, ...]}
         start/end: time.monotonic() (CLOCK_MONOTONIC, the clock join-load reads too) around
         bootstrap(); ok: it returned within the deadline and left the routing table non-empty
  stdin  EOF                                           the workers stop (they serve until then)
"""

import argparse
import asyncio
import logging
import os
import sys
import time

from kademlia.network import Server

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "interop"))
from pyworker import emit, parse_bootstrap_nodes  # noqa: E402


def routing_table_len(server):
    return sum(len(bucket.get_nodes()) for bucket in server.protocol.router.buckets)


async def join(server, bootstrap_nodes, deadline_secs):
    start = time.monotonic()
    try:
        await asyncio.wait_for(server.bootstrap(bootstrap_nodes), deadline_secs)
        returned = True
    except asyncio.TimeoutError:
        returned = False
    end = time.monotonic()
    table = routing_table_len(server)
    return {"start": start, "end": end, "ok": returned and table > 0, "routing_table": table}


async def run(args):
    bootstrap_nodes = parse_bootstrap_nodes(args.bootstrap)
    if not bootstrap_nodes:
        raise SystemExit("pystorm: --bootstrap names no node")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    servers = []
    for _ in range(args.count):
        server = Server(ksize=args.k, alpha=args.alpha)
        await server.listen(0, interface="127.0.0.1")
        servers.append(server)
    emit({"ready": True, "nodes": args.count, "pid": os.getpid()})
    line = await reader.readline()
    if line.strip() != b"go":
        raise SystemExit(f"pystorm: expected a `go` line on stdin, got {line!r}")
    nodes = await asyncio.gather(*(join(s, bootstrap_nodes, args.deadline_secs) for s in servers))
    emit({"nodes": nodes})
    while await reader.readline():
        pass
    for server in servers:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="workers in this process")
    parser.add_argument("--bootstrap", required=True, help="host:port,host:port of bootstrap nodes")
    parser.add_argument("--k", type=int, default=25, help="ksize (the replaced deployment: 25)")
    parser.add_argument("--alpha", type=int, default=3)
    parser.add_argument("--deadline-secs", type=float, default=60.0,
                        help="a bootstrap() not returned by then counts as failed")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "ERROR"), stream=sys.stderr)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
