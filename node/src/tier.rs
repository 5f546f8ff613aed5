//! The tier policy: how many bootstrap nodes a DHT with a given worker count needs.
//!
//! A pure function from (worker count, [`TierPolicy`], previous [`TierPlan`], clock) to a new
//! [`TierPlan`]. The operator and `dht-node cluster` both call [`TierPolicy::plan`], so the
//! two can never disagree. Defaults are the seed's table: 0–15 workers get 2 bootstrap nodes,
//! 16–50 get 3, 51–200 get 4, more get 6.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A named row of the tier table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Small,
    Medium,
    Large,
    Xlarge,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Small, Tier::Medium, Tier::Large, Tier::Xlarge];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Small => "small",
            Tier::Medium => "medium",
            Tier::Large => "large",
            Tier::Xlarge => "xlarge",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the bootstrap replica count is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierStrategy {
    /// Pick the tier whose worker range holds the worker count.
    #[default]
    Adaptive,
    /// Always use this tier, whatever the worker count.
    Fixed(Tier),
    /// The adaptive tier's count, raised until workers per bootstrap node is at most the limit.
    Proportional,
}

impl TierStrategy {
    pub const NAMES: [&'static str; 6] =
        ["adaptive", "small", "medium", "large", "xlarge", "proportional"];

    pub fn name(self) -> &'static str {
        match self {
            TierStrategy::Adaptive => "adaptive",
            TierStrategy::Fixed(tier) => tier.name(),
            TierStrategy::Proportional => "proportional",
        }
    }
}

impl fmt::Display for TierStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TierStrategy {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adaptive" => Ok(TierStrategy::Adaptive),
            "proportional" => Ok(TierStrategy::Proportional),
            "small" => Ok(TierStrategy::Fixed(Tier::Small)),
            "medium" => Ok(TierStrategy::Fixed(Tier::Medium)),
            "large" => Ok(TierStrategy::Fixed(Tier::Large)),
            "xlarge" => Ok(TierStrategy::Fixed(Tier::Xlarge)),
            other => Err(PolicyError::UnknownStrategy(other.to_string())),
        }
    }
}

/// One row of the tier table: the largest worker count it covers and its bootstrap nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierRow {
    /// Largest worker count of this tier; `None` for the last tier, which has no upper bound.
    pub max_workers: Option<u32>,
    pub bootstrap_nodes: u32,
}

/// The four tiers, validated: thresholds strictly increasing, node counts non-decreasing, ≥ 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "[TierRow; 4]", into = "[TierRow; 4]")]
pub struct TierTable {
    rows: [TierRow; 4],
}

impl Default for TierTable {
    /// The seed's table.
    fn default() -> Self {
        TierTable {
            rows: [
                TierRow { max_workers: Some(15), bootstrap_nodes: 2 },
                TierRow { max_workers: Some(50), bootstrap_nodes: 3 },
                TierRow { max_workers: Some(200), bootstrap_nodes: 4 },
                TierRow { max_workers: None, bootstrap_nodes: 6 },
            ],
        }
    }
}

impl TierTable {
    /// Builds a table from the upper bounds of small, medium and large and the node counts of
    /// all four tiers.
    pub fn new(max_workers: [u32; 3], bootstrap_nodes: [u32; 4]) -> Result<Self, PolicyError> {
        let rows = [
            TierRow { max_workers: Some(max_workers[0]), bootstrap_nodes: bootstrap_nodes[0] },
            TierRow { max_workers: Some(max_workers[1]), bootstrap_nodes: bootstrap_nodes[1] },
            TierRow { max_workers: Some(max_workers[2]), bootstrap_nodes: bootstrap_nodes[2] },
            TierRow { max_workers: None, bootstrap_nodes: bootstrap_nodes[3] },
        ];
        TierTable::try_from(rows)
    }

    pub fn row(&self, tier: Tier) -> TierRow {
        self.rows[tier.index()]
    }

    /// The tier whose worker range holds `workers`.
    pub fn tier_for(&self, workers: u32) -> Tier {
        Tier::ALL
            .into_iter()
            .find(|t| self.row(*t).max_workers.is_none_or(|max| workers <= max))
            .unwrap_or(Tier::Xlarge)
    }

    /// The node count of the largest tier, which `maxBootstrapNodes` must not be below.
    pub fn largest_bootstrap_nodes(&self) -> u32 {
        self.rows[3].bootstrap_nodes
    }
}

impl TryFrom<[TierRow; 4]> for TierTable {
    type Error = PolicyError;

