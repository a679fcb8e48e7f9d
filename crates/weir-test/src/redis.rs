//! A real `redis-server` on a loopback port, for the tests of limits shared through Redis:
//! started, stopped, started again on the same port, and blocked for a while (`DEBUG SLEEP`)
//! to play a slow Redis. Needs `redis-server` on the `PATH` (`apt-get install redis-server`).

use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` process; stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free loopback port, and waits until it accepts connections.
    pub fn start() -> RedisServer {
        Self::start_as(None)
    }

    /// Starts one that requires `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_as(Some(password.to_owned()))
    }

    fn start_as(password: Option<String>) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = RedisServer {
            port,
            password,
            child: None,
        };
        redis.restart();
        redis
    }

    /// Starts it again (on the same port) after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Stops it (a kill: what a crashed or unreachable Redis looks like).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:PORT/` (with `:PASSWORD@` when it has one).
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The URL without the password, for a test that checks a wrong one is refused.
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Blocks the server for `seconds` (`DEBUG SLEEP`, sent on a connection of its own);
    /// returns once the command is on its way.
    pub fn block_for(&self, seconds: f64) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("redis accepts");
        let arg = seconds.to_string();
        let command = format!(
            "*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n${}\r\n{arg}\r\n",
            arg.len()
        );
        c.write_all(command.as_bytes()).expect("sent");
        // The connection stays open until the sleep is over.
        std::thread::spawn(move || {
            let mut reply = [0u8; 16];
            let _ = std::io::Read::read(&mut c, &mut reply);
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
