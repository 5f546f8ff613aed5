//! CPU time and memory of a process, read from /proc/PID (Linux), for the operator benchmark.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// One reading of a process's resource use.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Usage {
    /// User plus system CPU time since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now (VmRSS).
    pub rss_bytes: u64,
    /// Highest resident set size since the process started (VmHWM).
    pub peak_rss_bytes: u64,
}

/// Clock ticks per second of /proc/PID/stat's times (`getconf CLK_TCK`; 100 on Linux when
/// getconf is missing).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// Reads /proc/PID/stat and /proc/PID/status.
pub fn usage(pid: u32, ticks_per_second: u64) -> Result<Usage> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the process exited?)"))?;
    let status = std::fs::read_to_string(dir.join("status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = cpu_ticks(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
    Ok(Usage {
        cpu_seconds: ticks as f64 / ticks_per_second as f64,
        rss_bytes: status_kilobytes(&status, "VmRSS")
            .with_context(|| format!("parsing /proc/{pid}/status"))?
            * 1024,
        peak_rss_bytes: status_kilobytes(&status, "VmHWM")
            .with_context(|| format!("parsing /proc/{pid}/status"))?
            * 1024,
    })
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted after the last ')'.
fn cpu_ticks(stat: &str) -> Result<u64> {
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no ')' after comm")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let field = |number: usize| -> Result<u64> {
        let text = fields.get(number - 3).with_context(|| format!("field {number} missing"))?;
        text.parse().with_context(|| format!("field {number} is {text:?}, not a count"))
    };
    Ok(field(14)? + field(15)?)
}

/// The value of a `NAME:   123 kB` line of /proc/PID/status, in kB.
fn status_kilobytes(status: &str, name: &str) -> Result<u64> {
    let Some(line) = status.lines().find(|line| line.split(':').next() == Some(name)) else {
        bail!("no {name} line");
    };
    let value = line.split_whitespace().nth(1).with_context(|| format!("{name} has no value"))?;
    value.parse().with_context(|| format!("{name} is {value:?}, not a number of kB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may set it.
        let stat = "4242 (dht op) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 731 269 0 0 20 0 \
                    6 0 123 456789 1234 18446744073709551615";
        assert_eq!(cpu_ticks(stat).unwrap(), 1000);
        assert!(cpu_ticks("4242 (dht-operator) S 1").is_err(), "too few fields");
    }

    #[test]
    fn status_lines_are_read_in_kilobytes() {
        let status = "Name:\tdht-operator\nVmHWM:\t   20480 kB\nVmRSS:\t   18000 kB\n";
        assert_eq!(status_kilobytes(status, "VmHWM").unwrap(), 20480);
        assert_eq!(status_kilobytes(status, "VmRSS").unwrap(), 18000);
        assert!(status_kilobytes(status, "VmSwap").is_err());
    }

    #[test]
    fn this_process_uses_memory() {
        let usage = usage(std::process::id(), clock_ticks_per_second()).unwrap();
        assert!(usage.rss_bytes > 0 && usage.peak_rss_bytes >= usage.rss_bytes, "{usage:?}");
    }
}
