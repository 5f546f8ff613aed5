//! Node ids and key digests: 160-bit values compared by XOR distance, as in the Python package.

use std::fmt;
use std::str::FromStr;

use sha1::{Digest, Sha1};

/// Length in bytes of node ids and key digests.
pub const ID_LEN: usize = 20;

/// A 160-bit node id or key digest. Ordering is that of the big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

/// The XOR distance between two ids; ordered like the big-endian integer Python compares.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

/// `bytes` as the big-endian integer they are, in two machine words: lookups and routing
/// compare ids all the time, and the derived byte-wise order went through `memcmp`.
fn big_endian(bytes: &[u8; ID_LEN]) -> (u128, u32) {
    let (high, low) = bytes.split_at(16);
    (
        u128::from_be_bytes(high.try_into().expect("16 bytes")),
        u32::from_be_bytes(low.try_into().expect("4 bytes")),
    )
}

/// `Ord` by [`big_endian`], for ids and distances alike.
macro_rules! ordered_as_big_endian {
    ($($type:ty),*) => {$(
        impl Ord for $type {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                big_endian(&self.0).cmp(&big_endian(&other.0))
            }
        }

        impl PartialOrd for $type {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }
    )*};
}

ordered_as_big_endian!(NodeId, Distance);

impl Distance {
    /// The id at this distance from `origin`: XOR undoes itself.
    pub fn id_from(&self, origin: &NodeId) -> NodeId {
        NodeId(origin.distance(&NodeId(self.0)).0)
    }
}

impl NodeId {
    pub const ZERO: NodeId = NodeId([0; ID_LEN]);
    pub const MAX: NodeId = NodeId([0xff; ID_LEN]);

