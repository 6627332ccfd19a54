//! Benchmarks and load generators: what `tandem bench` runs, and the
//! checked kv load of `tandem demo`. Every figure is printed beside a
//! baseline measured in the same run, because these machines are shared and
//! noisy: only ratios within one run mean anything (docs/architecture.md
//! §6).
//!
//! Benchmarks, one module each, each with an `Options` (or arguments) and
//! a `run` that prints a report:
//! - [`chaos`]: a seeded random schedule of kills, crashes, freezes,
//!   partitions, reboots and migrations under a checked load, for minutes;
//! - [`capture`]: packets/s and added latency of the capture path;
//! - [`compare`]: tandem, keepalived and Redis Sentinel when the primary is
//!   killed, with the same client workload;
//! - [`failover`]: the pause clients see across kills, crashes and
//!   migrations of the primary;
//! - [`kv`]: SET/GET through the replicated kv against the same kv on one
//!   node ([`kv_host`], `tandem tool kv-server`) and a real redis-server;
//! - [`migrate`]: planned moves of a plain process's connections;
//! - [`synflood`]: real clients' connects during a spoofed SYN flood.
//!
//! Load generators:
//! - [`workload`]: the kv load that checks every reply (lost, duplicated,
//!   errors, and every counter read back at the end) with live counters,
//!   latency buckets and per-event pauses (`tandem demo`, [`chaos`]);
//! - [`failover`] keeps its own paced, single-threaded INCR load for
//!   1,000 connections (merging it into [`workload`] is still to do);
//! - [`flood`]: spoofed SYNs from a raw socket, and the connect probe.

#![forbid(unsafe_code)]

pub mod capture;
pub mod chaos;
pub mod compare;
pub mod failover;
pub mod flood;
pub mod kv;
pub mod kv_host;
pub mod migrate;
pub mod synflood;
pub mod workload;

use anyhow::{Context, Result};

/// Fails with a clear message unless running as root: the lab, TCP_REPAIR
/// and address changes all need it.
pub fn require_root(what: &str) -> Result<()> {
    if !tandem_sys::process::is_root() {
        anyhow::bail!(
            "{what} needs root (network namespaces, TCP_REPAIR, addresses): run it as root, or with sudo"
        );
    }
    Ok(())
}

/// Builds the lab of `spec` for benchmark `bench`, runs `measure` in it,
/// and always takes it down, also when measuring failed; with
/// `keep_logs_in`, the daemons' logs are copied there first, for a look
/// after the lab is gone.
pub(crate) fn in_lab<T>(
    bench: &str,
    spec: &tandem_lab::LabSpec,
    what: &str,
    measure: impl FnOnce(&mut tandem_lab::LabGuard) -> Result<T>,
    keep_logs_in: Option<&std::path::Path>,
) -> Result<T> {
    let name = spec.name.as_deref().unwrap_or("(generated)");
    eprintln!("bench {bench}: bringing up lab {name} ({what})");
    let mut lab = tandem_lab::LabGuard::new(
        tandem_lab::Lab::up_with_daemon(spec, None)
            .with_context(|| format!("bringing up lab {name}"))?,
    );
    let result = measure(&mut lab);
    if let (Some(keep), Some(dir)) = (keep_logs_in, lab.files_dir()) {
        for id in lab.node_ids() {
            let _ = std::fs::copy(
                dir.join(format!("node{id}.log")),
                keep.join(format!("node{id}.log")),
            );
        }
    }
    let down = lab.down();
    let measured = result?;
    down.context("taking the lab down")?;
    Ok(measured)
}

/// A lab node's status report over its admin socket, `None` when it does
/// not answer within a second (down, frozen, restarting).
pub(crate) fn node_report(
    lab: &tandem_lab::Lab,
    id: u32,
) -> Option<tandem_node::report::NodeReport> {
    use tandem_node::admin::{request, AdminReply, AdminRequest};
    let path = lab.node_admin_socket(id).ok()??;
    match request(
        &path,
        &AdminRequest::Status,
        std::time::Duration::from_secs(1),
    ) {
        Ok(AdminReply::Status(report)) => Some(*report),
        _ => None,
    }
}

/// The reports of every lab node that answers.
pub(crate) fn node_reports(lab: &tandem_lab::Lab) -> Vec<tandem_node::report::NodeReport> {
    lab.node_ids()
        .iter()
        .filter_map(|id| node_report(lab, *id))
        .collect()
}
