//! The fuzz targets' seed corpus (captured and built frames, `skiff_testkit::fuzz_seeds`)
//! replayed through the targets' own checks (`fuzz/src/lib.rs`, included here): every seed
//! parses without a panic and emits back to what it parsed, so a change to a parser that
//! breaks a target fails here, not only under `cargo xtask fuzz`.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::{collections::BTreeMap, path::Path};

#[test]
fn every_seed_passes_its_target_and_every_frame_passes_every_target() {
    let captures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures");
    let seeds = skiff_testkit::fuzz_seeds::seeds(&captures).unwrap();
    let mut per_target = BTreeMap::new();
    for (target, bytes) in &seeds {
        let (_, check) = targets::TARGETS.iter().find(|(name, _)| name == target).expect("a known target");
        check(bytes);
        *per_target.entry(*target).or_insert(0) += 1;
        // Bytes cut for one layer are arbitrary input to every other target.
        for (_, other) in targets::TARGETS {
            other(bytes);
        }
    }
    let names: Vec<&str> = targets::TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        per_target.keys().copied().collect::<Vec<_>>().len(),
        names.len(),
        "seeds for every target: {per_target:?}"
    );
    assert!(per_target.values().all(|&n| n >= 2), "{per_target:?}");
}
