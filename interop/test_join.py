"""Joining across implementations: Python nodes off a dht-node bootstrap node and the other way round."""

import asyncio
import time

from harness import HOST, PythonNodes, free_udp_port, parse_addr, routing_table_addrs, run_async, run_cli

FIXED_NODE_ID = "4b61647363616c652d626f6f7473747261702d31"  # "Kadscale-bootstrap-1"


def test_python_worker_bootstraps_off_dht_node_bootstrap(procs):
    bootstrap = procs.dht_node("bootstrap", extra=["--node-id", FIXED_NODE_ID])
    bootstrap.wait_ready()

    # A worker of the replaced system, configured by environment; the host name must be resolved.
    worker = procs.pyworker(f"localhost:{bootstrap.port}", ksize=25)
    worker.wait_ready()
    contacts = worker.command(op="contacts")["contacts"]
    assert [FIXED_NODE_ID, HOST, bootstrap.port] in contacts, (
        f"the Python worker's routing table lacks dht-node {FIXED_NODE_ID}@{bootstrap.addr}: {contacts}\n"
        f"{bootstrap.report()}"
    )


def test_python_server_bootstrap_returns_the_dht_node(procs):
    bootstrap = procs.dht_node("bootstrap", extra=["--node-id", FIXED_NODE_ID])
    bootstrap.wait_ready()

    async def scenario():
        async with PythonNodes() as nodes:
            server = await nodes.start()
            found = await server.bootstrap([(HOST, bootstrap.port)])
            assert [(n.id.hex(), n.ip, n.port) for n in found] == [
                (FIXED_NODE_ID, HOST, bootstrap.port)
            ], f"bootstrap() of a Python node against a lone dht-node found {found}\n{bootstrap.report()}"
            assert (HOST, bootstrap.port) in routing_table_addrs(server)

    run_async(scenario(), timeout=30)


def test_dht_node_worker_joins_python_bootstrap_node(procs):
    async def scenario():
        async with PythonNodes() as nodes:
            python_bootstrap = await nodes.start()
            worker = procs.dht_node("worker", bootstrap=[python_bootstrap.kadscale_addr])
            # A worker whose only bootstrap address is silent must stay unready.
            stranded = procs.dht_node("worker", bootstrap=[f"{HOST}:{free_udp_port()}"])
            started = time.monotonic()

            await worker.wait_ready_async(timeout=15)
            assert (HOST, worker.port) in routing_table_addrs(
                python_bootstrap
            ), f"the Python bootstrap node never saw dht-node worker {worker.addr}\n{worker.report()}"
            status, body = await asyncio.to_thread(worker.admin_get, "/healthz")
            assert status == 200, f"/healthz answered {status} {body!r}\n{worker.report()}"

            await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
            stranded.assert_running()
            status, _ = await asyncio.to_thread(stranded.admin_get, "/readyz")
            assert status not in (None, 200), (
                f"a worker that reached no peer must answer /readyz with an error status, got {status}\n"
                f"{stranded.report()}"
            )

    run_async(scenario(), timeout=40)


def test_dht_node_worker_configured_like_a_python_worker_joins(procs):
    """DHT_PORT and BOOTSTRAP_NODES (with a host name) mean what they meant to the Python workers."""

    async def scenario():
        async with PythonNodes() as nodes:
            python_bootstrap = await nodes.start()
            _, port = parse_addr(python_bootstrap.kadscale_addr)
            worker = procs.dht_node("worker", bootstrap=[f"localhost:{port}"], configure_by_env=True)
            await worker.wait_ready_async(timeout=15)
            assert (HOST, worker.port) in routing_table_addrs(python_bootstrap), (
                f"dht-node worker configured by DHT_PORT={worker.port} BOOTSTRAP_NODES=localhost:{port} "
                f"is not in the Python node's table\n{worker.report()}"
            )

    run_async(scenario(), timeout=30)


def test_dht_node_ping_reports_python_node_id():
    async def scenario():
        async with PythonNodes() as nodes:
            server = await nodes.start()
            answer = await run_cli("ping", server.kadscale_addr, "--timeout-ms", "3000")
            assert answer.returncode == 0, answer.describe()
            assert server.node.id.hex() in answer.stdout.lower(), answer.describe()

            silent = await run_cli("ping", f"{HOST}:{free_udp_port()}", "--timeout-ms", "300")
            assert silent.returncode == 1, silent.describe()

    run_async(scenario(), timeout=30)


def test_dht_node_exits_zero_on_sigterm(procs):
    bootstrap = procs.dht_node("bootstrap")
    bootstrap.wait_ready()
    assert bootstrap.terminate() == 0, f"dht-node did not exit 0 on SIGTERM\n{bootstrap.report()}"
