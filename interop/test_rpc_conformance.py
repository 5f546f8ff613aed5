"""Every remote procedure of the Python protocol, called by a real Python node on a dht-node, must
come back in the shape Python's own nodes answer with (see kademlia-wire.md)."""

import os
import socket

import umsgpack
from kademlia.utils import digest

from harness import HOST, PythonNodes, run_async

DHT_NODE_ID = bytes.fromhex("00112233445566778899aabbccddeeff00112233")


def distance(node_id, key):
    return int.from_bytes(node_id, "big") ^ int.from_bytes(key, "big")


def test_dht_node_answers_each_python_rpc_like_a_python_node(procs):
    bootstrap = procs.dht_node("bootstrap", extra=["--node-id", DHT_NODE_ID.hex()])
    bootstrap.wait_ready()
    target = (HOST, bootstrap.port)

    async def scenario():
        async with PythonNodes() as nodes:
            # Three Python peers so that find_node has contacts to return besides the caller.
            caller = await nodes.start(bootstrap=[bootstrap.addr])
            peers = [await nodes.start(bootstrap=[bootstrap.addr]) for _ in range(3)]
            proto, own_id = caller.protocol, caller.node.id
            caller_port = caller.transport.get_extra_info("sockname")[1]

            assert await proto.ping(target, own_id) == (True, DHT_NODE_ID)
            assert await proto.stun(target) == (True, [HOST, caller_port])

            key = digest("conformance")
            ok, contacts = await proto.find_node(target, own_id, key)
            assert ok and isinstance(contacts, list), contacts
            assert all(
                isinstance(c, list) and len(c) == 3 and len(c[0]) == 20 and isinstance(c[1], str)
                for c in contacts
            ), contacts
            returned = {(c[0], c[1], c[2]) for c in contacts}
            expected = {(p.node.id, HOST, p.transport.get_extra_info("sockname")[1]) for p in peers}
            assert (
                returned == expected
            ), f"find_node should list the other Python peers, not the caller: {contacts}"
            assert [distance(c[0], key) for c in contacts] == sorted(distance(c[0], key) for c in contacts)

            ok, miss = await proto.find_value(target, own_id, key)
            assert ok and isinstance(miss, list) and {(c[0], c[1], c[2]) for c in miss} == expected, miss

            for value in ("text", b"\x00\x01", -3, 2**63 - 1, 0.5, True, False, ""):
                assert await proto.store(target, own_id, key, value) == (True, True)
                ok, hit = await proto.find_value(target, own_id, key)
                assert ok and hit == {"value": value} and type(hit["value"]) is type(value), (value, hit)

    run_async(scenario(), timeout=30)


def test_dht_node_ignores_unknown_procedures_and_keeps_answering(procs):
    """Python nodes send no answer to a name they do not know; dht-node must do the same."""
    bootstrap = procs.dht_node("bootstrap", extra=["--node-id", DHT_NODE_ID.hex()])
    bootstrap.wait_ready()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.5)
        unknown = b"\x00" + os.urandom(20) + umsgpack.packb(["no_such_procedure", [DHT_NODE_ID]])
        sock.sendto(unknown, (HOST, bootstrap.port))
        try:
            answer = sock.recv(65536)
        except socket.timeout:
            answer = None
        assert answer is None, f"dht-node answered an unknown procedure with {answer!r}"

        msg_id = os.urandom(20)
        sock.sendto(b"\x00" + msg_id + umsgpack.packb(["ping", [bytes(20)]]), (HOST, bootstrap.port))
        answer = sock.recv(65536)
        assert answer == b"\x01" + msg_id + umsgpack.packb(DHT_NODE_ID), answer
