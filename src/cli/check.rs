//! `openim-callback-gateway check` (alias `check-config`): this module owns validating the
//! configuration as a start would (building the gateway, opening no socket), printing the
//! effective settings, and the exit code: 0 valid, 2 not.

use std::process::ExitCode;

use super::output::{print_lines, stdout_failed};
use crate::config::{Config, UpstreamConfig};

/// `check`: the effective settings of `config` on stdout, its warnings on stderr.
pub fn run(config: &Config) -> ExitCode {
    let mut built = config.clone();
    // What the start adds for the demo: the example service (no socket is opened).
    built.attach_demo(&UpstreamConfig::single("http://127.0.0.1:1"));
    if let Err(e) = crate::gateway::Gateway::new(&built, None) {
        eprintln!("openim-callback-gateway: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    match serde_json::to_string_pretty(&config) {
        Ok(text) => {
            if let Err(e) = print_lines([text]) {
                return stdout_failed(&e, ExitCode::SUCCESS);
            }
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            if config.serves_demo() {
                eprintln!("note: demo: {}", crate::config::DEMO_NOTICE);
            }
            eprintln!("configuration is valid (effective settings above)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openim-callback-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
