#![allow(missing_docs)]
#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    Count,
}
pub async fn run(
    _c: SpoolCommand,
    _s: &super::SpoolSettings,
    _a: Option<&str>,
) -> Result<(), super::SpoolError> {
    Ok(())
}
