"""Values stored on one implementation are found by the other, with their exact type."""

import asyncio

from kademlia.network import Server
from kademlia.protocol import KademliaProtocol
from kademlia.utils import digest

from harness import (
    HOST,
    PythonNodes,
    cli_get,
    cli_put,
    gather_limited,
    run_async,
    run_cli,
    same_value,
    value_from_cli_json,
)

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
# One-shot clients at once: enough to overlap, few enough that two busy cores still answer in time.
CLI_CONCURRENCY = 8


def mismatches(expected, found):
    """Lines naming every key whose found value is missing or differs in type or value."""
    return [
        f"{key}: expected {expected[key]!r} ({type(expected[key]).__name__}), got {value!r} "
        f"({type(value).__name__}) {detail}"
        for key, (value, detail) in found.items()
        if not same_value(expected[key], value)
    ]


async def dht_node_get_failures(nodes, expected):
    """Runs `dht-node get --bootstrap <node>` for every node and key and returns a line for every
    answer that is missing or differs in type or value."""
    lookups = [(label, addr, key) for label, addr in nodes for key in expected]
    answers = await gather_limited(CLI_CONCURRENCY, [cli_get(addr, key) for _, addr, key in lookups])
    failures = []
    for (label, _, key), (value, result) in zip(lookups, answers):
        failures += [
            f"get via {label}: {line}"
            for line in mismatches({key: expected[key]}, {key: (value, result.describe())})
        ]
    return failures


def ready_dht_node_network(procs):
    """A dht-node bootstrap and a dht-node worker joined through it, both ready."""
    bootstrap = procs.dht_node("bootstrap")
    bootstrap.wait_ready()
    worker = procs.dht_node("worker", bootstrap=[bootstrap.addr])
    worker.wait_ready()
    return bootstrap, worker


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
    bootstrap, worker = ready_dht_node_network(procs)

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start(bootstrap=[bootstrap.addr])
            # All at once: a put client stores on the other put clients it meets (they are nodes
            # while they run); one that has exited makes the others wait out a store timeout.
            puts = await asyncio.gather(*(cli_put(worker.addr, k, v) for k, v in expected.items()))
            failed = [result.describe() for result in puts if result.returncode != 0]
            assert not failed, "dht-node put failed:\n" + "\n".join(failed)

            # The raw find_value answer of each dht-node, as a Python node decodes it.
            for node in (bootstrap, worker):
                direct = {}
                for key in expected:
                    ok, answer = await python.protocol.find_value(
                        (HOST, node.port), python.node.id, digest(key)
                    )
                    value = answer.get("value") if ok and isinstance(answer, dict) else None
                    direct[key] = (value, f"find_value answer of {node.label}: ok={ok} {answer!r}")
                failures = mismatches(expected, direct)
                assert not failures, "\n".join(failures) + "\n" + node.report()

            found = {key: (await python.get(key), "Python get()") for key in expected}
            assert not mismatches(expected, found), "\n".join(mismatches(expected, found))

    run_async(scenario(), timeout=60)


def test_values_set_by_python_on_a_dht_node_network_are_found_by_dht_node(procs):
    expected = {f"py-on-rs-{name}": value for name, value in VALUES.items()}
    bootstrap, worker = ready_dht_node_network(procs)

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start(bootstrap=[worker.addr])
            stored = await asyncio.gather(*(python.set(key, value) for key, value in expected.items()))
            assert all(
                stored
            ), f"Python set() stored nowhere: {dict(zip(expected, stored))}\n{worker.report()}"
            failures = await dht_node_get_failures([(n.label, n.addr) for n in (bootstrap, worker)], expected)
            assert not failures, "\n".join(failures)

    run_async(scenario(), timeout=60)


# Inside the protocol's 5 s call timeout, but slower than a node that is merely busy.
SLOW_ANSWER_SECS = 1.5


class SlowFindValueProtocol(KademliaProtocol):
    """A Python peer that answers find_value late (a loaded machine, a long GC pause)."""

    async def rpc_find_value(self, sender, nodeid, key):
        await asyncio.sleep(SLOW_ANSWER_SECS)
        return KademliaProtocol.rpc_find_value(self, sender, nodeid, key)


class SlowFindValueServer(Server):
    protocol_class = SlowFindValueProtocol


def test_dht_node_get_waits_for_a_slow_python_peer():
    """The only holder of a value answers after 1.5 s: a Python client waits for it (5 s timeout),
    so `dht-node get` with its default timeout must find the value too."""

    async def scenario():
        async with PythonNodes() as nodes:
            entry = await nodes.start()
            slow = await nodes.start(bootstrap=[entry.kadscale_addr], server_class=SlowFindValueServer)
            slow.storage[digest("held-by-a-slow-peer")] = "late but there"

            result = await run_cli(
                "get", "--bootstrap", entry.kadscale_addr, "--output", "json", "--", "held-by-a-slow-peer"
            )
            assert (
                result.returncode == 0
            ), f"dht-node gave up on a peer answering after {SLOW_ANSWER_SECS}s:\n{result.describe()}"
            assert value_from_cli_json(result.stdout) == "late but there", result.describe()

            # The same lookup from a Python client, as the reference behaviour.
            client = await nodes.start(bootstrap=[entry.kadscale_addr])
            client.storage.data.clear()  # drop what welcome_if_new pushed, so get() must crawl
            assert await client.get("held-by-a-slow-peer") == "late but there"

    run_async(scenario(), timeout=30)


def test_dht_node_get_text_output_and_not_found_exit_code():
    """`get --output text`: str raw, bytes hex, int decimal, float round-trip, bool true/false;
    exit code 1 and nothing on stdout for a key nobody stored."""
    expected = {f"text-{name}": value for name, value in VALUES.items()}

    def parse_text(value, text):
        if isinstance(value, bool):
            return {"true": True, "false": False}.get(text)
        if isinstance(value, bytes):
            return bytes.fromhex(text)
        return type(value)(text)

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start()
            await nodes.start(bootstrap=[python.kadscale_addr])
            stored = await asyncio.gather(*(python.set(key, value) for key, value in expected.items()))
            assert all(stored)
            answers = await gather_limited(
                CLI_CONCURRENCY,
                [run_cli("get", "--bootstrap", python.kadscale_addr, "--", key) for key in expected],
            )
            failures = []
            for (key, value), result in zip(expected.items(), answers):
                text = result.stdout[:-1] if result.stdout.endswith("\n") else result.stdout
                if result.returncode != 0 or not same_value(value, parse_text(value, text)):
                    failures.append(f"{key}: {value!r} printed as {text!r}\n{result.describe()}")
            assert not failures, "\n".join(failures)

            missing = await run_cli("get", "--bootstrap", python.kadscale_addr, "--", "nobody-stored-this")
            assert missing.returncode == 1 and missing.stdout == "", missing.describe()

    run_async(scenario(), timeout=60)


def test_dht_node_put_takes_negative_numbers_as_values():
    """`dht-node put --bootstrap h:p KEY VALUE --type int` with VALUE = -5, as written in the contract
    (no `--` needed): a negative number is a value, not an option."""

    async def scenario():
        async with PythonNodes() as nodes:
            python = await nodes.start()
            for value, kind in ((-5, "int"), (-0.25, "float")):
                key = f"negative-{kind}"
                put = await run_cli(
                    "put", "--bootstrap", python.kadscale_addr, key, str(value), "--type", kind
                )
                assert put.returncode == 0, put.describe()
                assert same_value(
                    value, await python.get(key)
                ), f"Python node holds {await python.get(key)!r}"

    run_async(scenario(), timeout=30)
