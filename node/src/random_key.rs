//! Hashing for map keys that are random already.

use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a key that is random already (a message id the node drew, a keyed hash of an
/// address) by its first eight bytes: hashing it again only costs time (SipHash of every
/// message id was 1% of a joining node's CPU), and no peer chooses such keys.
#[derive(Default)]
pub struct RandomKeyHasher(u64);

impl Hasher for RandomKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let len = bytes.len().min(8);
        word[..len].copy_from_slice(&bytes[..len]);
        self.0 = self.0.rotate_left(8) ^ u64::from_ne_bytes(word);
    }
}

/// What a `HashMap` of random keys hashes with.
pub type RandomKeys = BuildHasherDefault<RandomKeyHasher>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_word_key_is_its_own_hash_and_longer_keys_differ_by_their_first_bytes() {
        assert_eq!(
            RandomKeys::default().hash_one(0x1234_5678_9abc_def0_u64),
            0x1234_5678_9abc_def0
        );
        let id = |first: u8| {
            let mut id = [7u8; 20];
            id[0] = first;
            id
        };
        assert_ne!(RandomKeys::default().hash_one(id(1)), RandomKeys::default().hash_one(id(2)));
    }
}
