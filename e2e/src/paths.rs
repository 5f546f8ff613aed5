//! Where the tests find the repository, the tools they drive and the place for their logs.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ has a parent").to_path_buf()
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Where operator logs and generated kubeconfigs go; kept after the run for post-mortems.
pub fn artifacts_dir() -> PathBuf {
    target_dir().join("e2e")
}

/// Whether a missing cluster or image fails the tests instead of skipping them.
pub fn e2e_required() -> bool {
    std::env::var("KADSCALE_E2E_REQUIRED").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// The helm binary: `KADSCALE_HELM`, else the link `just cluster-up` makes in e2e/.run/bin, else
/// `helm` on PATH.
pub fn helm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KADSCALE_HELM") {
        return PathBuf::from(path);
    }
    let linked = repo_root().join("e2e/.run/bin/helm");
    if linked.exists() {
        linked
    } else {
        PathBuf::from("helm")
    }
}

/// A test that cannot run here (no cluster, no image): panics when `KADSCALE_E2E_REQUIRED` is
/// set, else prints a loud skip notice and returns, so the caller can return early.
pub fn skip_or_fail(test: &str, reason: &str, remedy: &str) {
    if e2e_required() {
        panic!("KADSCALE_E2E_REQUIRED is set but {reason}; {remedy}");
    }
    // Written to the stderr handle itself, past the test harness's output capture, so the skip
    // is seen even though the test passes.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED e2e test `{test}`: {reason}; {remedy}.\n*** `just test-e2e` prepares \
         everything and runs the suite; KADSCALE_E2E_REQUIRED=1 turns this skip into a failure. ***\n"
    );
}
