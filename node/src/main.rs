//! `dht-node`: see `dht-node --help` and [`kadscale_node::cli`].

use std::process::ExitCode;

use clap::Parser;
use kadscale_node::cli::{run, Cli};

// The allocator: see kadscale_node::allocator.
#[global_allocator]
static ALLOCATOR: kadscale_node::allocator::NodeAllocator = kadscale_node::allocator::NodeAllocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.runtime() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            eprintln!("dht-node: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
