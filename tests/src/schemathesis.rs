//! Schemathesis, the schema-driven API fuzzer from PyPI, installed once
//! (pinned) into a virtual environment in the target directory.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::target_dir;

/// The version the tests were written against: its summary line is read.
pub const VERSION: &str = "4.32.5";

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The `schemathesis` command, installing it on first use. Panics when it
/// cannot be installed: the API fuzzing is part of the test suite.
pub fn binary() -> PathBuf {
    BINARY
        .get_or_init(|| {
            let venv = target_dir()
                .join("..")
                .join(format!("schemathesis-{VERSION}"));
            let installed = venv.join("bin").join("schemathesis");
            if !installed.exists() {
                let ok = Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin").join("pip"))
                        .args(["install", "--quiet", "--disable-pip-version-check"])
                        .arg(format!("schemathesis=={VERSION}"))
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(
                    ok && installed.exists(),
                    "could not install schemathesis {VERSION} from PyPI into {}",
                    venv.display()
                );
            }
            installed
        })
        .clone()
}
