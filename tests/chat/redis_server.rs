//! A real `redis-server` for a test: its own process on a free loopback
//! port, nothing saved to disk, killed when dropped.
//!
//! Without the binary a test cannot run: where `CI` or `CHAT_REQUIRE_REDIS`
//! is set that fails the test; elsewhere the test says why and returns.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server has to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
}

/// Where the binary is: `CHAT_REDIS_SERVER`, else the first
/// `redis-server` on `PATH` (or in /usr/bin and /usr/local/bin).
fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHAT_REDIS_SERVER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn required() -> bool {
    ["CI", "CHAT_REQUIRE_REDIS"]
        .iter()
        .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()))
}

impl RedisServer {
    /// Starts one, or `None` (with the reason on stderr) if there is no
    /// `redis-server` and none is required.
    pub fn start() -> Option<Self> {
        let Some(binary) = binary() else {
            let why = "redis-server not found (install it: apt-get install redis-server, \
                       or point CHAT_REDIS_SERVER at the binary)";
            assert!(!required(), "{why}; CI or CHAT_REQUIRE_REDIS is set");
            eprintln!("skipping this test: {why}");
            return None;
        };
        // A port taken between our probe and the server's bind makes the
        // server exit: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                binary: binary.clone(),
            };
            if server.launch() {
                return Some(server);
            }
        }
        panic!(
            "redis-server ({}) did not start; is it a working Redis binary?",
            binary.display()
        );
    }

    /// Starts the process on our port and waits (bounded) until it answers
    /// PING. False if it exited first.
    fn launch(&mut self) -> bool {
        let child = Command::new(&self.binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.answers_ping() {
                return true;
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
            self.port
        );
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its URL, for `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the process (as `kill -9` would): Redis is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (nothing is saved).
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; retry briefly if the kernel has
        // not let go of it yet.
        for _ in 0..20 {
            if self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}
