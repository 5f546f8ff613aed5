//! `dht-node`: see `dht-node --help` and [`kadscale_node::cli`].

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    kadscale_node::cli::run(kadscale_node::cli::Cli::parse()).await
}
