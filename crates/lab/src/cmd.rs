//! Running the external programs the lab is built with (`ip`, `iptables`,
//! `iptables-restore`) and turning their failures into [`LabError`]s that
//! quote the command line and its stderr.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::LabError;

/// The programs the lab needs and the Debian packages that ship them.
pub(crate) const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
];

/// Fails with [`LabError::NotRoot`] unless the effective user is root.
pub(crate) fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Fails with [`LabError::MissingTool`] for the first program of [`TOOLS`]
/// not found in `PATH` (where `Command` will look for it), before anything
/// is built.
pub(crate) fn require_tools() -> Result<(), LabError> {
    for &(tool, package) in TOOLS {
        if !in_path(tool) {
            return Err(LabError::MissingTool { tool, package });
        }
    }
    Ok(())
}

fn in_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The package to suggest when `program` cannot be started.
fn package_of(program: &str) -> Option<(&'static str, &'static str)> {
    TOOLS.iter().copied().find(|(tool, _)| *tool == program)
}

/// A command line, quoted for messages.
pub(crate) fn display(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args...`, waits, and returns its stdout; a non-zero exit
/// becomes [`LabError::Command`] carrying stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    run_with_input(program, args, None)
}

/// Like [`run`], with `input` written to the program's stdin (for
/// `iptables-restore`).
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, LabError> {
    let line = display(program, args);
    tracing::debug!(command = %line, "lab: running");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(program, &line, source))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| LabError::Spawn {
                command: line.clone(),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: line.clone(),
        source,
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    Err(LabError::Command {
        command: line,
        detail: if stderr.is_empty() {
            output.status.to_string()
        } else {
            stderr
        },
    })
}

/// Maps a failure to start `program` to [`LabError::MissingTool`] when the
/// program does not exist and is one the lab knows the package of.
pub(crate) fn spawn_error(program: &str, line: &str, source: std::io::Error) -> LabError {
    match (source.kind(), package_of(program)) {
        (std::io::ErrorKind::NotFound, Some((tool, package))) => {
            LabError::MissingTool { tool, package }
        }
        _ => LabError::Spawn {
            command: line.to_string(),
            source,
        },
    }
}

/// `ip -n NETNS args...`.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NETNS iptables -w args...`.
pub(crate) fn iptables_in(netns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", netns, "iptables", "-w"];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NETNS iptables-restore --noflush` fed with `rules`: one
/// atomic batch.
pub(crate) fn iptables_restore_in(netns: &str, rules: &str) -> Result<(), LabError> {
    run_with_input(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "iptables-restore",
            "-w",
            "--noflush",
        ],
        Some(rules),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_quotes_its_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_known_tool_names_its_package() {
        let err = spawn_error(
            "iptables",
            "iptables -L",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(
            err.to_string().contains("apt-get install iptables"),
            "{err}"
        );
    }
}
