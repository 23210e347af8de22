//! Programs from outside the crate, and the `sessiongate` binary, run by the
//! tests as child processes: found on `$PATH` (or the test skipped, or failed
//! when it is required), started and waited for until they say they listen,
//! their output kept for failure messages, stopped by pid when dropped.
//!
//! Included with `#[path = "support/processes.rs"] mod processes;`, not through
//! `support/mod.rs`, so that such a test binary does not build the in-process
//! fixtures; support/webdriver.rs, for the tests that drive a browser, needs it
//! included beside it.

// Every test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest any one step (a process starting, a page loading) may take.
pub const STEP: Duration = Duration::from_secs(30);

/// Whether a test that needs programs from outside the crate is skipped or
/// fails when one is missing: `required` in `env_var` (set by `.ci/run`) fails.
pub fn missing(env_var: &str, what: &str) {
    if std::env::var(env_var).as_deref() == Ok("required") {
        panic!("{what} ({env_var}=required)");
    }
    eprintln!("SKIPPED: {what}");
}

/// `program` from `$PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A started child's piped stdout and stderr, taken to be read on threads.
pub fn take_output(child: &mut Child) -> [Option<Box<dyn Read + Send>>; 2] {
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn Read + Send>);
    [stdout, stderr]
}

/// How a [`Process`] is stopped when dropped (and when it does not get ready).
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGKILL.
    Kill,
    /// SIGTERM, so that it can stop what it started and exit cleanly; SIGKILL
    /// if it has not exited after this long.
    Term(Duration),
}

/// A child process, stopped (by its pid) when dropped; its output is kept for
/// failure messages.
pub struct Process {
    name: &'static str,
    child: Child,
    /// What followed each readiness marker on its line (a listening address),
    /// in the markers' order.
    addresses: Vec<String>,
    output: Arc<Mutex<String>>,
    stop: Stop,
}

impl Process {
    /// Starts `command` and waits (at most [`STEP`]) until a line of its output
    /// contains `ready`; what follows it is the [`address`](Process::address).
    /// Killed when dropped.
    pub fn start(name: &'static str, command: &mut Command, ready: &str) -> Process {
        Process::try_start(name, command, ready).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Process::start`], with an error when the marker does not come (the
    /// process is then killed).
    pub fn try_start(
        name: &'static str,
        command: &mut Command,
        ready: &str,
    ) -> Result<Process, String> {
        Process::try_start_each(name, command, &[ready], Stop::Kill)
    }

    /// Starts `command` and waits (at most [`STEP`]) until, for each of
    /// `ready`, a line of its output contains it; the rest of that line up to a
    /// space, `/` or `)` (less a final `.`) is that marker's address. An error
    /// when they do not all come (the process is then stopped); a panic when it
    /// cannot be started at all. `stop` says how it is stopped when dropped.
    pub fn try_start_each(
        name: &'static str,
        command: &mut Command,
        ready: &[&str],
        stop: Stop,
    ) -> Result<Process, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        for stream in take_output(&mut child).into_iter().flatten() {
            let output = output.clone();
            let lines_tx = lines_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut kept = output.lock().unwrap();
                    kept.push_str(&line);
                    kept.push('\n');
                    drop(kept);
                    let _ = lines_tx.send(line);
                }
            });
        }
        drop(lines_tx);
        // From here a failure drops it, which stops it.
        let mut process = Process {
            name,
            child,
            addresses: vec![String::new(); ready.len()],
            output,
            stop,
        };
        let wanted = match ready {
            [one] => format!("{one:?}"),
            all => format!("{all:?}"),
        };
        let deadline = Instant::now() + STEP;
        while process.addresses.iter().any(String::is_empty) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match lines_rx.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{name} did not print {wanted} within {STEP:?}\n{}",
                        process.log_tail(40)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{name} exited before it printed {wanted}\n{}",
                        process.log_tail(40)
                    ));
                }
            };
            for (marker, address) in ready.iter().zip(&mut process.addresses) {
                if let Some(at) = line.find(marker) {
                    let rest = &line[at + marker.len()..];
                    let end = rest
                        .find(|c: char| c.is_whitespace() || c == '/' || c == ')')
                        .unwrap_or(rest.len());
                    *address = rest[..end].trim_end_matches('.').to_owned();
                }
            }
        }
        Ok(process)
    }

    /// What followed the (first) readiness marker: the listening address.
    pub fn address(&self) -> &str {
        &self.addresses[0]
    }

    /// What followed each readiness marker, in the markers' order.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Everything it printed so far, under its name.
    pub fn log(&self) -> String {
        format!("({}) {}", self.name, self.output.lock().unwrap())
    }

    /// The last `lines` lines of its output, headed by its name.
    pub fn log_tail(&self, lines: usize) -> String {
        let output = self.output.lock().unwrap();
        let all: Vec<&str> = output.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("{} (last {lines} lines):\n{tail}", self.name)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Stop::Term(grace) = self.stop {
            // `sh` for `kill`, by pid, without a libc dependency.
            let pid = self.child.id().to_string();
            let _ = Command::new("sh")
                .args(["-c", "kill -TERM \"$1\"", "sh", &pid])
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
