//! `dht-node cluster`: a whole DHT in this process on 127.0.0.1 (see [`kadscale_node::cluster`]).
//! dht-node runs this binary for its `cluster` command, so that the nodes pods run do not carry
//! the simulation's code.

use std::process::ExitCode;

use clap::Parser;
use kadscale_node::cluster::{self, ClusterArgs};
use kadscale_node::logging::{self, LogFormat};
use kadscale_node::shutdown::block_shutdown_signals;
use tracing_subscriber::filter::LevelFilter;

// The allocator dht-node runs with.
#[global_allocator]
static ALLOCATOR: kadscale_node::allocator::NodeAllocator = kadscale_node::allocator::NodeAllocator;

// The command line of `dht-node cluster`.
#[derive(Parser)]
#[command(name = "dht-node cluster", version, about = cluster::SUMMARY)]
struct Cli {
    /// Log line format on stderr; RUST_LOG sets the level (default error).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(flatten)]
    cluster: ClusterArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Blocked before the runtime's threads start, so that they inherit the mask.
    if let Err(error) = block_shutdown_signals() {
        eprintln!("dht-node cluster: cannot block SIGTERM and SIGINT: {error}");
        return ExitCode::FAILURE;
    }
    // Hundreds of nodes at once, on every core.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dht-node cluster: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Hundreds of nodes in one process: one warning each would bury the tables.
    logging::init(cli.log_format, LevelFilter::ERROR);
    let code = runtime.block_on(async {
        cluster::run(cli.cluster).await.unwrap_or_else(|error| {
            eprintln!("dht-node cluster: {error:#}");
            ExitCode::from(2)
        })
    });
    // A read of stdin may still hold a thread: the command is done, so it is not waited for.
    runtime.shutdown_background();
    code
}
