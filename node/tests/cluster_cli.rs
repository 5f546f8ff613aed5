//! The built `dht-node cluster` binary: scenario file, stdin commands, exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn dht_node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dht-node"))
}

fn scenario_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kadscale-{name}-{}.txt", std::process::id()));
    std::fs::write(&path, text).expect("writing the scenario");
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = dht_node()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("dht-node ends")
}

#[test]
fn a_scenario_runs_and_prints_the_tier() {
    let scenario = scenario_file("cli-scenario", "put greeting hello\nget greeting\nstatus\n");
    let output = dht_node()
        .args(["cluster", "--workers", "10", "--scenario"])
        .arg(&scenario)
        .stdin(Stdio::null())
        .output()
        .expect("dht-node runs");
    let _ = std::fs::remove_file(&scenario);
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        text(&output.stderr)
    );
    assert!(stdout.contains("\ntier          small\n"), "{stdout}");
    assert!(stdout.contains("workers       10/10 joined"), "{stdout}");
    assert!(stdout.contains("bootstrap     2 running of 2 planned"), "{stdout}");
    assert!(stdout.contains("get greeting: hello"), "{stdout}");
    assert!(stdout.contains("== final =="), "{stdout}");
}

#[test]
fn a_bad_scenario_line_fails_before_anything_starts() {
    let scenario = scenario_file("cli-bad", "workers 12\nfly away\n");
    let output = dht_node()
        .args(["cluster", "--workers", "3", "--scenario"])
        .arg(&scenario)
        .output()
        .expect("dht-node runs");
    let _ = std::fs::remove_file(&scenario);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: unknown command \"fly\""), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing ran: {}", text(&output.stdout));
}

#[test]
fn stdin_commands_run_until_eof_and_bad_lines_are_skipped() {
    let output = run_with_stdin(&["cluster", "--workers", "3"], "workers 4\nbogus 1\nstatus\n");
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "exit {:?}\n{stdout}\n{stderr}", output.status);
    assert!(stderr.contains("stdin line 2: unknown command \"bogus\""), "{stderr}");
    assert!(stdout.contains("== status"), "{stdout}");
    assert!(stdout.contains("workers       4/4 joined"), "{stdout}");
}

#[test]
fn a_failing_command_in_a_scenario_exits_1_naming_the_line() {
    let scenario = scenario_file("cli-fail", "status\nkill-bootstrap 5\nstatus\n");
    let output = dht_node()
        .args(["cluster", "--workers", "2", "--scenario"])
        .arg(&scenario)
        .output()
        .expect("dht-node runs");
    let _ = std::fs::remove_file(&scenario);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 2 (kill-bootstrap 5)"), "{stderr}");
    assert!(stderr.contains("no bootstrap node 5"), "{stderr}");
}

#[test]
fn sigint_while_reading_stdin_ends_with_the_final_report() {
    let mut child = dht_node()
        .args(["cluster", "--workers", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    // The start report comes before stdin is read; stdin stays open, so only a signal ends it.
    while !seen.contains("joined") {
        assert_ne!(stdout.read_line(&mut seen).expect("reading stdout"), 0, "ended: {seen}");
    }
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill only sends a signal, to the child this owns (not yet waited for).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    stdout.read_to_string(&mut seen).expect("reading stdout");
    let output = child.wait_with_output().expect("dht-node ends");
    assert!(output.status.success(), "exit {:?}\n{seen}\n{}", output.status, text(&output.stderr));
    assert!(seen.contains("== final =="), "{seen}");
}

#[test]
fn cluster_help_is_the_cluster_binarys() {
    let output = dht_node().args(["cluster", "--help"]).output().expect("dht-node runs");
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.starts_with(kadscale_node::cluster::SUMMARY), "{stdout}");
    assert!(stdout.contains("Usage: dht-node cluster [OPTIONS]"), "{stdout}");
    assert!(stdout.contains("--workers <N>"), "{stdout}");
}

#[test]
fn without_the_cluster_binary_the_error_names_it() {
    let dir = std::env::temp_dir().join(format!("kadscale-lone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating a directory");
    let lone = dir.join("dht-node");
    let built = env!("CARGO_BIN_EXE_dht-node");
    if std::fs::hard_link(built, &lone).is_err() {
        std::fs::copy(built, &lone).expect("copying dht-node");
    }
    let output = Command::new(&lone).args(["cluster", "--workers", "2"]).output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.expect("dht-node runs");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(kadscale_node::cli::CLUSTER_BINARY), "{stderr}");
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let scenario = scenario_file("cli-closed", "status\nstatus\n");
    let mut child = dht_node()
        .args(["cluster", "--workers", "2", "--scenario"])
        .arg(&scenario)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    // The reading end closes before anything is written, as when `| head` has had its lines.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("dht-node ends");
    let _ = std::fs::remove_file(&scenario);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("writing to stdout"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
