//! The four selection strategies of the seed, over a slice of endpoint states.
//!
//! Semantics kept from the seed: choose `count` endpoints among the healthy ones, and among all
//! of them when none is healthy (fewer when fewer qualify). Selection writes indices into a
//! caller-provided buffer and never allocates once that buffer has room for every endpoint,
//! because the manager selects on every join attempt and the benchmark holds it to 10 million
//! selections per second.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::Rng;

/// How a worker picks the bootstrap node to join through. Serde names match `name()`, which is
/// also the `--selection-strategy` flag value, so the operator's CRD embeds this type as is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SelectionStrategy {
    /// Take turns through the pool.
    #[default]
    RoundRobin,
    /// The endpoints with the least load, overloaded ones last.
    LeastLoaded,
    /// The endpoints with the lowest priority value (list position or pod ordinal).
    Priority,
    /// A uniform random choice of distinct endpoints.
    Random,
}

impl SelectionStrategy {
    pub const ALL: [SelectionStrategy; 4] = [
        SelectionStrategy::RoundRobin,
        SelectionStrategy::LeastLoaded,
        SelectionStrategy::Priority,
        SelectionStrategy::Random,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SelectionStrategy::RoundRobin => "round_robin",
            SelectionStrategy::LeastLoaded => "least_loaded",
            SelectionStrategy::Priority => "priority",
            SelectionStrategy::Random => "random",
        }
    }
}

impl fmt::Display for SelectionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown selection strategy {0:?}: expected round_robin, least_loaded, priority or random")]
pub struct UnknownStrategy(pub String);

impl FromStr for SelectionStrategy {
    type Err = UnknownStrategy;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SelectionStrategy::ALL
            .into_iter()
            .find(|strategy| strategy.name() == name)
            .ok_or_else(|| UnknownStrategy(name.to_string()))
    }
}

/// What a strategy sees of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    /// False for endpoints that must never be chosen (this node itself, or excluded for the
    /// rest of a join round).
    pub eligible: bool,
    pub healthy: bool,
    /// The endpoint reported itself above its soft join limit.
    pub overloaded: bool,
    /// Lower is less loaded: reported joins, or the worker's own count for silent peers.
    pub load: u64,
    /// Lower is preferred by `priority`.
    pub priority: u32,
}

/// Chooses endpoints with one strategy; holds the round-robin cursor and the random source.
#[derive(Clone, Debug)]
pub struct Selector<R = SmallRng> {
    strategy: SelectionStrategy,
    /// Round-robin position, and the rotation that breaks least_loaded ties.
    cursor: usize,
    rng: R,
}

impl<R: Rng> Selector<R> {
    /// The round-robin cursor starts at a random place, so that many workers starting
    /// together do not all begin with the same endpoint.
    pub fn new(strategy: SelectionStrategy, mut rng: R) -> Self {
        let cursor = rng.random::<u32>() as usize;
        Selector { strategy, cursor, rng }
    }

    /// Writes into `out` the indices in `candidates` of up to `count` chosen endpoints, in
    /// order of preference.
    pub fn select(&mut self, candidates: &[Candidate], count: usize, out: &mut Vec<usize>) {
        out.clear();
        let any_healthy = candidates.iter().any(|c| c.eligible && c.healthy);
        out.extend(
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.eligible && (c.healthy || !any_healthy))
                .map(|(index, _)| index),
        );
        let count = count.min(out.len());
        if count == 0 {
            out.clear();
            return;
        }
        match self.strategy {
            SelectionStrategy::RoundRobin => {
                let start = self.cursor % out.len();
                out.rotate_left(start);
                self.cursor = self.cursor.wrapping_add(count);
            }
            SelectionStrategy::LeastLoaded => {
                let rotation = self.cursor % candidates.len();
                let rank = |index: usize| {
                    let c = &candidates[index];
                    let tie_break = (index + candidates.len() - rotation) % candidates.len();
                    (c.overloaded, c.load, tie_break)
                };
                partial_sort_by_key(out, count, rank);
                self.cursor = self.cursor.wrapping_add(1);
            }
            SelectionStrategy::Priority => {
                partial_sort_by_key(out, count, |index| (candidates[index].priority, index));
            }
            SelectionStrategy::Random => {
                for slot in 0..count {
                    let pick = self.rng.random_range(slot..out.len());
                    out.swap(slot, pick);
                }
            }
        }
        out.truncate(count);
    }
}

