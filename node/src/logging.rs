//! tracing output on stderr, as text for people or JSON lines for log collectors.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global subscriber at `default_level`, unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat, default_level: LevelFilter) {
    let (filter, refused) = filter_of(std::env::var("RUST_LOG").ok().as_deref(), default_level);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    // A second call (tests) finds a subscriber installed already; the first one stays.
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Some(error) = refused {
        tracing::warn!(%error, "RUST_LOG ignored: expected a level or target=level pairs");
    }
}

/// The filter `RUST_LOG` gives (`debug`, `kadscale_node=debug,warn`: a level, or target=level
/// pairs), or `default_level` with the reason `RUST_LOG` was refused. `Targets`, not
/// `EnvFilter`: it reads the same directives without a regex engine, a large part of the binary.
fn filter_of(rust_log: Option<&str>, default_level: LevelFilter) -> (Targets, Option<String>) {
    let default = Targets::new().with_default(default_level);
    match rust_log.map(str::trim).filter(|text| !text.is_empty()).map(str::parse::<Targets>) {
        None => (default, None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(error)) => (default, Some(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_a_bad_one_keeps_the_default() {
        let (filter, refused) =
            filter_of(Some("kadscale_node::transport=debug,warn"), LevelFilter::INFO);
        assert!(refused.is_none());
        assert!(filter.would_enable("kadscale_node::transport", &Level::DEBUG));
        assert!(!filter.would_enable("kadscale_node::node", &Level::INFO));
        assert!(filter.would_enable("kadscale_node::node", &Level::WARN));

        let (filter, refused) = filter_of(None, LevelFilter::INFO);
        assert!(refused.is_none());
        assert!(filter.would_enable("anything", &Level::INFO));
        assert!(!filter.would_enable("anything", &Level::DEBUG));

        let (filter, refused) = filter_of(Some("kadscale_node=loud"), LevelFilter::ERROR);
        assert!(refused.is_some_and(|reason| !reason.is_empty()));
        assert!(filter.would_enable("kadscale_node", &Level::ERROR));
        assert!(!filter.would_enable("kadscale_node", &Level::WARN));
    }
}
