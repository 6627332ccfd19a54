//! `tandem demo`, the main job, end to end: a short run of the real binary
//! (a 3-node kv lab, the checked load, the primary killed and crashed in
//! turn) reports, in its `--json` summary, no error, no lost and no
//! duplicated update across at least two failovers; it writes a latency
//! chart that is an SVG document with the failovers marked; and it leaves
//! no lab behind. A run too short for a failover is refused before any lab
//! is built.
//!
//! Needs root; runs in CI; fails, never skips.

use std::path::PathBuf;
use std::process::Command;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// Names of the labs on this machine.
fn labs() -> Vec<String> {
    let out = tandem()
        .args(["lab", "list", "--json"])
        .output()
        .expect("tandem lab list runs");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("lab list --json is a list of names")
}

#[test]
fn the_demo_survives_repeated_failovers_without_a_client_error() {
    let name = format!("dt{}", std::process::id() % 100_000);
    let svg: PathBuf = std::env::temp_dir().join(format!("tandem-demo-test-{name}.svg"));
    let _ = std::fs::remove_file(&svg);
    let out = tandem()
        .args(["demo", "--duration", "20", "--kill-interval", "5", "--json"])
        .args(["--name", &name])
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("tandem demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let lingering = labs().contains(&name);
    if lingering {
        let _ = tandem().args(["lab", "down", "--name", &name]).status();
    }
    assert!(
        out.status.success(),
        "tandem demo failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|err| panic!("--json prints one JSON object ({err}): {stdout}"));
    eprintln!("{summary:#}");
    for field in ["errors", "lost", "duplicated"] {
        assert_eq!(
            summary[field].as_u64(),
            Some(0),
            "{field}: {:#}",
            summary["error_samples"]
        );
    }
    assert!(summary["operations"].as_u64().unwrap() > 1000, "{summary}");
    let failovers = summary["failovers"].as_array().expect("a failover list");
    assert!(failovers.len() >= 2, "too few failovers: {summary}");
    for f in failovers {
        assert!(
            f["kind"] == "kill" || f["kind"] == "crash",
            "failover kind: {f}"
        );
        assert!(f["to"].as_u64().is_some(), "no new primary: {f}");
        assert_ne!(f["to"], f["from"], "{f}");
        let pause = f["pause_ms"].as_u64().expect("a measured pause");
        assert!(pause < 10_000, "a pause of {pause} ms: {f}");
    }
    assert!(
        failovers.iter().any(|f| f["kind"] == "kill")
            && failovers.iter().any(|f| f["kind"] == "crash"),
        "kill and crash alternate: {summary}"
    );
    assert_eq!(summary["svg"].as_str(), Some(svg.to_str().unwrap()));
    let picture = std::fs::read_to_string(&svg).expect("the chart was written");
    let _ = std::fs::remove_file(&svg);
    let head = picture.trim_start();
    assert!(
        head.starts_with("<svg") || head.starts_with("<?xml"),
        "not an SVG: {}",
        &picture[..picture.len().min(200)]
    );
    assert!(head.contains("<svg") && picture.trim_end().ends_with("</svg>"));
    assert_eq!(
        picture.matches(r#"class="failover""#).count(),
        failovers.len(),
        "one marker per failover"
    );
    assert!(picture.contains(r#"class="latency""#));
    assert!(!lingering, "lab {name} was left behind");
}

/// Issue 19: a run with no room for a failover shows nothing of what
/// tandem is for, so it is refused at once — with what would fit — and no
/// lab is built.
#[test]
fn a_run_too_short_for_a_failover_is_refused_before_any_lab() {
    let name = format!("ds{}", std::process::id() % 100_000);
    for args in [
        &["--duration", "5"][..],
        &["--duration", "10", "--kill-interval", "8"][..],
    ] {
        let out = tandem()
            .arg("demo")
            .args(args)
            .args(["--name", &name])
            .output()
            .expect("tandem demo runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted: {stderr}");
        assert!(
            stderr.contains("too short for a failover") || stderr.contains("leaves no room"),
            "{args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("building lab"),
            "{args:?} built a lab: {stderr}"
        );
        assert!(!labs().contains(&name), "{args:?} left lab {name}");
    }
}
