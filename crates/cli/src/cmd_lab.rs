//! `tandem lab ...` (being written).

#[derive(clap::Args)]
pub struct LabArgs {}

pub fn run(_args: LabArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not written yet")
}
