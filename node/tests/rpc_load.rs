//! The `rpc-load` generator behind `just bench-rpc`, at a tiny size so that it cannot rot:
//! one second of find_node load on a real `dht-node bootstrap` process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Kills the node however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dht-node bootstrap` on a free loopback port; the port comes from its first log line.
fn start_node() -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dht-node"))
        .args(["bootstrap", "--port", "0", "--host", "127.0.0.1"])
        .args(["--admin-addr", "127.0.0.1:0", "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dht-node starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let node = Running(child);
    let mut lines = BufReader::new(stderr);
    let mut first = String::new();
    lines.read_line(&mut first).expect("dht-node logs a line");
    // Keep reading: dht-node stops when its stderr is closed.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON log line");
    assert_eq!(line["message"], "node listening", "first log line: {first}");
    let addr = line["addr"].as_str().expect("the listening address").to_owned();
    (node, addr)
}

#[test]
fn one_second_of_load_counts_valid_answers_and_the_node_cpu() {
    let (node, addr) = start_node();
    let output = Command::new(env!("CARGO_BIN_EXE_rpc-load"))
        .args(["--target", &addr, "--server-pid", &node.0.id().to_string()])
        .args(["--seed-contacts", "30", "--sockets", "2", "--outstanding", "2,16"])
        .args(["--step-secs", "0.5", "--label", "smoke"])
        .output()
        .expect("rpc-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rpc-load failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["seed_contacts_answered"], 30, "{report:#}");
    let steps = report["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{report:#}");
    for step in steps {
        assert!(step["answers"].as_u64().expect("answers") > 0, "{report:#}");
        assert_eq!(step["malformed"], 0, "{report:#}");
        assert!(step["server_cpu_seconds"].as_f64().is_some(), "{report:#}");
    }
    // The 30 contacts and the 2 load sockets are in the node's table, so answers are full.
    let distinct = steps[0]["distinct_contacts_in_answers"].as_u64().expect("sampled contacts");
    assert!(distinct >= 20, "answers named only {distinct} contacts: {report:#}");
    // Both steps last as long, so the best step is the one with the most answers.
    let most = steps.iter().filter_map(|step| step["answers"].as_u64()).max();
    assert_eq!(report["best"]["answers"].as_u64(), most, "{report:#}");
}

#[test]
fn a_target_off_loopback_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_rpc-load"))
        .args(["--target", "192.0.2.1:5678"])
        .output()
        .expect("rpc-load runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}
