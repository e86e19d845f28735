//! skiff's container image as `cargo xtask test` builds it (docker/Dockerfile, podman, no
//! registry): its binaries run in a container of it, are those of this tree (the CRDs the
//! agent prints are `docker/crds.yaml`), and answer as the DaemonSet and the kubelet call
//! them. Root only (podman).

mod privileged {
    use std::process::Output;

    use skiff_lab::image::{IMAGE, podman};

    /// `args` in a fresh container of the image, with no network; `env` set.
    fn run(env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = podman();
        cmd.args(["run", "--rm", "--network", "none"]);
        for (key, value) in env {
            cmd.args(["--env", &format!("{key}={value}")]);
        }
        cmd.arg(IMAGE).args(args).output().expect("podman runs")
    }

    fn stdout(out: &Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_image_holds_this_trees_binaries_and_they_run() {
        let exists = podman().args(["image", "exists", IMAGE]).status().expect("podman runs");
        assert!(exists.success(), "{IMAGE} is missing: `cargo xtask test` builds it");
        let size = podman().args(["image", "inspect", "--format", "{{.Size}}", IMAGE]).output().unwrap();
        let mb = stdout(&size).trim().parse::<u64>().unwrap() / 1_000_000;
        println!("{IMAGE}: {mb} MB");
        // The runtime stage only: Debian's minimal base, the three binaries and their libraries.
        assert!(mb < 250, "a small runtime stage: {mb} MB");

        let crds = run(&[], &["skiff-agent", "crds"]);
        assert!(crds.status.success(), "{crds:?}");
        assert_eq!(stdout(&crds), include_str!("../../docker/crds.yaml"), "built from this tree");
        for binary in ["skiff-agent", "skiff"] {
            let version = run(&[], &[binary, "--version"]);
            assert_eq!(
                stdout(&version).trim(),
                format!("{binary} {}", env!("CARGO_PKG_VERSION")),
                "{version:?}"
            );
        }
        // As the container runtime asks a plugin which CNI versions it speaks.
        let cni = run(&[("CNI_COMMAND", "VERSION")], &["skiff-cni"]);
        let versions: serde_json::Value = serde_json::from_slice(&cni.stdout).expect("JSON");
        println!("skiff-cni VERSION: {versions}");
        assert_eq!(versions["supportedVersions"].as_array().map(|v| v.contains(&"1.1.0".into())), Some(true));
        // A ConfigMap key that is no option stops the agent before anything starts.
        let bad = run(
            &[],
            &["sh", "-c", "mkdir /c && echo always > /c/enable-polcy && skiff-agent --config-dir /c"],
        );
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        let said = String::from_utf8_lossy(&bad.stderr);
        assert!(
            said.contains("config key `enable-polcy` (/c/enable-polcy): not a skiff-agent option"),
            "{said}"
        );
        // What the DaemonSet's bpffs step runs is in the image.
        let tools = run(&[], &["sh", "-c", "for t in mount grep nft; do command -v $t; done"]);
        assert_eq!(stdout(&tools).lines().count(), 3, "{tools:?}");
    }
}
