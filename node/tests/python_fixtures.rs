//! Byte-exactness against datagrams that the real Python kademlia 2.2.3 / rpcudp 5.0.1 sent,
//! captured by `interop/capture_fixtures.py` into `tests/fixtures/python_datagrams.json`
//! (`[{"name", "hex", "note"}]`). Every request must decode to a typed [`Request`] and every
//! response to the typed answer of the procedure it answers (found through the message id it
//! echoes); re-encoding either must give back the captured bytes exactly.

use std::collections::HashMap;

use kadscale_node::codec::{
    decode_datagram, encode_request, encode_response, find_node_answer, find_value_answer,
    ping_answer, store_answer, stun_answer, Datagram, FindValueAnswer, MessageId, Request,
    Response,
};

#[derive(serde::Deserialize)]
struct Fixture {
    name: String,
    hex: String,
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/python_datagrams.json");
    let text = std::fs::read_to_string(path).expect("fixture file is committed next to this test");
    let entries: Vec<Fixture> = serde_json::from_str(&text).expect("fixture file is valid JSON");
    entries
        .into_iter()
        .map(|entry| {
            let bytes = hex::decode(&entry.hex)
                .unwrap_or_else(|error| panic!("{}: hex: {error}", entry.name));
            (entry.name, bytes)
        })
        .collect()
}

/// Decodes a response body as the answer to `method` and re-encodes it in typed form.
fn typed_response(method: &str, id: &MessageId, body: &[u8]) -> Vec<u8> {
    let response = match method {
        "stun" => Response::Stun(stun_answer(body).unwrap()),
        "ping" => Response::Ping(ping_answer(body).unwrap()),
        "store" => Response::Stored(store_answer(body).unwrap()),
        "find_node" => Response::Nodes(find_node_answer(body).unwrap()),
        "find_value" => match find_value_answer(body).unwrap() {
            FindValueAnswer::Value(value) => Response::FoundValue(value),
            FindValueAnswer::Nodes(contacts) => Response::Nodes(contacts),
        },
        other => panic!("no fixture should answer an unknown procedure {other}"),
    };
    encode_response(id, &response)
}

#[test]
fn python_datagrams_decode_and_re_encode_byte_for_byte() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 20, "expected a full capture, got {} datagrams", fixtures.len());
    let mut method_of_call: HashMap<MessageId, String> = HashMap::new();
    let mut methods_seen = std::collections::BTreeSet::new();
    let mut responses = Vec::new();
    for (name, bytes) in &fixtures {
        match decode_datagram(bytes).unwrap_or_else(|error| panic!("{name}: {error}")) {
            Datagram::Request { id, request } => {
                assert!(
                    !matches!(request, Request::Extension { .. }),
                    "{name}: a Python procedure decoded as an extension: {request:?}"
                );
                assert_eq!(&encode_request(&id, &request), bytes, "{name}: re-encoded request");
                methods_seen.insert(request.method().to_owned());
                method_of_call.insert(id, request.method().to_owned());
            }
            Datagram::Response { id, body } => responses.push((name, id, body, bytes)),
        }
    }
    assert_eq!(
        methods_seen.into_iter().collect::<Vec<_>>(),
        ["find_node", "find_value", "ping", "store", "stun"]
    );
    assert!(!responses.is_empty());
    for (name, id, body, bytes) in responses {
        let method = method_of_call
            .get(&id)
            .unwrap_or_else(|| panic!("{name}: no captured request with this message id"));
        assert_eq!(&typed_response(method, &id, body), bytes, "{name}: re-encoded {method} answer");
    }
}
