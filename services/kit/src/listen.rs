//! What a server that takes many connections sets up at start: its
//! open-file limit raised, and a listening socket with a deep backlog.

/// Default listen backlog: connections the kernel queues before the server
/// accepts them (the kernel caps it at `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: u32 = 4_096;

/// Raises the soft limit of open files to the hard limit, and logs both
/// (each client connection is a file: the common soft limit of 1,024 stops
/// a gateway at about a thousand idle connections). Returns the soft limit
/// now in force, or `None` when the limits cannot be read.
pub fn raise_open_files() -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return None;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(now) => {
            tracing::info!(soft_before = soft, soft = now, hard, "open-files limit");
            Some(now)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
            Some(soft)
        }
    }
}

/// The kernel's cap on listen backlogs (`/proc/sys/net/core/somaxconn`),
/// where it can be read.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Listens on `addr` with a backlog of `backlog` (capped by the kernel at
/// [`somaxconn`]; the effective value is logged).
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        match socket.bind(resolved) {
            Ok(()) => {
                let effective = somaxconn().map_or(backlog, |cap| backlog.min(cap));
                tracing::info!(%resolved, backlog, effective, "listening");
                return socket.listen(backlog);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} resolves to no address"),
        )
    }))
}
