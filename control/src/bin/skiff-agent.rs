//! The skiff node daemon; see `skiff_control::agent`.

use std::process::ExitCode;

use skiff_control::agent::{self, Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("crds") => {
            print!("{}", skiff_control::crd::crds_yaml());
            Ok(())
        }
        Some("-h" | "--help" | "help") => {
            println!("{}", agent::USAGE);
            Ok(())
        }
        _ => Options::parse(&args).and_then(|options| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?
                .block_on(agent::run(options))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
