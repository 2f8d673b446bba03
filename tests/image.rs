//! hookwarden's image as e2e/images builds it without Docker, compared with
//! what the `Dockerfile` builds for those who have Docker: the same files
//! (both run image/build-binary and image/rootfs), the same user and
//! entrypoint (e2e/images reads them from the Dockerfile's final stage), a
//! static binary on an empty base, non-root, with CA certificates.

mod common;

use std::{collections::BTreeMap, path::Path, process::Command};

use common::{TestEnv, repo_dir};
use serde_json::Value;

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The Dockerfile's stages: each a list of (instruction, arguments).
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo_dir().join("Dockerfile")).unwrap();
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (instruction, args) = line.split_once(' ').unwrap_or((line, ""));
        if instruction == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("FROM first").push((instruction.to_owned(), args.trim().to_owned()));
    }
    stages
}

/// Path → (mode and owner as `tar -tv` shows them, size) of every entry of a layer tarball.
fn layer_entries(layer: &Path) -> BTreeMap<String, (String, String)> {
    let listing = String::from_utf8(run("tar", &["-tvf", layer.to_str().unwrap()])).unwrap();
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches("./").trim_end_matches('/').to_owned();
            (
                path,
                (
                    format!("{} {}", f[0], f[1]),
                    if f[0].starts_with('d') { String::new() } else { f[2].to_owned() },
                ),
            )
        })
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

/// Whether a 64-bit ELF names a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| u32::from_le_bytes(elf[phoff + i * size..][..4].try_into().unwrap()) == 3)
}

#[test]
fn the_image_built_here_is_the_dockerfiles_image() {
    let env = TestEnv::load();
    let dir = std::env::temp_dir().join(format!("image-test-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    run("tar", &["-xf", env.var("HOOKWARDEN_IMAGE_TAR"), "-C", dir.to_str().unwrap()]);
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let manifest = &manifest[0];
    assert_eq!(
        manifest["RepoTags"][0],
        env.var("HOOKWARDEN_IMAGE"),
        "the tarball is the image e2e/up imported"
    );
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join(manifest["Config"].as_str().unwrap())).unwrap())
            .unwrap();
    let layers = manifest["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer on an empty base");

    // The Dockerfile: a build stage running the same two scripts, then a
    // final stage that is FROM scratch + that root file system + USER + ENTRYPOINT.
    let stages = dockerfile_stages();
    let (build, last) = (&stages[0], stages.last().unwrap());
    let runs: String = build.iter().filter(|(i, _)| i == "RUN").map(|(_, a)| a.as_str()).collect();
    assert!(
        runs.contains("image/build-binary /hookwarden") && runs.contains("image/rootfs /hookwarden /rootfs"),
        "{runs}"
    );
    let instructions: Vec<&str> = last.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(instructions, ["FROM", "COPY", "USER", "ENTRYPOINT"]);
    assert_eq!(last[0].1, "scratch");
    assert_eq!(last[1].1, "--from=build /rootfs /");
    assert_eq!(config["config"]["User"], last[2].1.as_str(), "the same user");
    let entrypoint: Value = serde_json::from_str(&last[3].1).unwrap();
    assert_eq!(config["config"]["Entrypoint"], entrypoint, "the same entrypoint");
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));

    // The same files: the layer holds exactly what image/rootfs makes of the
    // image's own binary, with the same modes.
    let layer = dir.join(layers[0].as_str().unwrap());
    let entries = layer_entries(&layer);
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run("tar", &["-xf", layer.to_str().unwrap(), "-C", unpacked.to_str().unwrap()]);
    let rootfs = dir.join("rootfs");
    run(
        repo_dir().join("image/rootfs").to_str().unwrap(),
        &[unpacked.join("hookwarden").to_str().unwrap(), rootfs.to_str().unwrap()],
    );
    let again = dir.join("again.tar");
    run(
        "tar",
        &[
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            again.to_str().unwrap(),
            ".",
        ],
    );
    assert_eq!(entries, layer_entries(&again), "the image's files are image/rootfs's");

    // What those files are: a static program (no dynamic loader), a
    // non-root user matching USER, CA certificates, a writable /tmp.
    let binary = std::fs::read(unpacked.join("hookwarden")).unwrap();
    assert_eq!(&binary[..4], b"\x7fELF");
    assert!(has_interpreter(&std::fs::read("/bin/sh").unwrap()), "the check sees a dynamic program");
    assert!(!has_interpreter(&binary), "statically linked: no PT_INTERP program header");
    let passwd = std::fs::read_to_string(unpacked.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
    assert_eq!(last[2].1, "65532:65532");
    let certs = std::fs::read_to_string(unpacked.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(certs.matches("BEGIN CERTIFICATE").count() > 50);
    assert!(entries["tmp"].0.starts_with("drwxrwxrwt"), "{:?}", entries["tmp"]);
    let _ = std::fs::remove_dir_all(&dir);
}
