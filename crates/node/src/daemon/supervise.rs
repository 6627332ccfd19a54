//! Supervision (claim 13): the node watches its own fitness to serve — the
//! VIP interface's link and an optional check command from the config — so
//! that an unhealthy primary hands its role to a clone, and an unhealthy
//! clone never keeps the role if elected.
//!
//! Checks run on their own thread (a check command may take a second; the
//! event loop must never wait for it); the loop reads the verdict.

use crate::config::SupervisionSection;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The verdict: healthy, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub reason: String,
}

/// The supervision thread and its latest verdict.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    health: Mutex<Health>,
    stop: AtomicBool,
}

impl Supervisor {
    /// Starts watching `interface` (when `config.link`) and running the
    /// check command (when set). Healthy until proven otherwise.
    pub fn start(config: SupervisionSection, interface: String) -> Supervisor {
        let shared = Arc::new(Shared {
            health: Mutex::new(Health {
                healthy: true,
                reason: "no check has failed".into(),
            }),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("supervise".into())
                .spawn(move || supervise(&config, &interface, &shared))
                .ok()
        };
        Supervisor { shared, thread }
    }

    /// The latest verdict.
    pub fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| Health {
                healthy: false,
                reason: "supervision failed".into(),
            })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One round of checks: `Ok` or the reason for failing.
pub fn check_once(config: &SupervisionSection, interface: &str) -> Result<(), String> {
    if config.link {
        link_up(interface)?;
    }
    if let Some(command) = &config.check_command {
        run_check(command, Duration::from_millis(config.check_timeout_ms))?;
    }
    Ok(())
}

fn link_up(interface: &str) -> Result<(), String> {
    let path = format!("/sys/class/net/{interface}/operstate");
    match std::fs::read_to_string(&path) {
        // Virtual interfaces without carrier reporting say "unknown".
        Ok(state) if matches!(state.trim(), "up" | "unknown") => Ok(()),
        Ok(state) => Err(format!("link of {interface} is {}", state.trim())),
        Err(err) => Err(format!("cannot read {path}: {err}")),
    }
}

fn run_check(command: &str, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run the check command: {err}"))?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("check command failed ({status})")),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("check command took longer than {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(format!("waiting for the check command: {err}")),
        }
    }
}

fn supervise(config: &SupervisionSection, interface: &str, shared: &Shared) {
    let interval = Duration::from_millis(config.check_interval_ms);
    let mut streak = 0u32;
    let mut streak_ok = true;
    while !shared.stop.load(Ordering::Relaxed) {
        let result = check_once(config, interface);
        if result.is_ok() == streak_ok {
            streak = streak.saturating_add(1);
        } else {
            streak_ok = result.is_ok();
            streak = 1;
        }
        if let Ok(mut health) = shared.health.lock() {
            if streak >= config.failures && health.healthy != streak_ok {
                health.healthy = streak_ok;
                health.reason = match &result {
                    Ok(()) => "checks pass".into(),
                    Err(reason) => reason.clone(),
                };
                if health.healthy {
                    tracing::info!("supervision: healthy again");
                } else {
                    tracing::warn!(reason = %health.reason, "supervision: unhealthy");
                }
            }
        }
        // Sleep in small steps so that dropping the supervisor is quick.
        let until = Instant::now() + interval;
        while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20).min(interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(command: Option<&str>) -> SupervisionSection {
        SupervisionSection {
            link: false,
            check_command: command.map(str::to_string),
            check_interval_ms: 100,
            check_timeout_ms: 300,
            failures: 2,
            ..SupervisionSection::default()
        }
    }

    #[test]
    fn command_results_and_timeouts() {
        assert!(check_once(&config(Some("true")), "lo").is_ok());
        assert!(check_once(&config(Some("exit 3")), "lo")
            .unwrap_err()
            .contains("failed"));
        assert!(check_once(&config(Some("sleep 5")), "lo")
            .unwrap_err()
            .contains("longer than"));
        assert!(check_once(&config(None), "lo").is_ok());
    }

    #[test]
    fn link_state_is_read_from_sysfs() {
        let mut c = config(None);
        c.link = true;
        assert!(check_once(&c, "lo").is_ok(), "loopback is up or unknown");
        assert!(check_once(&c, "tdm-no-such-if").is_err());
    }

    #[test]
    fn health_changes_after_consecutive_results() {
        let dir = std::env::temp_dir().join(format!("tandem-supervise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("unhealthy");
        let command = format!("test ! -e {}", flag.display());
        let sup = Supervisor::start(config(Some(&command)), "lo".into());
        std::thread::sleep(Duration::from_millis(300));
        assert!(sup.health().healthy);
        std::fs::write(&flag, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while sup.health().healthy {
            assert!(Instant::now() < deadline, "never became unhealthy");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sup.health().reason.contains("failed"));
        std::fs::remove_file(&flag).unwrap();
        while !sup.health().healthy {
            assert!(Instant::now() < deadline, "never became healthy again");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
