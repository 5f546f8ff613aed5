//! The OCI image archive that `just image-oci` (image/build-oci.sh) builds without Docker:
//! index → manifest → config (non-root user, dht-node entrypoint), every blob's digest, and the
//! layer's two binaries, which must be static and run.
//!
//! Uses KADSCALE_IMAGE_OCI, else target/image/kadscale-VERSION.oci.tar; skips loudly when
//! neither exists unless KADSCALE_E2E_REQUIRED is set.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use kadscale_e2e::paths::{artifacts_dir, skip_or_fail, target_dir};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const NON_ROOT_UID: &str = "65532";
const BINARIES: [&str; 2] = ["dht-node", "dht-operator"];

#[test]
fn oci_archive_holds_a_runnable_non_root_image() -> Result<()> {
    let archive = std::env::var_os("KADSCALE_IMAGE_OCI")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join(format!("image/kadscale-{VERSION}.oci.tar")));
    if !archive.exists() {
        skip_or_fail(
            "oci_archive_holds_a_runnable_non_root_image",
            &format!("{} does not exist", archive.display()),
            "`just image-oci` builds it",
        );
        return Ok(());
    }
    let work = ScratchDir::new("image")?;
    let layout = work.path.join("layout");
    fs::create_dir_all(&layout)?;
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout))?;

    let oci_layout = read_json(&layout.join("oci-layout"))?;
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");

    // index → the manifest tagged with the workspace version.
    let index = read_json(&layout.join("index.json"))?;
    let manifests = index["manifests"].as_array().context("index.json: manifests")?;
    let tagged = manifests
        .iter()
        .find(|descriptor| {
            descriptor["annotations"]["org.opencontainers.image.ref.name"] == VERSION
        })
        .with_context(|| format!("index.json has no manifest tagged {VERSION}: {index}"))?;
    assert_eq!(tagged["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let manifest: Value = serde_json::from_slice(&blob(&layout, tagged)?)?;

    // manifest → config: platform, user, entrypoint, environment, ports.
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let config: Value = serde_json::from_slice(&blob(&layout, &manifest["config"])?)?;
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    let user = config["config"]["User"].as_str().context("config.User")?;
    let uid = user.split(':').next().unwrap_or_default();
    assert_eq!(uid, NON_ROOT_UID, "the image must run as uid {NON_ROOT_UID}, not {user:?}");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/dht-node"]));
    let env = config["config"]["Env"].as_array().context("config.Env")?;
    assert!(env.iter().any(|var| var == "PATH=/usr/local/bin"), "config.Env: {env:?}");
    assert!(config["config"]["ExposedPorts"]["5678/udp"].is_object(), "5678/udp must be exposed");

    // manifest → layers, unpacked in order into one root file system.
    let layers = manifest["layers"].as_array().context("manifest: layers")?;
    ensure!(!layers.is_empty(), "the manifest has no layers");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().context("config: rootfs.diff_ids")?;
    assert_eq!(diff_ids.len(), layers.len(), "one diff_id per layer");
    let rootfs = work.path.join("rootfs");
    fs::create_dir_all(&rootfs)?;
    for (index, layer) in layers.iter().enumerate() {
        let media_type = layer["mediaType"].as_str().context("layer mediaType")?;
        let compressed = blob_path(&layout, layer)?;
        blob(&layout, layer)?;
        let tar = work.path.join(format!("layer-{index}.tar"));
        match media_type {
            "application/vnd.oci.image.layer.v1.tar+gzip" => {
                let output = Command::new("gzip").arg("-dc").arg(&compressed).output()?;
                ensure!(output.status.success(), "layer {index} is not valid gzip");
                fs::write(&tar, output.stdout)?;
            }
            "application/vnd.oci.image.layer.v1.tar" => {
                fs::copy(&compressed, &tar)?;
            }
            other => bail!("unexpected layer media type {other}"),
        }
        ensure_complete_tar(&tar).with_context(|| format!("layer {index} ({media_type})"))?;
        run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&rootfs))?;
    }

    let passwd =
        fs::read_to_string(rootfs.join("etc/passwd")).context("the image's /etc/passwd")?;
    assert!(
        passwd.lines().any(|line| line.split(':').nth(2) == Some(NON_ROOT_UID)),
        "/etc/passwd must name uid {NON_ROOT_UID}:\n{passwd}"
    );
    for name in BINARIES {
        let binary = rootfs.join("usr/local/bin").join(name);
        let bytes =
            fs::read(&binary).with_context(|| format!("/usr/local/bin/{name} in the image"))?;
        ensure!(
            is_static_elf(&bytes)?,
            "/usr/local/bin/{name} is dynamically linked (has PT_INTERP)"
        );
        let output = Command::new(&binary).arg("--version").env_clear().output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success() && stdout.contains(VERSION),
            "{name} --version: {} stdout {stdout:?} stderr {:?}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Where a descriptor's blob lives in the layout.
fn blob_path(layout: &Path, descriptor: &Value) -> Result<PathBuf> {
    let digest = descriptor["digest"].as_str().context("descriptor without digest")?;
    let hex =
        digest.strip_prefix("sha256:").with_context(|| format!("digest {digest} is not sha256"))?;
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "malformed digest {digest}"
    );
    Ok(layout.join("blobs/sha256").join(hex))
}

