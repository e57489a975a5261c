//! Records the versions of the runtimes this binary was built with (from the workspace's
//! `Cargo.lock`), so every report says exactly what was measured.

fn main() {
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let mut versions = Vec::new();
    let mut names = vec![
        "tokio",
        "smol",
        "async-std",
        "async-executor",
        "async-io",
        "async-channel",
    ];
    // monoio is a dependency on Linux only (io_uring): elsewhere the lock file lists it, but
    // this binary is built without it.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        names.push("monoio");
    }
    names.extend(["embassy-executor", "embassy-time"]);
    for name in names {
        // Every `[[package]]` entry: `name = "x"` then `version = "y"` on the next line.
        let found: Vec<&str> = text
            .split("[[package]]")
            .filter(|entry| entry.contains(&format!("name = \"{name}\"\n")))
            .filter_map(|entry| entry.split("version = \"").nth(1)?.split('"').next())
            .collect();
        if !found.is_empty() {
            versions.push(format!("{name} {}", found.join("/")));
        }
    }
    println!(
        "cargo:rustc-env=TIDEWALL_BENCH_RUNTIME_VERSIONS={}",
        versions.join(", ")
    );
}
