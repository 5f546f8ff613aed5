//! The stable stand-in for the fuzz target in `node/fuzz`: the same entry point
//! ([`check_decoder`]) over 100,000 random and mutated datagrams. Mutations start from real
//! datagrams (the Python fixtures and kadscale's own encodings) so that they get past the
//! framing and deep into the msgpack and field checks.

use kadscale_node::codec::{
    check_decoder, encode_request, encode_response, Request, Response, Value,
};
use kadscale_node::id::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn seeds() -> Vec<Vec<u8>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/python_datagrams.json");
    let text = std::fs::read_to_string(path).expect("fixture file");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("fixture JSON");
    let mut seeds: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|entry| entry["hex"].as_str().and_then(|hex| hex::decode(hex).ok()))
        .collect();
    let id = [3u8; 20];
    let (a, b) = (NodeId::random(), NodeId::random());
    seeds.push(encode_request(
        &id,
        &Request::Store { sender: a, key: b, value: Value::Float(f64::NAN) },
    ));
    seeds.push(encode_request(
        &id,
        &Request::Extension {
            name: "kadscale_load".into(),
            args: vec![rmpv::Value::Binary(a.0.to_vec())],
        },
    ));
    seeds.push(encode_response(&id, &Response::Stun("[::1]:5678".parse().unwrap())));
    seeds
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..6) {
        match rng.random_range(0..5) {
            0 if !data.is_empty() => {
                let at = rng.random_range(0..data.len());
                data[at] ^= 1 << rng.random_range(0..8);
            }
            1 if !data.is_empty() => {
                let at = rng.random_range(0..data.len());
                data[at] = rng.random();
            }
            2 => {
                let at = rng.random_range(0..=data.len());
                data.truncate(at);
            }
            3 => {
                let at = rng.random_range(0..=data.len());
                let interesting =
                    [0x00, 0x7f, 0x80, 0x90, 0xc1, 0xc4, 0xc6, 0xd9, 0xdc, 0xdd, 0xdf, 0xff];
                data.insert(at, interesting[rng.random_range(0..interesting.len())]);
            }
            _ => {
                let extra = rng.random_range(0..8);
                data.extend((0..extra).map(|_| rng.random::<u8>()));
            }
        }
    }
    data
}

#[test]
fn a_hundred_thousand_random_and_mutated_datagrams_never_panic_the_decoder() {
    let seeds = seeds();
    for seed in &seeds {
        assert!(check_decoder(seed), "seed datagrams are valid");
    }
    let mut rng = StdRng::seed_from_u64(0x6b61_6473_6361_6c65);
    let mut valid = 0;
    for round in 0..100_000 {
        let datagram = if round % 4 == 0 {
            let mut random = vec![0u8; rng.random_range(0..200)];
            rng.fill_bytes(&mut random);
            random
        } else {
            let seed = &seeds[rng.random_range(0..seeds.len())];
            mutate(&mut rng, seed)
        };
        if check_decoder(&datagram) {
            valid += 1;
        }
    }
    // Mutations of valid datagrams stay valid often enough to exercise the encoders too.
    assert!(valid > 1_000, "only {valid} mutated datagrams were valid");
}