/// A descriptor's blob, checked against the descriptor's size and sha256 digest.
fn blob(layout: &Path, descriptor: &Value) -> Result<Vec<u8>> {
    let path = blob_path(layout, descriptor)?;
    let bytes = fs::read(&path).with_context(|| format!("reading blob {}", path.display()))?;
    let size = descriptor["size"].as_u64().context("descriptor without size")?;
    ensure!(
        bytes.len() as u64 == size,
        "{}: {} bytes, descriptor says {size}",
        path.display(),
        bytes.len()
    );
    let sum = run(Command::new("sha256sum").arg(&path))?;
    let actual = sum.split_whitespace().next().unwrap_or_default();
    let expected = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
    ensure!(actual == expected, "{}: content hashes to sha256:{actual}", path.display());
    Ok(bytes)
}

/// A tar archive ends with two zero blocks after whole 512-byte blocks; without them GNU tar,
/// Python's tarfile and image scanners refuse the layer. (umoci before 0.4.8 wrote `umoci
/// insert` layers without them: opencontainers/umoci#436.)
fn ensure_complete_tar(path: &Path) -> Result<()> {
    const BLOCK: u64 = 512;
    let mut file = fs::File::open(path)?;
    let length = file.metadata()?.len();
    ensure!(
        length % BLOCK == 0 && length >= 2 * BLOCK,
        "the tar stream is {length} bytes, not whole 512-byte blocks ending in the two-block \
         end-of-archive marker: the archive was not closed (umoci < 0.4.8, opencontainers/umoci#436)"
    );
    let mut trailer = [0u8; 2 * BLOCK as usize];
    file.seek(SeekFrom::End(-(2 * BLOCK as i64)))?;
    file.read_exact(&mut trailer)?;
    ensure!(
        trailer.iter().all(|&byte| byte == 0),
        "the tar stream lacks its end-of-archive marker"
    );
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// Whether a 64-bit little-endian ELF executable has no program interpreter (PT_INTERP), i.e.
/// needs no dynamic loader, so it runs on a scratch base.
fn is_static_elf(bytes: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    ensure!(bytes.len() >= 64 && bytes.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(bytes[4] == 2 && bytes[5] == 1, "not a 64-bit little-endian ELF file");
    let u16_at = |offset: usize| u16::from_le_bytes([bytes[offset], bytes[offset + 1]]) as usize;
    let program_headers = u64::from_le_bytes(bytes[0x20..0x28].try_into()?) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    for index in 0..count {
        let start = program_headers + index * entry_size;
        let header = bytes.get(start..start + 4).context("program header table out of bounds")?;
        if u32::from_le_bytes(header.try_into()?) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

fn run(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A directory under target/e2e, removed when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(name: &str) -> Result<ScratchDir> {
        let path = artifacts_dir().join(format!("{name}-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
