"""A mixed network of Python kademlia nodes and dht-node processes on loopback in which every
node finds every value, whichever implementation stored it."""

import asyncio
import itertools

from harness import (
    Phases,
    PythonNodes,
    cli_get,
    cli_put,
    gather_limited,
    parse_addr,
    routing_table_addrs,
    run_async,
    same_value,
)

CLI_CONCURRENCY = 6
# A handful of values stored from each side, every type once (test_values covers each type both ways).
PYTHON_VALUES = [("str", "set by python"), ("bytes", b"\x00py\xff"), ("float", -1.25)]
DHT_NODE_VALUES = [("int", -123456), ("bool", True), ("str", "put by dht-node")]


async def build_network(procs, nodes, phases, python_count, dht_node_count, python_ksize):
    """Grows a network in waves so that each implementation joins through the other one.

    Wave 0: a `dht-node bootstrap` node and one Python node bootstrapped off it. Wave 1: half
    of the remaining nodes of each kind join through those two. Wave 2: the rest join through
    the members of wave 1, each dht-node through one Python and one dht-node address.
    Returns (python servers, dht-node processes).
    """
    phases.enter("wave 0: dht-node bootstrap node and the first Python node")
    seed = procs.dht_node("bootstrap")
    await seed.wait_ready_async()
    pythons = [await nodes.start(python_ksize, bootstrap=[seed.addr])]
    dht_nodes = [seed]
    entry = [seed.addr, pythons[0].kadscale_addr]

    async def wave(python_n, dht_node_n, python_entry, dht_node_entry):
        workers = [procs.dht_node("worker", bootstrap=next(dht_node_entry)) for _ in range(dht_node_n)]
        new_pythons = await asyncio.gather(
            *(nodes.start(python_ksize, bootstrap=[next(python_entry)]) for _ in range(python_n))
        )
        await asyncio.gather(*(w.wait_ready_async(timeout=30) for w in workers))
        return list(new_pythons), workers

    phases.enter("wave 1")
    first_python_n, first_dht_n = (python_count - 1) // 2, (dht_node_count - 1) // 2
    new_pythons, workers = await wave(
        first_python_n, first_dht_n, itertools.cycle(entry), itertools.cycle([[a] for a in entry])
    )
    pythons += new_pythons
    dht_nodes += workers

    phases.enter("wave 2")
    python_entry = itertools.cycle([p.kadscale_addr for p in new_pythons] + [w.addr for w in workers])
    pairs = itertools.cycle(
        [[p.kadscale_addr, w.addr] for p, w in zip(new_pythons, itertools.cycle(workers))]
    )
    new_pythons, workers = await wave(
        python_count - len(pythons), dht_node_count - len(dht_nodes), python_entry, pairs
    )
    return pythons + new_pythons, dht_nodes + workers


async def check_every_node_finds_every_value(procs, phases, python_count, dht_node_count, python_ksize):
    async with PythonNodes() as nodes:
        pythons, dht_nodes = await build_network(
            procs, nodes, phases, python_count, dht_node_count, python_ksize
        )
        phases.enter("stores")
        assert len(pythons) == python_count and len(dht_nodes) == dht_node_count
        dht_node_addrs = {parse_addr(node.addr) for node in dht_nodes}
        python_addrs = {parse_addr(python.kadscale_addr) for python in pythons}
        unmixed = [
            python.kadscale_addr
            for python in pythons
            if not (
                routing_table_addrs(python) & dht_node_addrs and routing_table_addrs(python) & python_addrs
            )
        ]
        assert not unmixed, f"Python nodes that do not know both kinds of peer: {unmixed}"

        expected = {}
        for index, (kind, value) in enumerate(PYTHON_VALUES):
            key = f"mixed-k{python_ksize}-py-{kind}"
            storer = pythons[(index * 7 + 3) % python_count]
            assert await storer.set(
                key, value
            ), f"Python set({key!r}) on {storer.kadscale_addr} stored nowhere"
            expected[key] = value
        puts = {}
        for index, (kind, value) in enumerate(DHT_NODE_VALUES):
            key = f"mixed-k{python_ksize}-rs-{kind}"
            puts[key] = cli_put(dht_nodes[(index * 7 + 2) % dht_node_count].addr, key, value)
            expected[key] = value
        results = await gather_limited(CLI_CONCURRENCY, puts.values())
        failed = [r.describe() for r in results if r.returncode != 0]
        assert not failed, "dht-node put failed:\n" + "\n".join(failed)

        # Python nodes first: they share this event loop, and the CLI gets below add short-lived
        # clients to everyone's routing tables.
        phases.enter("Python gets")
        lookups = [(python, key) for python in pythons for key in expected]
        python_found = await asyncio.gather(*(python.get(key) for python, key in lookups))
        failures = [
            f"Python node {python.kadscale_addr} (k={python_ksize}) get({key!r}) -> {found!r}, expected {expected[key]!r}"
            for (python, key), found in zip(lookups, python_found)
            if not same_value(expected[key], found)
        ]

        phases.enter("dht-node gets")
        cli_lookups = [(node, key) for node in dht_nodes for key in expected]
        cli_found = await gather_limited(
            CLI_CONCURRENCY, [cli_get(node.addr, key) for node, key in cli_lookups]
        )
        failures += [
            f"dht-node get via {node.label} {key!r} -> {found!r}, expected {expected[key]!r}\n  {result.describe()}"
            for (node, key), (found, result) in zip(cli_lookups, cli_found)
            if not same_value(expected[key], found)
        ]
        for node in dht_nodes:
            node.assert_running()
        total = len(lookups) + len(cli_lookups)
        phases.enter("done")
        print(phases)
        assert not failures, f"{len(failures)} of {total} lookups failed:\n" + "\n".join(failures)


def test_twenty_python_and_twenty_dht_nodes_find_every_value(procs):
    phases = Phases()
    run_async(check_every_node_finds_every_value(procs, phases, 20, 20, python_ksize=20), 90, phases)


def test_python_nodes_with_k25_join_a_mixed_network(procs):
    """The replaced deployment ran its Python workers with k = 25, more than dht-node's default 20."""
    phases = Phases()
    run_async(check_every_node_finds_every_value(procs, phases, 10, 10, python_ksize=25), 60, phases)
