//! The table `dht-node cluster` prints: tier, bootstrap nodes, workers joined, ratio, join
//! times and the joins each bootstrap node served.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::tier::{format_ratio, TierPlan};

/// One bootstrap node as the table shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct BootstrapRow {
    pub index: usize,
    pub addr: SocketAddr,
    pub running: bool,
    /// `kadscale_joined` notices this incarnation of the node received: the joins it served.
    pub joins_served: u64,
    pub routing_table: usize,
}

/// Everything the table shows, as numbers a test can check.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterReport {
    /// The plan in force (tier, replicas, ratio and its status, reason).
    pub plan: TierPlan,
    pub max_workers_per_bootstrap: u32,
    pub workers: usize,
    pub workers_joined: usize,
    /// Join times of the running workers: from the node's start to its manager's success.
    pub join_p50: Option<Duration>,
    pub join_p99: Option<Duration>,
    /// From the start of the last scale-up to its last worker joined; `None` while waiting.
    pub last_scale_up: Option<ScaleUp>,
    pub bootstraps: Vec<BootstrapRow>,
}

/// How the last scale-up went.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleUp {
    pub added: usize,
    pub all_joined_after: Duration,
}

impl ClusterReport {
    pub fn bootstraps_running(&self) -> usize {
        self.bootstraps.iter().filter(|row| row.running).count()
    }

    pub fn joins_served_total(&self) -> u64 {
        self.bootstraps.iter().map(|row| row.joins_served).sum()
    }

    /// The line a person (or a test) greps for: `tier          large`.
    pub fn tier_line(&self) -> String {
        format!("tier          {}", self.plan.tier)
    }
}

/// The value at `quantile` (0..=1) of `samples` by nearest rank; `None` when empty.
pub fn percentile(samples: &[Duration], quantile: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (quantile.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
}

impl fmt::Display for ClusterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = &self.plan;
        writeln!(f, "{}", self.tier_line())?;
        writeln!(f, "              {}", plan.reason)?;
        writeln!(
            f,
            "bootstrap     {} running of {} planned",
            self.bootstraps_running(),
            plan.bootstrap_replicas
        )?;
        writeln!(f, "workers       {}/{} joined", self.workers_joined, self.workers)?;
        writeln!(
            f,
            "ratio         {} {} (limit {}:1)",
            format_ratio(plan.ratio),
            plan.ratio_status,
            self.max_workers_per_bootstrap
        )?;
        write!(f, "join time     p50 {}  p99 {}", millis(self.join_p50), millis(self.join_p99))?;
        match self.last_scale_up {
            Some(ScaleUp { added, all_joined_after }) => writeln!(
                f,
                "  (last scale-up: {added} workers all joined in {:.2} s)",
                all_joined_after.as_secs_f64()
            )?,
            None => writeln!(f)?,
        }
        writeln!(f, "bootstrap  address                state    joins served  routing table")?;
        for row in &self.bootstraps {
            writeln!(
                f,
                "{:<10} {:<22} {:<8} {:>12}  {:>13}",
                row.index,
                row.addr.to_string(),
                if row.running { "running" } else { "stopped" },
                row.joins_served,
                row.routing_table
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::tier::TierPolicy;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&samples, 0.5), Some(ms(50)));
        assert_eq!(percentile(&samples, 0.99), Some(ms(99)));
        assert_eq!(percentile(&samples, 1.0), Some(ms(100)));
        assert_eq!(percentile(&[ms(7)], 0.99), Some(ms(7)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn the_table_shows_every_figure() {
        let plan = TierPolicy::default().plan(60, None, SystemTime::UNIX_EPOCH);
        let report = ClusterReport {
            plan,
            max_workers_per_bootstrap: 50,
            workers: 60,
            workers_joined: 59,
            join_p50: Some(ms(12)),
            join_p99: Some(Duration::from_micros(80_250)),
            last_scale_up: Some(ScaleUp { added: 50, all_joined_after: ms(410) }),
            bootstraps: vec![
                BootstrapRow {
                    index: 0,
                    addr: "127.0.0.1:5678".parse().unwrap(),
                    running: true,
                    joins_served: 31,
                    routing_table: 60,
                },
                BootstrapRow {
                    index: 1,
                    addr: "127.0.0.1:5679".parse().unwrap(),
                    running: false,
                    joins_served: 0,
                    routing_table: 0,
                },
            ],
        };
        let text = report.to_string();
        for expected in [
            "tier          large\n",
            "bootstrap     1 running of 4 planned",
            "workers       59/60 joined",
            "ratio         15.0:1 OK (limit 50:1)",
            "p50 12.0 ms  p99 80.2 ms",
            "50 workers all joined in 0.41 s",
            "127.0.0.1:5678         running            31             60",
            "127.0.0.1:5679         stopped",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in\n{text}");
        }
        assert_eq!(report.joins_served_total(), 31);
    }
}
