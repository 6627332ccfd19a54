//! The live display of `tandem demo`: on a terminal, one status line
//! rewritten in place, with the run's events printed above it; otherwise
//! (a pipe, a log file) one plain status line every 2 s between the events.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_bench::workload::Monitor;

/// What the controller tells the display.
#[derive(Debug, Default, Clone)]
pub struct Live {
    /// The node serving now (`None` while a new one is elected).
    pub primary: Option<u32>,
    /// Failovers started so far.
    pub failovers: usize,
    /// The newest failover's event index in the workload.
    pub last_event: Option<usize>,
}

/// Where the display writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Inner {
    stream: Stream,
    tty: bool,
    /// A status line is on screen (tty only) and must be cleared first.
    drawn: bool,
}

impl Inner {
    fn write(&mut self, text: &str) {
        let _ = match self.stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
            Stream::Stderr => {
                let mut out = std::io::stderr().lock();
                out.write_all(text.as_bytes()).and_then(|()| out.flush())
            }
        };
    }

    fn clear(&mut self) {
        if self.drawn {
            self.write("\r\x1b[2K");
            self.drawn = false;
        }
    }
}

/// The display; cheap to share between the controller and its thread.
#[derive(Clone)]
pub struct Display {
    inner: Arc<Mutex<Inner>>,
    live: Arc<Mutex<Live>>,
    monitor: Monitor,
    duration: Duration,
    done: Arc<AtomicBool>,
}

impl Display {
    pub fn new(stream: Stream, monitor: Monitor, duration: Duration, primary: u32) -> Display {
        let tty = match stream {
            Stream::Stdout => std::io::stdout().is_terminal(),
            Stream::Stderr => std::io::stderr().is_terminal(),
        };
        Display {
            inner: Arc::new(Mutex::new(Inner {
                stream,
                tty,
                drawn: false,
            })),
            live: Arc::new(Mutex::new(Live {
                primary: Some(primary),
                ..Live::default()
            })),
            monitor,
            duration,
            done: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Changes what the status line shows.
    pub fn update(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Prints one event line (`[  8.0s] ...`) above the status line.
    pub fn event(&self, text: &str) {
        let at = self.monitor.started().elapsed().as_secs_f64();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.clear();
        inner.write(&format!("[{at:5.1}s] {text}\n"));
        if inner.tty {
            let line = self.status_line();
            inner.write(&line);
            inner.drawn = true;
        }
    }

    /// The status line now.
    pub fn status_line(&self) -> String {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let counters = self.monitor.counters();
        let elapsed = self.monitor.started().elapsed().min(self.duration);
        let rate = self.monitor.recent_rate(Duration::from_secs(1));
        let primary = match live.primary {
            Some(p) => format!("node {p}"),
            None => "electing".to_string(),
        };
        let pause = match live.last_event.map(|e| self.monitor.event_pause(e)) {
            None => "-".to_string(),
            // Measured once the new primary serves.
            Some(_) if live.primary.is_none() => "...".to_string(),
            Some(None) => "...".to_string(),
            Some(Some(p)) => format!("{} ms", p.as_millis()),
        };
        format!(
            "[{:>3}s/{}s] {:>7} ops/s  primary: {primary:<8}  failovers: {}  errors: {}  last pause: {pause}",
            elapsed.as_secs(),
            self.duration.as_secs(),
            thousands(rate.round() as u64),
            live.failovers,
            counters.errors,
        )
    }

    /// Starts the thread that refreshes the status line (every 250 ms on
    /// a terminal, every 2 s otherwise).
    pub fn spawn(&self) -> JoinHandle<()> {
        let display = self.clone();
        std::thread::spawn(move || {
            let tty = display.inner.lock().unwrap_or_else(|e| e.into_inner()).tty;
            let period = if tty {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(2)
            };
            let mut next = Instant::now() + period;
            while !display.done.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += period;
                    let line = display.status_line();
                    let mut inner = display.inner.lock().unwrap_or_else(|e| e.into_inner());
                    if tty {
                        inner.clear();
                        inner.write(&line);
                        inner.drawn = true;
                    } else {
                        inner.write(&format!("{line}\n"));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }

    /// Stops the refresh thread and leaves the last status line on screen.
    pub fn finish(&self, thread: JoinHandle<()>) {
        self.done.store(true, Ordering::Relaxed);
        let _ = thread.join();
        let line = self.status_line();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.clear();
        inner.write(&format!("{line}\n"));
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4_812_000), "4,812,000");
    }
}
