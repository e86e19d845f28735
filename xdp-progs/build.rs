//! Builds the eBPF crate (nightly, `bpfel-unknown-none`, bpf-linker) and leaves the object in
//! `OUT_DIR` for `include_bytes_aligned!`. `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    let dir = env!("CARGO_MANIFEST_DIR");
    // The kernel side also compiles the shared types.
    println!("cargo:rerun-if-changed={dir}/common/src");
    let ebpf =
        aya_build::Package { name: "skiff-xdp-ebpf", root_dir: &format!("{dir}/ebpf"), ..Default::default() };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
