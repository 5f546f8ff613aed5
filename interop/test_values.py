"""Values stored on one implementation are found by the other, with their exact type."""

import asyncio

from kademlia.utils import digest

from harness import HOST, PythonNodes, cli_get, cli_put, run_async, same_value

# Every value type a Python node accepts, with the encodings most likely to go wrong.
VALUES = {
    "str": "hello kadscale",
    "str_unicode": "grüße, 世界",
    "str_empty": "",
    "bytes": b"\x00\x01kad\xff",
    "bytes_empty": b"",
    "int": 42,
    "int_negative": -7,
    "int_large": 2**40 + 3,
    "int_i64_max": 2**63 - 1,
    "int_i64_min": -(2**63),
    "float": 3.25,
    "float_fraction": 0.1,
    "float_integral": 2.0,
    "bool_true": True,
    "bool_false": False,
}


def mismatches(expected, found):
    """Lines naming every key whose found value is missing or differs in type or value."""
    return [
        f"{key}: expected {expected[key]!r} ({type(expected[key]).__name__}), got {value!r} "
        f"({type(value).__name__}) {detail}"
        for key, (value, detail) in found.items()
        if not same_value(expected[key], value)
    ]


async def dht_node_get_failures(nodes, expected):
    """Runs `dht-node get --bootstrap <node>` for every node and key, all at once (a one-shot client
    that is still running answers the others' lookups, one that has exited costs them a timeout),
    and returns a line for every answer that is missing or differs in type or value."""
    lookups = [(label, addr, key) for label, addr in nodes for key in expected]
    answers = await asyncio.gather(*(cli_get(addr, key) for _, addr, key in lookups))
    failures = []
    for (label, _, key), (value, result) in zip(lookups, answers):
        failures += [f"get via {label}: {line}" for line in mismatches({key: expected[key]}, {key: (value, result.describe())})]
    return failures


def test_values_set_by_python_are_found_by_dht_node(procs):
    expected = {f"py-{name}": value for name, value in VALUES.items()}

    async def scenario():
        async with PythonNodes() as nodes:
            first = await nodes.start()
            second = await nodes.start(bootstrap=[first.kadscale_addr])
            stored = await asyncio.gather(*(first.set(key, value) for key, value in expected.items()))
            assert all(stored), f"Python set() stored nowhere: {dict(zip(expected, stored))}"

            # A dht-node worker joining the Python network after the stores.
            worker = procs.dht_node("worker", bootstrap=[second.kadscale_addr])
            await worker.wait_ready_async()

            where = [(f"Python node {first.kadscale_addr}", first.kadscale_addr), (worker.label, worker.addr)]
            failures = await dht_node_get_failures(where, expected)
            assert not failures, "\n".join(failures) + "\n" + worker.report()

    run_async(scenario(), timeout=60)


def test_values_put_by_dht_node_are_found_by_python(procs):
    expected = {f"rs-{name}": value for name, value in VALUES.items()}
    bootstrap = procs.dht_node("bootstrap")
    bootstrap.wait_ready()
    worker = procs.dht_node("worker", bootstrap=[bootstrap.addr])
    worker.wait_ready()

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start(bootstrap=[bootstrap.addr])
            puts = await asyncio.gather(*(cli_put(worker.addr, k, v) for k, v in expected.items()))
            failed = [result.describe() for result in puts if result.returncode != 0]
            assert not failed, "dht-node put failed:\n" + "\n".join(failed)

            # The raw find_value answer of each dht-node, as a Python node decodes it.
            for node in (bootstrap, worker):
                direct = {}
                for key in expected:
                    ok, answer = await python.protocol.find_value((HOST, node.port), python.node.id, digest(key))
                    value = answer.get("value") if ok and isinstance(answer, dict) else None
                    direct[key] = (value, f"find_value answer of {node.label}: ok={ok} {answer!r}")
                failures = mismatches(expected, direct)
                assert not failures, "\n".join(failures) + "\n" + node.report()

            found = {key: (await python.get(key), "Python get()") for key in expected}
            assert not mismatches(expected, found), "\n".join(mismatches(expected, found))

    run_async(scenario(), timeout=60)


def test_values_set_by_python_on_a_dht_node_network_are_found_by_dht_node(procs):
    expected = {f"py-on-rs-{name}": value for name, value in VALUES.items()}
    bootstrap = procs.dht_node("bootstrap")
    bootstrap.wait_ready()
    worker = procs.dht_node("worker", bootstrap=[bootstrap.addr])
    worker.wait_ready()

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start(bootstrap=[worker.addr])
            stored = await asyncio.gather(*(python.set(key, value) for key, value in expected.items()))
            assert all(stored), f"Python set() stored nowhere: {dict(zip(expected, stored))}\n{worker.report()}"
            failures = await dht_node_get_failures([(n.label, n.addr) for n in (bootstrap, worker)], expected)
            assert not failures, "\n".join(failures)

    run_async(scenario(), timeout=60)
