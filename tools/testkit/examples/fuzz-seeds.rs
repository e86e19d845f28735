//! Writes the seed corpus of every fuzz target (fastpath/wire/fuzz) into OUT/<target>/
//! (`skiff_testkit::fuzz_seeds`). `cargo xtask fuzz` runs this before fuzzing.
//!
//! usage: fuzz-seeds OUT

use std::{fs, path::Path};

fn main() -> std::io::Result<()> {
    let out = std::env::args().nth(1).expect("usage: fuzz-seeds OUT");
    let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fastpath/wire/tests/captures");
    let seeds = skiff_testkit::fuzz_seeds::seeds(&captures)?;
    for (i, (target, bytes)) in seeds.iter().enumerate() {
        let dir = Path::new(&out).join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(format!("seed-{i:03}")), bytes)?;
    }
    println!("fuzz-seeds: {} seeds in {out}", seeds.len());
    Ok(())
}