/// Moves the `count` smallest items by `key` to the front, in order: a selection sort, which
/// beats a full sort for the handful of endpoints a pool holds.
fn partial_sort_by_key<K: Ord>(items: &mut [usize], count: usize, key: impl Fn(usize) -> K) {
    for slot in 0..count {
        let mut best = slot;
        let mut best_key = key(items[slot]);
        for (position, &item) in items.iter().enumerate().skip(slot + 1) {
            let candidate_key = key(item);
            if candidate_key < best_key {
                best = position;
                best_key = candidate_key;
            }
        }
        items.swap(slot, best);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;

    use super::*;
    use crate::bootstrap::backoff::tests::FixedRng;

    fn healthy(load: u64, priority: u32) -> Candidate {
        Candidate { eligible: true, healthy: true, overloaded: false, load, priority }
    }

    fn unhealthy(load: u64, priority: u32) -> Candidate {
        Candidate { healthy: false, ..healthy(load, priority) }
    }

    fn overloaded(load: u64, priority: u32) -> Candidate {
        Candidate { overloaded: true, ..healthy(load, priority) }
    }

    fn ineligible(load: u64, priority: u32) -> Candidate {
        Candidate { eligible: false, ..healthy(load, priority) }
    }

    /// A selector whose cursor starts at 0 (FixedRng(0) makes `random::<u32>()` 0).
    fn selector(strategy: SelectionStrategy) -> Selector<FixedRng> {
        Selector::new(strategy, FixedRng(0))
    }

    fn select(
        selector: &mut Selector<impl Rng>,
        candidates: &[Candidate],
        count: usize,
    ) -> Vec<usize> {
        let mut out = Vec::new();
        selector.select(candidates, count, &mut out);
        out
    }

    #[test]
    fn strategy_names_round_trip() {
        for strategy in SelectionStrategy::ALL {
            assert_eq!(strategy.name().parse(), Ok(strategy));
        }
        let error = "fastest".parse::<SelectionStrategy>().unwrap_err();
        assert!(error.to_string().contains("\"fastest\""), "{error}");
    }

    /// The operator's CRD stores the serde name and passes `name()` as the flag: they must agree.
    #[test]
    fn serde_names_are_the_flag_names() {
        for strategy in SelectionStrategy::ALL {
            let json = serde_json::to_value(strategy).unwrap();
            assert_eq!(json, strategy.name());
            assert_eq!(serde_json::from_value::<SelectionStrategy>(json).unwrap(), strategy);
        }
    }

    /// (what the table row shows, candidates, count, expected first selection of a fresh
    /// selector) for the deterministic strategies.
    type Row = (&'static str, Vec<Candidate>, usize, Vec<usize>);

    fn check_table(strategy: SelectionStrategy, rows: Vec<Row>) {
        for (what, candidates, count, expected) in rows {
            assert_eq!(
                select(&mut selector(strategy), &candidates, count),
                expected,
                "{strategy}: {what}"
            );
        }
    }

    #[test]
    fn round_robin_table() {
        check_table(
            SelectionStrategy::RoundRobin,
            vec![
                (
                    "all healthy",
                    vec![healthy(0, 0), healthy(0, 1), healthy(0, 2), healthy(0, 3)],
                    3,
                    vec![0, 1, 2],
                ),
                (
                    "skips unhealthy",
                    vec![unhealthy(0, 0), healthy(0, 1), unhealthy(0, 2), healthy(0, 3)],
                    3,
                    vec![1, 3],
                ),
                (
                    "none healthy: all",
                    vec![unhealthy(0, 0), unhealthy(0, 1), unhealthy(0, 2)],
                    2,
                    vec![0, 1],
                ),
                (
                    "never the ineligible",
                    vec![ineligible(0, 0), unhealthy(0, 1), unhealthy(0, 2)],
                    3,
                    vec![1, 2],
                ),
                ("only ineligible", vec![ineligible(0, 0)], 3, vec![]),
                ("empty pool", vec![], 3, vec![]),
                ("count 0", vec![healthy(0, 0)], 0, vec![]),
            ],
        );
    }

    #[test]
    fn round_robin_takes_turns() {
        let candidates =
            vec![healthy(0, 0), healthy(0, 1), unhealthy(0, 2), healthy(0, 3), healthy(0, 4)];
        let mut selector = selector(SelectionStrategy::RoundRobin);
        let turns: Vec<Vec<usize>> =
            (0..4).map(|_| select(&mut selector, &candidates, 2)).collect();
        assert_eq!(turns, vec![vec![0, 1], vec![3, 4], vec![0, 1], vec![3, 4]]);
        let mut counts = HashMap::new();
        let mut selector = Selector::new(SelectionStrategy::RoundRobin, SmallRng::seed_from_u64(1));
        for _ in 0..400 {
            for index in select(&mut selector, &candidates, 3) {
                *counts.entry(index).or_insert(0) += 1;
            }
        }
        assert_eq!(counts.len(), 4);
        assert!(
            counts.values().all(|&n| n == 300),
            "each healthy endpoint 3/4 of the time: {counts:?}"
        );
    }

    #[test]
    fn least_loaded_table() {
        check_table(
            SelectionStrategy::LeastLoaded,
            vec![
                (
                    "lowest load first",
                    vec![healthy(9, 0), healthy(2, 1), healthy(5, 2), healthy(7, 3)],
                    3,
                    vec![1, 2, 3],
                ),
                (
                    "unhealthy skipped however idle",
                    vec![healthy(9, 0), unhealthy(0, 1), healthy(5, 2)],
                    2,
                    vec![2, 0],
                ),
                (
                    "overloaded last while others have room",
                    vec![overloaded(0, 0), healthy(40, 1), healthy(30, 2)],
                    2,
                    vec![2, 1],
                ),
                (
                    "overloaded when nothing else",
                    vec![overloaded(5, 0), healthy(40, 1), overloaded(1, 2)],
                    3,
                    vec![1, 2, 0],
                ),
                (
                    "none healthy: least loaded of all",
                    vec![unhealthy(3, 0), unhealthy(1, 1), unhealthy(2, 2)],
                    1,
                    vec![1],
                ),
                (
                    "ties in pool order",
                    vec![healthy(1, 0), healthy(1, 1), healthy(1, 2)],
                    2,
                    vec![0, 1],
                ),
            ],
        );
    }

    #[test]
    fn least_loaded_rotates_ties() {
        let candidates = vec![healthy(1, 0), healthy(1, 1), healthy(1, 2), healthy(9, 3)];
        let mut selector = selector(SelectionStrategy::LeastLoaded);
        let firsts: Vec<usize> = (0..4).map(|_| select(&mut selector, &candidates, 1)[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0], "equal loads take turns, the loaded one never");
    }

    #[test]
    fn priority_table() {
        check_table(
            SelectionStrategy::Priority,
            vec![
                (
                    "lowest priority value first",
                    vec![healthy(0, 3), healthy(0, 0), healthy(0, 2), healthy(0, 1)],
                    2,
                    vec![1, 3],
                ),
                (
                    "unhealthy skipped",
                    vec![unhealthy(0, 0), healthy(0, 1), healthy(0, 2)],
                    1,
                    vec![1],
                ),
                (
                    "none healthy: by priority",
                    vec![unhealthy(0, 2), unhealthy(0, 1)],
                    2,
                    vec![1, 0],
                ),
                (
                    "equal priorities in pool order",
                    vec![healthy(0, 1), healthy(0, 1), healthy(0, 0)],
                    3,
                    vec![2, 0, 1],
                ),
            ],
        );
        let candidates = vec![healthy(0, 2), healthy(0, 0), healthy(0, 1)];
        let mut selector = selector(SelectionStrategy::Priority);
        for _ in 0..3 {
            assert_eq!(select(&mut selector, &candidates, 2), vec![1, 2], "priority is stable");
        }
    }

    #[test]
    fn random_picks_distinct_qualifying_endpoints_uniformly() {
        let candidates = vec![
            healthy(0, 0),
            unhealthy(0, 1),
            healthy(0, 2),
            healthy(0, 3),
            ineligible(0, 4),
            healthy(0, 5),
        ];
        let mut selector = Selector::new(SelectionStrategy::Random, SmallRng::seed_from_u64(3));
        let mut counts = HashMap::new();
        let rounds = 20_000;
        for _ in 0..rounds {
            let chosen = select(&mut selector, &candidates, 2);
            assert_eq!(chosen.len(), 2);
            assert_ne!(chosen[0], chosen[1]);
            for index in chosen {
                *counts.entry(index).or_insert(0) += 1;
            }
        }
        let mut chosen: Vec<usize> = counts.keys().copied().collect();
        chosen.sort();
        assert_eq!(chosen, vec![0, 2, 3, 5]);
        // Each of 4 endpoints is in 2 of 4 slots: expected 10,000, allow ±5 %.
        assert!(counts.values().all(|&n| (9_500..=10_500).contains(&n)), "{counts:?}");
        let all_down = vec![unhealthy(0, 0), unhealthy(0, 1)];
        let mut both = select(&mut selector, &all_down, 5);
        both.sort();
        assert_eq!(both, vec![0, 1], "none healthy: from all, no more than there are");
    }

    #[test]
    fn selection_reuses_the_buffer() {
        let candidates = vec![healthy(0, 0); 6];
        let mut out = Vec::with_capacity(candidates.len());
        let capacity = out.capacity();
        for strategy in SelectionStrategy::ALL {
            let mut selector = selector(strategy);
            for _ in 0..10 {
                selector.select(&candidates, 3, &mut out);
                assert_eq!(out.len(), 3);
                assert_eq!(out.capacity(), capacity, "{strategy} reallocated");
            }
        }
    }
}
