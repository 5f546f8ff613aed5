//! Running kubectl, helm and cargo with a deadline and errors that quote the command.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// Runs `program args...` to completion within `timeout`; returns its stdout, or an error with
/// the command line, exit status and stderr.
pub async fn run<I, S>(program: impl AsRef<Path>, args: I, timeout: Duration) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let program = program.as_ref();
    let args: Vec<_> = args.into_iter().map(|arg| arg.as_ref().to_owned()).collect();
    let command_line = std::iter::once(program.as_os_str())
        .chain(args.iter().map(|arg| arg.as_os_str()))
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program).args(&args).kill_on_drop(true).output();
    let output = tokio::time::timeout(timeout, output)
        .await
        .with_context(|| format!("`{command_line}` did not finish within {timeout:?}"))?
        .with_context(|| format!("could not start `{command_line}`"))?;
    if !output.status.success() {
        bail!(
            "`{command_line}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{command_line}` printed non-UTF-8"))
}

/// `kubectl ARGS...` with the tests' `KUBECONFIG` (the cluster admin).
pub async fn kubectl<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("kubectl", args, Duration::from_secs(60)).await
}
