//! A plain web server we did not write (Python's `http.server`) over a
//! directory: what a copy of the static mirror looks like to verifiers at
//! either site. It speaks HTTP/1.0 (a connection per request).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sites::Site;

/// The server, killed when dropped.
pub struct StaticServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl StaticServer {
    /// Serves `dir` on loopback, or on `site`'s address inside its namespace.
    pub fn start(dir: &Path, site: Option<&Site>) -> Self {
        let port = crate::ports::reserve(1);
        let addr = match site {
            Some(site) => SocketAddr::from((site.ip, port)),
            None => SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let mut command = match site {
            Some(site) => site.command("python3"),
            None => Command::new("python3"),
        };
        let child = command
            .args(["-m", "http.server", "--bind", &addr.ip().to_string()])
            .arg("--directory")
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        StaticServer { child, addr }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
