"""Re-runs capture_fixtures.py and checks its output against the committed fixture file,
so the script that produced node/tests/fixtures/python_datagrams.json keeps working."""

import json
import subprocess
import sys

import umsgpack

import capture_fixtures
from harness import INTEROP_DIR, free_udp_port

COMMITTED = capture_fixtures.DEFAULT_OUT
PROCEDURES = {"stun", "ping", "store", "find_node", "find_value"}


def load(path):
    entries = json.loads(path.read_text())
    assert isinstance(entries, list) and entries, f"{path}: expected a non-empty JSON array"
    for entry in entries:
        assert set(entry) == {"name", "hex", "note"}, f"{path}: entry keys {sorted(entry)}"
    return entries


def decode(entry):
    datagram = bytes.fromhex(entry["hex"])
    assert len(datagram) >= 22, f"{entry['name']}: {len(datagram)} bytes is below the 22-byte minimum"
    return datagram[0], datagram[1:21], umsgpack.unpackb(datagram[21:])


def map_ports(value, ports):
    """`value` with every port number replaced through `ports` (committed run -> this run)."""
    if isinstance(value, list):
        return [map_ports(item, ports) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return ports.get(value, value)
    return value


def test_capture_reproduces_committed_fixtures(tmp_path):
    ports = [free_udp_port() for _ in capture_fixtures.NODE_NAMES]
    out = tmp_path / "python_datagrams.json"
    run = subprocess.run(
        [
            sys.executable,
            str(INTEROP_DIR / "capture_fixtures.py"),
            "--out",
            str(out),
            "--ports",
            ",".join(map(str, ports)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"capture_fixtures.py failed:\n{run.stdout}\n{run.stderr}"

    fresh, committed = load(out), load(COMMITTED)
    names = [e["name"] for e in fresh]
    assert len(names) == len(set(names)), "fixture names must be unique"
    assert names == [e["name"] for e in committed], "capture and committed fixture list different datagrams"

    port_map = dict(zip(capture_fixtures.DEFAULT_PORTS, ports))
    for new, old in zip(fresh, committed):
        new_kind, new_id, new_body = decode(new)
        old_kind, old_id, old_body = decode(old)
        assert (new_kind, new_id) == (
            old_kind,
            old_id,
        ), f"{new['name']}: header differs from the committed one"
        if new["hex"] != old["hex"]:
            # Only answers that carry addresses may differ, and only by the ports of this run.
            assert new_body == map_ports(old_body, port_map), f"{new['name']}: body differs beyond ports"


def test_fixture_requests_and_responses_pair_up():
    entries = {e["name"]: decode(e) for e in load(COMMITTED)}
    requests = {name[: -len("_request")] for name in entries if name.endswith("_request")}
    responses = {name[: -len("_response")] for name in entries if name.endswith("_response")}
    assert requests == responses and len(requests) * 2 == len(entries)

    for exchange in requests:
        req_kind, req_id, req_body = entries[f"{exchange}_request"]
        resp_kind, resp_id, _ = entries[f"{exchange}_response"]
        assert (req_kind, resp_kind) == (0x00, 0x01), exchange
        assert req_id == resp_id, f"{exchange}: response does not echo the request's message id"
        procedure, args = req_body
        assert procedure in PROCEDURES and exchange.startswith(procedure), exchange
        assert isinstance(args, list)
    assert {p for p in PROCEDURES if not any(r.startswith(p) for r in requests)} == set()


def test_fixtures_cover_every_value_type():
    entries = {e["name"]: decode(e) for e in load(COMMITTED)}
    for name, value, _ in capture_fixtures.STORED_VALUES:
        _, _, (procedure, (_, _, stored)) = entries[f"store_{name}_request"]
        _, _, found = entries[f"find_value_hit_{name}_response"]
        assert procedure == "store"
        assert type(stored) is type(value) and stored == value, f"store_{name}: {stored!r}"
        assert found == {"value": value} and type(found["value"]) is type(value), f"find_value_hit_{name}"
    kinds = {type(value) for _, value, _ in capture_fixtures.STORED_VALUES}
    assert kinds == {str, bytes, int, float, bool}


def test_find_node_fixture_holds_several_contacts_closest_first():
    entries = {e["name"]: decode(e) for e in load(COMMITTED)}
    _, _, (_, (_, key)) = entries["find_node_request"]
    for name, minimum in (("find_node_response", 4), ("find_node_full_response", 20)):
        _, _, contacts = entries[name]
        assert len(contacts) >= minimum, name
        distances = [
            int.from_bytes(node_id, "big") ^ int.from_bytes(key, "big") for node_id, _, _ in contacts
        ]
        assert distances == sorted(distances), f"{name}: contacts not ordered by distance to the key"
        assert all(len(i) == 20 and ip == "127.0.0.1" and isinstance(port, int) for i, ip, port in contacts)
