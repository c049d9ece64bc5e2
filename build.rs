//! `sqlx::migrate!` embeds `migrations/`; the function files of `sql/functions/` are embedded
//! through a generated list, so adding, removing or editing one rebuilds the crate.
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=sql");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/functions");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("sql/functions")
        .map(|e| {
            e.expect("sql/functions entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .filter(|n| n.ends_with(".sql"))
        .collect();
    // Applied in name order, so the order does not depend on the file system.
    names.sort();
    let mut out = String::from("&[\n");
    for name in &names {
        println!("cargo:rerun-if-changed=sql/functions/{name}");
        let path = dir.join(name);
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("]\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("sql_functions.rs");
    std::fs::write(dest, out).expect("write sql_functions.rs");
}
