//! Compiles the contract in the repository's `proto/` with protox (pure Rust, no system `protoc`):
//! generates the tonic/prost code, writes the encoded descriptor set, and embeds the `.proto`
//! sources, so every Rust user of the contract (the gateway, the Rust example service, a team's
//! own service) builds from the same files.

use prost::Message as _;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto");
    let dir = root.join("openim/callback/v1");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .map(|p| p.strip_prefix(&root).map(PathBuf::from))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut sources = String::from("&[\n");
    for f in &files {
        let path = root.join(f);
        println!("cargo:rerun-if-changed={}", path.display());
        let canonical = path.canonicalize()?;
        writeln!(
            sources,
            "    ({:?}, include_str!({:?})),",
            f.to_string_lossy().replace('\\', "/"),
            canonical.to_string_lossy()
        )?;
    }
    sources.push(']');
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    std::fs::write(out.join("proto_sources.rs"), sources)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Every RPC a service does not implement answers UNIMPLEMENTED, so the gateway continues:
        // a team implements only the hooks it cares about, as in grpc-go, grpc-java and grpcio.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