    fn try_from(rows: [TierRow; 4]) -> Result<Self, Self::Error> {
        for (i, tier) in Tier::ALL.into_iter().enumerate() {
            let row = rows[i];
            if row.bootstrap_nodes < 1 {
                return Err(PolicyError::Table(format!(
                    "tiers.{tier}.bootstrapNodes must be at least 1, got 0"
                )));
            }
            if (tier == Tier::Xlarge) != row.max_workers.is_none() {
                return Err(PolicyError::Table(format!(
                    "tiers.{tier}.maxWorkers must be {}",
                    if tier == Tier::Xlarge { "unset (the last tier is unbounded)" } else { "set" }
                )));
            }
            if i == 0 {
                continue;
            }
            let prev = rows[i - 1];
            let prev_tier = Tier::ALL[i - 1];
            if let (Some(before), Some(now)) = (prev.max_workers, row.max_workers) {
                if now <= before {
                    return Err(PolicyError::Table(format!(
                        "tiers.{tier}.maxWorkers ({now}) must be greater than tiers.{prev_tier}.maxWorkers ({before})"
                    )));
                }
            }
            if row.bootstrap_nodes < prev.bootstrap_nodes {
                return Err(PolicyError::Table(format!(
                    "tiers.{tier}.bootstrapNodes ({}) must not be less than tiers.{prev_tier}.bootstrapNodes ({})",
                    row.bootstrap_nodes, prev.bootstrap_nodes
                )));
            }
        }
        Ok(TierTable { rows })
    }
}

impl From<TierTable> for [TierRow; 4] {
    fn from(table: TierTable) -> Self {
        table.rows
    }
}

/// Whether workers per bootstrap node is within `max_workers_per_bootstrap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RatioStatus {
    #[serde(rename = "OK")]
    Ok,
    Warning,
}

impl RatioStatus {
    pub fn name(self) -> &'static str {
        match self {
            RatioStatus::Ok => "OK",
            RatioStatus::Warning => "Warning",
        }
    }
}

impl fmt::Display for RatioStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown strategy {0:?}: expected one of adaptive, small, medium, large, xlarge, proportional")]
    UnknownStrategy(String),
    #[error("invalid tier table: {0}")]
    Table(String),
    #[error(
        "maxBootstrapNodes ({max}) must be at least the largest tier's bootstrapNodes ({largest})"
    )]
    MaxBelowLargestTier { max: u32, largest: u32 },
    #[error("maxWorkersPerBootstrap must be at least 1, got 0")]
    ZeroWorkersPerBootstrap,
}

/// Everything the policy needs besides the worker count and the clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierPolicy {
    pub strategy: TierStrategy,
    pub table: TierTable,
    /// Above this many workers per bootstrap node the ratio status is `Warning`.
    pub max_workers_per_bootstrap: u32,
    /// Upper bound on bootstrap replicas, whatever the strategy.
    pub max_bootstrap_nodes: u32,
    /// How long a lower bootstrap count must stay right before the tier shrinks.
    pub scale_down_stabilization: Duration,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            strategy: TierStrategy::Adaptive,
            table: TierTable::default(),
            max_workers_per_bootstrap: 50,
            max_bootstrap_nodes: 20,
            scale_down_stabilization: Duration::from_secs(300),
        }
    }
}

/// The policy's answer for one worker count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierPlan {
    pub workers: u32,
    /// The tier in force: the worker count's tier (or the fixed tier), except while a
    /// scale-down waits out its window, when it is still the tier being left.
    pub tier: Tier,
    /// Bootstrap replicas to run now, after stabilization.
    pub bootstrap_replicas: u32,
    /// Bootstrap replicas the worker count calls for, before stabilization.
    pub target_bootstrap_replicas: u32,
    /// Workers per bootstrap node, at `bootstrap_replicas`.
    pub ratio: f64,
    pub ratio_status: RatioStatus,
    /// Since when a lower bootstrap count has been right; set while a scale-down waits.
    pub scale_down_pending_since: Option<SystemTime>,
    /// One sentence on why, for events and status messages.
    pub reason: String,
}

