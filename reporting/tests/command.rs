//! The `reporting` command as an operator runs it: `hash-token` prints the hash the
//! configuration expects, and a bad configuration stops `run` before it serves anything,
//! with a message naming the file and the key.

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn reporting(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reporting"))
        .args(args)
        .env_remove("REPORTING_CONFIG")
        .env_remove("DATABASE_URL")
        .output()
        .expect("the reporting binary runs")
}

/// Runs `reporting run` with this configuration (after a valid database URL, so that the
/// key under test is the first one found wrong).
fn run_with(dir: &Path, toml: &str) -> (bool, String) {
    let file = dir.join("reporting.toml");
    let toml = format!("[postgres]\nurl = \"postgres://reporting@127.0.0.1:1/fleet\"\n\n{toml}");
    std::fs::write(&file, toml).unwrap();
    let output = reporting(&["--config", file.to_str().unwrap(), "run"]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn hash_token_prints_the_sha256_the_configuration_expects() {
    let output = reporting(&["hash-token", "s3cret-token"]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        printed.trim(),
        hex::encode(Sha256::digest(b"s3cret-token")),
        "hash-token must print the lowercase hex SHA-256 of the token"
    );
}

#[test]
fn a_bad_configuration_is_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();

    let (ok, stderr) = run_with(dir.path(), "[http]\nlisten_adress = \"127.0.0.1:0\"\n");
    assert!(!ok, "an unknown key must stop the service");
    assert!(
        stderr.contains("reporting.toml") && stderr.contains("listen_adress"),
        "the error names the file and the key: {stderr}"
    );

    let (ok, stderr) = run_with(
        dir.path(),
        "[auth.roles]\nviewer = [\"fleet\", \"teleport\"]\n",
    );
    assert!(!ok, "an unknown permission must be refused");
    assert!(
        stderr.contains("auth.roles.viewer") && stderr.contains("teleport"),
        "the error names the role and the permission: {stderr}"
    );

    let (ok, stderr) = run_with(
        dir.path(),
        "[[auth.tokens]]\nname = \"ci\"\nsha256 = \"abc\"\nrole = \"viewer\"\n",
    );
    assert!(!ok, "a malformed token hash must be refused");
    assert!(
        stderr.contains("auth.tokens[0].sha256"),
        "the error names the token's key: {stderr}"
    );
}
