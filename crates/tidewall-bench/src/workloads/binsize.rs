//! The size of a minimal release binary per runtime (`crates/tidewall-bench/minimal/*`: one
//! task spawned and joined), and over a std-only baseline doing the same with a thread.
//! Measured as the loaded ELF segments, so debug info and symbol tables do not count; the
//! binary is also run, and must succeed.
//!
//! Build each minimal package **on its own** (`cargo build --release -p runtime-size-tokio`,
//! and so on): built together with anything else, cargo unifies their dependencies' features
//! and the binaries grow.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail, ensure};

use super::Measurement;
use crate::runtimes::RuntimeKind;
use crate::stats::Summary;

pub(super) fn minimal_binary(kind: RuntimeKind) -> anyhow::Result<Measurement> {
    let path = binary_path(kind)?;
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (build it: cargo build --release -p {})",
            path.display(),
            package(kind)
        )
    })?;
    let loaded = loaded_bytes(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    // Its output must not mix with this child's JSON on stdout.
    let status = std::process::Command::new(&path)
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(
        status.success(),
        "{} did not run to its answer: {status}",
        path.display()
    );
    let baseline_path = sibling("runtime-size-std")?;
    let baseline = std::fs::read(&baseline_path).with_context(|| {
        format!(
            "reading {} (build it: cargo build --release -p runtime-size-std)",
            baseline_path.display()
        )
    })?;
    let baseline = loaded_bytes(&baseline)?;
    Ok(Measurement {
        unit: "KiB loaded".to_owned(),
        summary: Summary::of(vec![loaded as f64 / 1024.0]),
        extra: vec![
            (
                "KiB over std baseline".to_owned(),
                // Signed: a runtime can pull in less of std than the baseline's thread does.
                (loaded as f64 - baseline as f64) / 1024.0,
            ),
            (
                "KiB on disk (with debug info)".to_owned(),
                bytes.len() as f64 / 1024.0,
            ),
        ],
        extra_rounds: Vec::new(),
    })
}
/// Whether every minimal binary (and the std baseline) has been built next to this one.
pub(crate) fn all_built() -> bool {
    [
        "runtime-size-std",
        "runtime-size-tokio",
        "runtime-size-smol",
        "runtime-size-async-std",
        "runtime-size-monoio",
        "runtime-size-embassy",
    ]
    .into_iter()
    .all(|name| sibling(name).is_ok_and(|path| path.is_file()))
}

/// How to build them, for the note shown when they are missing.
pub(crate) const BUILD_HINT: &str = "for p in std tokio smol async-std monoio embassy; do cargo build --release -p runtime-size-$p; done";

fn package(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::TokioMt | RuntimeKind::TokioCt => "runtime-size-tokio",
        RuntimeKind::Smol => "runtime-size-smol",
        RuntimeKind::AsyncStd => "runtime-size-async-std",
        RuntimeKind::Monoio => "runtime-size-monoio",
        RuntimeKind::Embassy => "runtime-size-embassy",
    }
}

fn binary_path(kind: RuntimeKind) -> anyhow::Result<PathBuf> {
    sibling(package(kind))
}

/// A binary next to this executable (both are built into the same target directory).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf);
    Ok(dir.join(name))
}

/// The sum of the file sizes of an ELF64 little-endian file's `PT_LOAD` segments.
pub(crate) fn loaded_bytes(elf: &[u8]) -> anyhow::Result<u64> {
    const PT_LOAD: u32 = 1;
    ensure!(
        elf.get(..4) == Some(b"\x7fELF".as_slice()),
        "not an ELF file"
    );
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not ELF64 little-endian"
    );
    let u16_at = |at: usize| -> anyhow::Result<u64> {
        let b = elf.get(at..at + 2).context("truncated ELF header")?;
        Ok(u64::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| -> anyhow::Result<u32> {
        let b = elf.get(at..at + 4).context("truncated ELF header")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| -> anyhow::Result<u64> {
        let b = elf.get(at..at + 8).context("truncated ELF header")?;
        let mut word = [0u8; 8];
        word.copy_from_slice(b);
        Ok(u64::from_le_bytes(word))
    };
    let phoff = usize::try_from(u64_at(0x20)?)?;
    let phentsize = usize::try_from(u16_at(0x36)?)?;
    let phnum = usize::try_from(u16_at(0x38)?)?;
    if phnum == 0 {
        bail!("no program headers");
    }
    let mut loaded = 0;
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        if u32_at(header)? == PT_LOAD {
            loaded += u64_at(header + 0x20)?; // p_filesz
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::loaded_bytes;

    #[test]
    fn loaded_segments_of_this_test_binary() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let loaded = loaded_bytes(&exe).unwrap();
        assert!(loaded > 0 && loaded <= exe.len() as u64);
        assert!(loaded_bytes(b"not an elf").is_err());
        assert!(
            loaded_bytes(&exe[..32]).is_err(),
            "a truncated header is an error, not a panic"
        );
    }
}
