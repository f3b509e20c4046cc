//! Where the workspace, its built binaries and the test fixtures are.

use std::path::{Path, PathBuf};

/// The workspace root (the directory holding the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The profile directory this test executable was built into, e.g. `target/debug` for
/// `target/debug/deps/foo-1234`: the binaries of the same `cargo build` live there, whatever
/// `CARGO_TARGET_DIR`, `--release` or `--target` said.
fn exe_profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// The directories a binary is looked for in, best first.
fn bin_dirs() -> Vec<PathBuf> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut dirs = Vec::new();
    dirs.extend(exe_profile_dir());
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_relative() {
            workspace_root().join(target)
        } else {
            target
        };
        dirs.push(target.join(profile));
    }
    dirs.push(workspace_root().join("target").join(profile));
    dirs
}

/// A workspace binary, e.g. `bin("sctrace")` → `target/debug/sctrace`, honouring
/// `CARGO_TARGET_DIR` and the profile the tests were built with.
///
/// # Panics
/// If it has not been built, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let dirs = bin_dirs();
    for dir in &dirs {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "binary `{name}` not found in {dirs:?}: run `cargo build --workspace --bins` first \
         (with --release if the tests are built with --release)"
    );
}

/// A built test fixture: `scripts/fixtures/out/NAME`.
///
/// # Panics
/// If it does not exist, saying to run `scripts/build-fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    let path = workspace_root().join("scripts/fixtures/out").join(name);
    assert!(
        path.exists(),
        "fixture {} is missing: run scripts/build-fixtures first",
        path.display()
    );
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn the_test_executables_profile_dir_is_searched_first() {
        let first = bin_dirs().into_iter().next().unwrap();
        assert!(
            first.join("deps").is_dir(),
            "{first:?} is not a profile directory"
        );
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace --bins")]
    fn a_missing_binary_says_how_to_build_it() {
        bin("no-such-binary-for-sure");
    }

    #[test]
    #[should_panic(expected = "scripts/build-fixtures")]
    fn a_missing_fixture_says_how_to_build_it() {
        fixture("no-such-fixture-for-sure");
    }
}
