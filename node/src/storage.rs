//! Local storage of values: insertion-ordered like Python's `ForgetfulStorage`, with a TTL, and
//! bounded in entry count and value size (which Python is not).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::codec::Value;
use crate::id::NodeId;

#[derive(Clone, Debug)]
struct Entry {
    value: Value,
    stored_at: Instant,
    /// Position in insertion order; a key stored again moves to the end, as in Python.
    sequence: u64,
}

/// Why a value was not stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("value of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
}

/// Values held by this node, keyed by digest.
#[derive(Clone, Debug)]
pub struct Storage {
    ttl: Duration,
    max_entries: usize,
    max_value_size: usize,
    entries: HashMap<NodeId, Entry>,
    /// Keys by insertion sequence: oldest first.
    order: BTreeMap<u64, NodeId>,
    next_sequence: u64,
}

impl Storage {
    pub fn new(ttl: Duration, max_entries: usize, max_value_size: usize) -> Storage {
        Storage {
            ttl,
            max_entries,
            max_value_size,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_sequence: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores `value` under `key` as of `now`; when full, the oldest entry makes room.
    pub fn put(&mut self, key: NodeId, value: Value, now: Instant) -> Result<(), StoreError> {
        let size = value.payload_len();
        if size > self.max_value_size {
            return Err(StoreError::TooLarge { size, limit: self.max_value_size });
        }
        self.expire(now);
        if let Some(previous) = self.entries.remove(&key) {
            self.order.remove(&previous.sequence);
        }
        while self.entries.len() >= self.max_entries {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        if self.max_entries == 0 {
            return Ok(());
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.insert(sequence, key);
        self.entries.insert(key, Entry { value, stored_at: now, sequence });
        Ok(())
    }

    /// The value under `key`, unless it expired by `now`.
    pub fn get(&mut self, key: &NodeId, now: Instant) -> Option<Value> {
        self.expire(now);
        self.entries.get(key).map(|entry| entry.value.clone())
    }

    /// Drops entries older than the TTL.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&sequence, key)) = self.order.first_key_value() {
            let expired = self
                .entries
                .get(key)
                .is_none_or(|entry| now.saturating_duration_since(entry.stored_at) >= self.ttl);
            if !expired {
                break;
            }
            let key = *key;
            self.order.remove(&sequence);
            self.entries.remove(&key);
        }
    }

    /// Entries stored at least `age` before `now`, oldest first (Python's `iter_older_than`).
    pub fn older_than(&self, age: Duration, now: Instant) -> Vec<(NodeId, Value)> {
        self.order
            .values()
            .filter_map(|key| self.entries.get(key).map(|entry| (key, entry)))
            .take_while(|(_, entry)| now.saturating_duration_since(entry.stored_at) >= age)
            .map(|(key, entry)| (*key, entry.value.clone()))
            .collect()
    }

    /// Every live entry, oldest first.
    pub fn entries(&self) -> Vec<(NodeId, Value)> {
        self.order
            .values()
            .filter_map(|key| self.entries.get(key).map(|entry| (*key, entry.value.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(n: u8) -> NodeId {
        NodeId([n; 20])
    }

    #[test]
    fn values_expire_after_the_ttl() {
        let start = Instant::now();
        let mut storage = Storage::new(HOUR, 10, 100);
        storage.put(key(1), Value::Int(1), start).unwrap();
        assert_eq!(storage.get(&key(1), start + HOUR / 2), Some(Value::Int(1)));
        assert_eq!(storage.get(&key(1), start + HOUR), None);
        assert!(storage.is_empty());
    }

    #[test]
    fn storing_again_renews_and_moves_to_the_end() {
        let start = Instant::now();
        let mut storage = Storage::new(HOUR, 10, 100);
        storage.put(key(1), Value::Int(1), start).unwrap();
        storage.put(key(2), Value::Int(2), start + HOUR / 4).unwrap();
        storage.put(key(1), Value::Int(3), start + HOUR / 2).unwrap();
        assert_eq!(storage.entries(), vec![(key(2), Value::Int(2)), (key(1), Value::Int(3))]);
        // key 2 is past its TTL, key 1 was renewed.
        let later = start + HOUR + HOUR / 3;
        assert_eq!(storage.get(&key(1), later), Some(Value::Int(3)));
        assert_eq!(storage.get(&key(2), later), None);
    }

    #[test]
    fn full_storage_drops_the_oldest() {
        let now = Instant::now();
        let mut storage = Storage::new(HOUR, 2, 100);
        for n in 1..=3 {
            storage.put(key(n), Value::Int(i64::from(n)), now).unwrap();
        }
        assert_eq!(storage.len(), 2);
        assert_eq!(storage.get(&key(1), now), None);
        assert_eq!(storage.get(&key(3), now), Some(Value::Int(3)));
    }

    #[test]
    fn oversized_values_are_refused() {
        let mut storage = Storage::new(HOUR, 2, 4);
        assert_eq!(
            storage.put(key(1), Value::Bytes(vec![0; 5]), Instant::now()),
            Err(StoreError::TooLarge { size: 5, limit: 4 })
        );
        assert!(storage.is_empty());
    }

    #[test]
    fn older_than_lists_entries_for_republishing() {
        let start = Instant::now();
        let mut storage = Storage::new(HOUR * 24, 10, 100);
        storage.put(key(1), Value::Bool(true), start).unwrap();
        storage.put(key(2), Value::Bool(false), start + HOUR).unwrap();
        let now = start + HOUR + HOUR / 2;
        assert_eq!(storage.older_than(HOUR, now), vec![(key(1), Value::Bool(true))]);
    }
}