impl TierPolicy {
    /// Checks the cross-field rules that a table alone cannot.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_workers_per_bootstrap == 0 {
            return Err(PolicyError::ZeroWorkersPerBootstrap);
        }
        let largest = self.table.largest_bootstrap_nodes();
        if self.max_bootstrap_nodes < largest {
            return Err(PolicyError::MaxBelowLargestTier {
                max: self.max_bootstrap_nodes,
                largest,
            });
        }
        Ok(())
    }

    /// Bootstrap replicas the worker count calls for, ignoring stabilization.
    pub fn target(&self, workers: u32) -> (Tier, u32) {
        let adaptive_tier = self.table.tier_for(workers);
        let (tier, count) = match self.strategy {
            TierStrategy::Adaptive => {
                (adaptive_tier, self.table.row(adaptive_tier).bootstrap_nodes)
            }
            TierStrategy::Fixed(tier) => (tier, self.table.row(tier).bootstrap_nodes),
            TierStrategy::Proportional => {
                let per = self.max_workers_per_bootstrap.max(1);
                let needed = workers.div_ceil(per);
                (adaptive_tier, self.table.row(adaptive_tier).bootstrap_nodes.max(needed))
            }
        };
        (tier, count.clamp(1, self.max_bootstrap_nodes.max(1)))
    }

    /// The plan for `workers` now, given the plan in force before (if any).
    ///
    /// Growth is immediate. Shrinking waits until a lower count has been right for
    /// `scale_down_stabilization`, measured from `previous.scale_down_pending_since`, so a
    /// restart of the caller (which keeps the previous plan in status) forgets nothing.
    pub fn plan(&self, workers: u32, previous: Option<&TierPlan>, now: SystemTime) -> TierPlan {
        let (target_tier, target) = self.target(workers);
        let (tier, replicas, pending_since, reason) = match previous {
            Some(prev) if target < prev.bootstrap_replicas => {
                let since = prev.scale_down_pending_since.unwrap_or(now);
                let waited = now.duration_since(since).unwrap_or_default();
                if waited >= self.scale_down_stabilization {
                    (
                        target_tier,
                        target,
                        None,
                        format!(
                            "{workers} workers: scaled down to {target} bootstrap nodes after {}s of stability",
                            waited.as_secs()
                        ),
                    )
                } else {
                    let left = self.scale_down_stabilization - waited;
                    (
                        prev.tier,
                        prev.bootstrap_replicas,
                        Some(since),
                        format!(
                            "{workers} workers call for {target} bootstrap nodes; keeping {} for another {}s of stabilization",
                            prev.bootstrap_replicas,
                            left.as_secs()
                        ),
                    )
                }
            }
            _ => (
                target_tier,
                target,
                None,
                format!(
                    "{workers} workers: tier {target_tier} ({} strategy) gives {target} bootstrap nodes",
                    self.strategy
                ),
            ),
        };
        let ratio = ratio(workers, replicas);
        let ratio_status = if ratio <= f64::from(self.max_workers_per_bootstrap) {
            RatioStatus::Ok
        } else {
            RatioStatus::Warning
        };
        TierPlan {
            workers,
            tier,
            bootstrap_replicas: replicas,
            target_bootstrap_replicas: target,
            ratio,
            ratio_status,
            scale_down_pending_since: pending_since,
            reason,
        }
    }
}

/// Workers per bootstrap node; a tier with no bootstrap node counts as one.
pub fn ratio(workers: u32, bootstrap_nodes: u32) -> f64 {
    f64::from(workers) / f64::from(bootstrap_nodes.max(1))
}