    /// A uniformly random id, as Python's `digest(random.getrandbits(255))` effectively is.
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// A random id between `low` and `high` inclusive (a bucket's range), for bucket refresh.
    pub fn random_in_range(low: &NodeId, high: &NodeId) -> NodeId {
        // Ids in a bucket range share the prefix where low and high agree; everything after
        // the first differing bit is free as long as the result stays within [low, high].
        let candidate = NodeId::random();
        let mut out = [0u8; ID_LEN];
        let mut bounded_low = true;
        let mut bounded_high = true;
        for (i, out_byte) in out.iter_mut().enumerate() {
            for bit in (0..8).rev() {
                let mask = 1u8 << bit;
                let lo = low.0[i] & mask != 0;
                let hi = high.0[i] & mask != 0;
                let want = candidate.0[i] & mask != 0;
                let pick = match (bounded_low, bounded_high) {
                    (true, true) if lo == hi => lo,
                    (true, true) => want,
                    (true, false) => want || lo,
                    (false, true) => want && hi,
                    (false, false) => want,
                };
                if bounded_low && pick != lo {
                    bounded_low = false;
                }
                if bounded_high && pick != hi {
                    bounded_high = false;
                }
                if pick {
                    *out_byte |= mask;
                }
            }
        }
        NodeId(out)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<NodeId> {
        <[u8; ID_LEN]>::try_from(bytes).ok().map(NodeId)
    }

    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut out = [0u8; ID_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = self.0[i] ^ other.0[i];
        }
        Distance(out)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The id whose value is `self / 2 + other / 2` rounded down: the midpoint Python splits a
    /// bucket range at, `(low + high) // 2`.
    pub fn midpoint(&self, other: &NodeId) -> NodeId {
        // (a + b) / 2 over 160 bits without overflow: add with a 161st carry bit, shift right.
        let mut sum = [0u8; ID_LEN];
        let mut carry = 0u16;
        for i in (0..ID_LEN).rev() {
            let total = u16::from(self.0[i]) + u16::from(other.0[i]) + carry;
            sum[i] = (total & 0xff) as u8;
            carry = total >> 8;
        }
        let mut out = [0u8; ID_LEN];
        let mut high_bit = carry as u8;
        for i in 0..ID_LEN {
            out[i] = (high_bit << 7) | (sum[i] >> 1);
            high_bit = sum[i] & 1;
        }
        NodeId(out)
    }

    /// `self + 1`, saturating at [`NodeId::MAX`].
    pub fn successor(&self) -> NodeId {
        let mut out = self.0;
        for byte in out.iter_mut().rev() {
            if *byte == 0xff {
                *byte = 0;
            } else {
                *byte += 1;
                return NodeId(out);
            }
        }
        NodeId::MAX
    }

    /// Number of leading bits that `self` and `other` share.
    pub fn shared_prefix_len(&self, other: &NodeId) -> u32 {
        let distance = self.distance(other);
        let mut bits = 0;
        for byte in distance.0 {
            if byte == 0 {
                bits += 8;
            } else {
                return bits + byte.leading_zeros();
            }
        }
        bits
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.to_hex())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a string is not a node id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseNodeIdError {
    #[error("node id must be 40 hex digits, got {0} characters")]
    Length(usize),
    #[error("node id is not hex: {0}")]
    NotHex(String),
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(text: &str) -> Result<NodeId, ParseNodeIdError> {
        if text.len() != ID_LEN * 2 {
            return Err(ParseNodeIdError::Length(text.len()));
        }
        let mut out = [0u8; ID_LEN];
        hex::decode_to_slice(text, &mut out)
            .map_err(|error| ParseNodeIdError::NotHex(error.to_string()))?;
        Ok(NodeId(out))
    }
}

/// SHA-1 of `key`: the digest under which a value travels, as Python's `digest(key)`.
pub fn key_digest(key: &[u8]) -> NodeId {
    NodeId(Sha1::digest(key).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_from_u128(value: u128) -> NodeId {
        let mut out = [0u8; ID_LEN];
        out[4..].copy_from_slice(&value.to_be_bytes());
        NodeId(out)
    }

    #[test]
    fn key_digest_is_sha1() {
        // sha1("hello") as Python's hashlib computes it.
        assert_eq!(key_digest(b"hello").to_hex(), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
    }

    #[test]
    fn distance_orders_like_big_endian_xor() {
        let a = id_from_u128(0b1000);
        assert!(a.distance(&id_from_u128(0b1001)) < a.distance(&id_from_u128(0b1100)));
        assert_eq!(a.distance(&a), Distance([0; ID_LEN]));
        assert_eq!(a.shared_prefix_len(&a), 160);
        assert_eq!(NodeId::ZERO.shared_prefix_len(&NodeId::MAX), 0);
        assert_eq!(id_from_u128(1).shared_prefix_len(&id_from_u128(0)), 159);
    }

    #[test]
    fn a_distance_from_an_id_gives_back_the_other_id() {
        let (a, b) = (NodeId::random(), NodeId::random());
        assert_eq!(a.distance(&b).id_from(&a), b);
        assert_eq!(a.distance(&b).id_from(&b), a);
    }

    #[test]
    fn ids_and_distances_order_as_their_bytes_do() {
        // Byte 15 and 16 straddle the two words the comparison reads; 19 is the last.
        let mut ids = vec![NodeId::ZERO, NodeId::MAX];
        for byte in [0, 15, 16, 19] {
            for value in [0x01, 0x80, 0xff] {
                let mut id = [0u8; ID_LEN];
                id[byte] = value;
                ids.push(NodeId(id));
                id[ID_LEN - 1 - byte] ^= 0x42;
                ids.push(NodeId(id));
            }
        }
        ids.extend((0..20).map(|_| NodeId::random()));
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a} against {b}");
                let (x, y) = (a.distance(&ids[2]), b.distance(&ids[2]));
                assert_eq!(x.partial_cmp(&y), Some(x.0.cmp(&y.0)), "{a} against {b}");
            }
        }
    }

    #[test]
    fn midpoint_and_successor_match_integer_arithmetic() {
        assert_eq!(id_from_u128(10).midpoint(&id_from_u128(21)), id_from_u128(15));
        assert_eq!(NodeId::MAX.midpoint(&NodeId::MAX), NodeId::MAX);
        let mut half = [0u8; ID_LEN];
        half[0] = 0x7f;
        half[1..].fill(0xff);
        assert_eq!(NodeId::ZERO.midpoint(&NodeId::MAX), NodeId(half));
        assert_eq!(id_from_u128(255).successor(), id_from_u128(256));
        assert_eq!(NodeId::MAX.successor(), NodeId::MAX);
    }

    #[test]
    fn random_in_range_stays_in_range() {
        for (low, high) in [
            (id_from_u128(1000), id_from_u128(1000)),
            (id_from_u128(1000), id_from_u128(5000)),
            (NodeId::ZERO, NodeId::MAX),
            (id_from_u128(0x8000), id_from_u128(0xffff)),
        ] {
            for _ in 0..200 {
                let id = NodeId::random_in_range(&low, &high);
                assert!(low <= id && id <= high, "{id} outside {low}..={high}");
            }
        }
    }

    #[test]
    fn parses_hex_and_refuses_bad_text() {
        let id: NodeId = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".parse().unwrap();
        assert_eq!(id, key_digest(b"hello"));
        assert_eq!("abc".parse::<NodeId>(), Err(ParseNodeIdError::Length(3)));
        assert!(matches!(
            "zzf4c61ddcc5e8a2dabede0f3b482cd9aea9434d".parse::<NodeId>(),
            Err(ParseNodeIdError::NotHex(_))
        ));
    }
}
