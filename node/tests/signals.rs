//! The built `dht-node`: SIGTERM (a pod being stopped) and SIGINT (Ctrl-C) end a bootstrap node
//! and a worker cleanly, with exit status 0 and the signal named in the log.

mod support;

use std::time::Duration;

use support::{wait_for, DhtProcess, LogDir, JOINED, LISTENING};

const LIMIT: Duration = Duration::from_secs(10);

fn node(role: &str, extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> =
        [role, "--host", "127.0.0.1", "--port", "0", "--admin-addr", "127.0.0.1:0"]
            .into_iter()
            .map(String::from)
            .collect();
    args.extend_from_slice(extra);
    args
}

async fn logged(process: &DhtProcess, message: &str) -> support::LogLine {
    wait_for(message, LIMIT, || process.first(message).ok_or_else(|| "not yet".to_owned())).await
}

fn assert_stopped_by(process: &mut DhtProcess, signal: libc::c_int, name: &str) {
    let status = process.stop(signal, LIMIT);
    assert!(status.success(), "{name}: {status}\n{}", process.describe());
    let line = process.first("shutting down").unwrap_or_else(|| panic!("{}", process.describe()));
    assert_eq!(line.field("signal"), Some(name));
}

#[tokio::test]
async fn sigterm_and_sigint_end_nodes_cleanly() {
    let logs = LogDir::new("signals");
    let mut bootstrap = DhtProcess::spawn("bootstrap", node("bootstrap", &[]), &logs);
    let addr = logged(&bootstrap, LISTENING).await.addr();
    let mut worker = DhtProcess::spawn(
        "worker",
        node("worker", &["--bootstrap".into(), addr.to_string()]),
        &logs,
    );
    logged(&worker, JOINED).await;

    assert_stopped_by(&mut worker, libc::SIGINT, "SIGINT");
    assert_stopped_by(&mut bootstrap, libc::SIGTERM, "SIGTERM");
}
