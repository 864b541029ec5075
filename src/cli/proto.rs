//! `openim-callback-gateway proto`: this module owns writing the contract compiled into the
//! binary (the `.proto` files and/or the encoded `FileDescriptorSet`).

use std::path::Path;
use std::process::ExitCode;

use super::output::{print_lines, stdout_failed};

/// `proto`: needs no configuration, so it runs before the config is loaded.
pub fn run(out: Option<&Path>, descriptor_set: Option<&Path>) -> ExitCode {
    if out.is_none() && descriptor_set.is_none() {
        eprintln!("openim-callback-gateway proto: give --out DIR and/or --descriptor-set FILE");
        return ExitCode::from(2);
    }
    match crate::proto::write_contract(out, descriptor_set) {
        Ok(paths) => match print_lines(paths.iter().map(|p| p.display().to_string())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => stdout_failed(&e, ExitCode::SUCCESS),
        },
        Err(e) => {
            eprintln!("openim-callback-gateway proto: {e}");
            ExitCode::FAILURE
        }
    }
}
