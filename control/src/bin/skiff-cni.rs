//! The CNI plugin; see `skiff_control::cni`.

fn main() -> std::process::ExitCode {
    skiff_control::cni::main()
}
