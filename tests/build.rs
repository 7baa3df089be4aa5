//! The PostgreSQL half of the end-to-end tests (the `postgres::` cases of
//! `on_both_stores!`, and `scale_out`) is compiled
//! only when `TEST_DATABASE_URL` names a server; otherwise the build says so.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    if std::env::var_os("TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    } else {
        println!(
            "cargo::warning=TEST_DATABASE_URL is not set: the PostgreSQL half of the tests is NOT run (only SQLite)"
        );
    }
}
