//! `dht-node`: see `dht-node --help` and [`kadscale_node::cli`].

use std::process::ExitCode;

use clap::Parser;
use kadscale_node::cli::{run, Cli};

// musl's allocator hands freed memory back to the kernel at once: a worker process joining
// paid about 45 mmap and munmap calls for it, a sixth of its join's CPU. dlmalloc keeps it.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

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
