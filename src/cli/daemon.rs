//! `serve --daemon` and `server.pid_file`: the classic double fork, done by us at the start of
//! `main` rather than by Pingora in `run`, because by then our own threads exist (the log
//! writer, the runtimes of the migrations and of the services' setup) and `fork` keeps only the
//! calling thread. The first process waits until the daemon serves (or dies) and exits with
//! that outcome, which is what systemd's `Type=forking` reads as "started" or "failed".

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis::config::{Config, Problem};

/// How long the daemon may take to accept on all its listeners before it gives up telling the
/// waiting parent (which then exits 1); the daemon itself keeps running and logging.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The daemon's end of the pipe its first process waits on: one byte says "serving"; the pipe
/// closing without it (the daemon exited, or gave up waiting) says "failed".
#[derive(Debug)]
pub struct Ready {
    pipe: File,
}

impl Ready {
    /// Tells the waiting parent that the daemon serves; it exits 0.
    pub fn notify(mut self) {
        // The parent may be gone already (killed); nothing to do about it then.
        let _ = self.pipe.write_all(b"R");
    }
}

/// The number of threads of this process (Linux: `/proc/self/task`), `None` where unknown.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// Detaches from the terminal and the caller: fork, `setsid`, fork again. Returns in the
/// daemon (the grandchild), with stdin on `/dev/null` and stdout/stderr kept (under systemd
/// they are the journal). The original process never returns: it waits for [`Ready::notify`]
/// and exits 0, or exits 1 when the daemon fails first. Refuses when a second thread exists,
/// since `fork` would silently lose it.
pub fn daemonize() -> anyhow::Result<Ready> {
    if let Some(n) = thread_count().filter(|n| *n > 1) {
        bail!("cannot daemonize: {n} threads already run (fork keeps only one)");
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: the process has one thread (checked above), so the child's copy is consistent.
    match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error()).context("fork"),
        0 => {}
        child => {
            drop(write_end);
            let mut status = 0;
            // SAFETY: reaps the intermediate child, which exits right after its own fork.
            unsafe { libc::waitpid(child, &mut status, 0) };
            let mut byte = [0u8; 1];
            let code = match read_end.read(&mut byte) {
                Ok(1) => 0,
                _ => {
                    eprintln!("portcullis: the daemon failed before it was ready (see its log)");
                    1
                }
            };
            std::process::exit(code);
        }
    }
    drop(read_end);
    // SAFETY: plain system calls in the single-threaded child; `_exit` skips the destructors
    // and exit handlers that belong to the original process.
    unsafe {
        if libc::setsid() < 0 {
            libc::_exit(1);
        }
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
    }
    let null = File::open("/dev/null").context("/dev/null")?;
    // SAFETY: replaces descriptor 0 with a duplicate of a valid open descriptor.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(std::io::Error::last_os_error()).context("stdin");
    }
    Ok(Ready { pipe: write_end })
}

/// Writes this process's pid to `path` through a temporary file and a rename, so a reader
/// (systemd, `kill $(cat …)`) never sees a partial file and an upgrade's new process replaces
/// the old one's in one step.
///
/// The temporary file is created new (`O_EXCL`, so never through a symlink someone planted
/// under its name), with a name no other process uses, and removed if anything fails.
pub fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("pid.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `server.upgrade_sock`'s directory, checked by `check-config` and `serve`: whoever listens
/// on the socket when the running instance is told to hand over (SIGQUIT) receives its
/// listening sockets, and reads every password and token sent to them. So the directory must
/// be writable only by its owner, and that owner must be this user or root. A directory that
/// does not exist yet is fine: [`prepare_upgrade_dir`] creates it owner-only.
pub fn check_upgrade_sock(config: &Config, path: &Path) -> Vec<Problem> {
    let sock = Path::new(&config.server.upgrade_sock);
    let problem = |msg: String| Problem::located(path, "server.upgrade_sock".to_string(), msg);
    let dir = upgrade_dir(sock);
    let Ok(meta) = std::fs::metadata(dir) else {
        return Vec::new();
    };
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        vec![problem(format!("{} is not a directory", dir.display()))]
    } else if mode & 0o022 != 0 {
        vec![problem(format!(
            "its directory {} is writable by group or others (mode {mode:o}): another local \
             user could take the listening sockets over; use a private directory (chmod go-w)",
            dir.display()
        ))]
    } else if meta.uid() != me && meta.uid() != 0 {
        vec![problem(format!(
            "its directory {} belongs to uid {}, not to this user (uid {me}) or root",
            dir.display(),
            meta.uid()
        ))]
    } else {
        Vec::new()
    }
}

/// Creates `server.upgrade_sock`'s directory owner-only (0700) when it does not exist.
pub fn prepare_upgrade_dir(sock: &str) -> anyhow::Result<()> {
    let dir = upgrade_dir(Path::new(sock));
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| {
        format!(
            "cannot create server.upgrade_sock's directory {}",
            dir.display()
        )
    })
}

/// The directory a socket path lies in (`.` for a bare file name).
fn upgrade_dir(sock: &Path) -> &Path {
    match sock.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes the pid file at exit, unless it no longer holds this pid (an upgrade's new process
/// wrote its own: removing that would lose the new daemon for its supervisor).
pub fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours && let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the pid file");
    }
}

/// Where to connect to see a listener accept: an unspecified address is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Waits until every address in `listeners` accepts a connection, then notifies `ready`. Runs
/// as a background service of the daemon, so it sees the listeners Pingora actually bound (or
/// took over in an upgrade). Gives up after [`READY_WITHIN`], dropping `ready` unnotified.
pub async fn notify_when_listening(listeners: Vec<SocketAddr>, ready: Ready) {
    let deadline = Instant::now() + READY_WITHIN;
    for addr in listeners.into_iter().map(reachable) {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                tracing::error!(%addr, "not listening after {READY_WITHIN:?}; the starting process exits 1");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tracing::info!(pid = std::process::id(), "daemon ready");
    ready.notify();
}