/// The ratio as the seed wrote it: `25.0:1`.
pub fn format_ratio(ratio: f64) -> String {
    format!("{ratio:.1}:1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seed_boundaries_adaptive() {
        let policy = TierPolicy::default();
        let cases = [
            (0, Tier::Small, 2),
            (15, Tier::Small, 2),
            (16, Tier::Medium, 3),
            (50, Tier::Medium, 3),
            (51, Tier::Large, 4),
            (200, Tier::Large, 4),
            (201, Tier::Xlarge, 6),
            (500, Tier::Xlarge, 6),
        ];
        for (workers, tier, nodes) in cases {
            let plan = policy.plan(workers, None, t(0));
            assert_eq!((plan.tier, plan.bootstrap_replicas), (tier, nodes), "{workers} workers");
        }
    }

    #[test]
    fn seed_ratio_analysis() {
        let policy = TierPolicy::default();
        let expect = [
            (15, "7.5:1", RatioStatus::Ok),
            (30, "10.0:1", RatioStatus::Ok),
            (100, "25.0:1", RatioStatus::Ok),
            (200, "50.0:1", RatioStatus::Ok),
            (500, "83.3:1", RatioStatus::Warning),
        ];
        for (workers, text, status) in expect {
            let plan = policy.plan(workers, None, t(0));
            assert_eq!(format_ratio(plan.ratio), text, "{workers} workers");
            assert_eq!(plan.ratio_status, status, "{workers} workers");
        }
    }

    #[test]
    fn proportional_keeps_ratio_within_limit_up_to_cap() {
        let policy = TierPolicy { strategy: TierStrategy::Proportional, ..TierPolicy::default() };
        assert_eq!(policy.plan(10, None, t(0)).bootstrap_replicas, 2);
        assert_eq!(policy.plan(500, None, t(0)).bootstrap_replicas, 10);
        assert_eq!(policy.plan(500, None, t(0)).ratio_status, RatioStatus::Ok);
        assert_eq!(policy.plan(501, None, t(0)).bootstrap_replicas, 11);
        // 2,000 workers want 40, capped at 20, and the warning says so.
        let capped = policy.plan(2000, None, t(0));
        assert_eq!(capped.bootstrap_replicas, 20);
        assert_eq!(capped.ratio_status, RatioStatus::Warning);
    }

    #[test]
    fn fixed_strategy_ignores_worker_count() {
        let policy =
            TierPolicy { strategy: TierStrategy::Fixed(Tier::Large), ..TierPolicy::default() };
        for workers in [0, 16, 1000] {
            let plan = policy.plan(workers, None, t(0));
            assert_eq!((plan.tier, plan.bootstrap_replicas), (Tier::Large, 4));
        }
    }

    #[test]
    fn scale_up_is_immediate() {
        let policy = TierPolicy::default();
        let small = policy.plan(10, None, t(0));
        let xl = policy.plan(300, Some(&small), t(1));
        assert_eq!(xl.bootstrap_replicas, 6);
        assert_eq!(xl.scale_down_pending_since, None);
    }

    #[test]
    fn scale_down_waits_for_the_window() {
        let policy = TierPolicy::default();
        let xl = policy.plan(300, None, t(0));
        let waiting = policy.plan(10, Some(&xl), t(100));
        assert_eq!(waiting.bootstrap_replicas, 6);
        assert_eq!(waiting.target_bootstrap_replicas, 2);
        assert_eq!(waiting.scale_down_pending_since, Some(t(100)));
        assert_eq!(waiting.tier, Tier::Xlarge, "the tier in force until the window ends");
        let still = policy.plan(10, Some(&waiting), t(399));
        assert_eq!(still.bootstrap_replicas, 6);
        assert_eq!(still.scale_down_pending_since, Some(t(100)));
        let done = policy.plan(10, Some(&still), t(400));
        assert_eq!((done.tier, done.bootstrap_replicas), (Tier::Small, 2));
        assert_eq!(done.scale_down_pending_since, None);
    }

    #[test]
    fn wobble_around_a_boundary_does_not_flap() {
        let policy = TierPolicy::default();
        let mut plan = policy.plan(51, None, t(0));
        for (i, workers) in [50, 51, 49, 52, 50].into_iter().enumerate() {
            plan = policy.plan(workers, Some(&plan), t(60 * (i as u64 + 1)));
            assert_eq!(plan.bootstrap_replicas, 4, "step {i}: {workers} workers");
        }
    }

    #[test]
    fn returning_to_the_current_count_clears_the_clock() {
        let policy = TierPolicy::default();
        let large = policy.plan(100, None, t(0));
        let waiting = policy.plan(20, Some(&large), t(10));
        let back = policy.plan(100, Some(&waiting), t(20));
        assert_eq!(back.scale_down_pending_since, None);
        // The window starts again from the next drop, not the first.
        let again = policy.plan(20, Some(&back), t(300));
        assert_eq!(again.bootstrap_replicas, 4);
        assert_eq!(again.scale_down_pending_since, Some(t(300)));
    }

    #[test]
    fn table_rules_name_the_field() {
        let err = TierTable::new([15, 15, 200], [2, 3, 4, 6]).unwrap_err();
        assert!(err.to_string().contains("tiers.medium.maxWorkers"), "{err}");
        let err = TierTable::new([15, 50, 200], [2, 3, 2, 6]).unwrap_err();
        assert!(err.to_string().contains("tiers.large.bootstrapNodes"), "{err}");
        let err = TierTable::new([15, 50, 200], [0, 3, 4, 6]).unwrap_err();
        assert!(err.to_string().contains("tiers.small.bootstrapNodes"), "{err}");
        assert!(TierTable::new([10, 20, 30], [1, 1, 1, 1]).is_ok());
    }

    #[test]
    fn policy_rules_name_the_field() {
        let policy = TierPolicy { max_bootstrap_nodes: 5, ..TierPolicy::default() };
        assert!(policy.validate().unwrap_err().to_string().contains("maxBootstrapNodes"));
        let policy = TierPolicy { max_workers_per_bootstrap: 0, ..TierPolicy::default() };
        assert!(policy.validate().unwrap_err().to_string().contains("maxWorkersPerBootstrap"));
        assert!(TierPolicy::default().validate().is_ok());
    }

    #[test]
    fn custom_table_moves_boundaries() {
        let table = TierTable::new([5, 10, 20], [1, 2, 3, 8]).unwrap();
        let policy = TierPolicy { table, ..TierPolicy::default() };
        assert_eq!(policy.plan(5, None, t(0)).bootstrap_replicas, 1);
        assert_eq!(policy.plan(6, None, t(0)).bootstrap_replicas, 2);
        assert_eq!(policy.plan(21, None, t(0)).bootstrap_replicas, 8);
    }

    #[test]
    fn strategy_names_round_trip() {
        for name in TierStrategy::NAMES {
            assert_eq!(name.parse::<TierStrategy>().unwrap().name(), name);
        }
        assert!("huge".parse::<TierStrategy>().unwrap_err().to_string().contains("huge"));
    }
}
