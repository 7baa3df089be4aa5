//! `sqlx::migrate!` copies the migration folders into the binary when ingest
//! is compiled; without this, a new or changed migration alone would not
//! rebuild it, and the binary would still apply the old set.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
