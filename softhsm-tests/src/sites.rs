//! Two sites on one machine, for disaster drills: each a network
//! namespace with its own address, joined to the test (in the root
//! namespace) by a bridge. Losing a site kills every process in its
//! namespace (SIGKILL) and removes the namespace with its link.

use std::net::Ipv4Addr;
use std::process::Command;

/// One site: a network namespace and its address on the bridge.
pub struct Site {
    /// The namespace's name.
    pub netns: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

impl Site {
    /// The site's /24 network address.
    pub fn subnet(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.ip.octets();
        Ipv4Addr::new(a, b, c, 0)
    }

    /// A command run inside the site.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        let _ = command.args(["netns", "exec", &self.netns, program]);
        command
    }
}

/// Site A and site B, removed on drop.
pub struct Sites {
    /// The first site.
    pub a: Site,
    /// The second site.
    pub b: Site,
    bridge: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sites {
    /// Creates both sites on a /24 of their own (10.77.N.0, N from the
    /// port counter, so parallel drills do not meet).
    pub fn create() -> Self {
        let n = (crate::ports::reserve(1) % 250) as u8 + 1;
        let bridge = format!("djbr{n}");
        let sites = Sites {
            a: Site {
                netns: format!("dj{n}a"),
                ip: Ipv4Addr::new(10, 77, n, 1),
            },
            b: Site {
                netns: format!("dj{n}b"),
                ip: Ipv4Addr::new(10, 77, n, 2),
            },
            bridge,
        };
        sites.remove();
        ip(&["link", "add", &sites.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.77.{n}.254/24"),
            "dev",
            &sites.bridge,
        ]);
        ip(&["link", "set", &sites.bridge, "up"]);
        for site in [&sites.a, &sites.b] {
            sites.build(site);
        }
        sites
    }

    /// A lost site built again (new namespace, same address), empty.
    pub fn rebuild(&self, site: &Site) {
        self.build(site);
    }

    fn build(&self, site: &Site) {
        let (outside, inside) = (format!("{}o", site.netns), format!("{}i", site.netns));
        ip(&["netns", "add", &site.netns]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &site.netns]);
        ip(&["link", "set", &outside, "master", &self.bridge, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &site.netns, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        exec(&["addr", "add", &format!("{}/24", site.ip), "dev", &inside]);
        exec(&["link", "set", &inside, "up"]);
        exec(&["link", "set", "lo", "up"]);
    }

    /// The site is lost: every process in it is killed (SIGKILL) and its
    /// namespace removed.
    pub fn lose(&self, site: &Site) {
        kill_all(&site.netns);
        let _ = Command::new("ip")
            .args(["netns", "del", &site.netns])
            .output();
    }

    fn remove(&self) {
        for site in [&self.a, &self.b] {
            self.lose(site);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// SIGKILL to every process in namespace `netns`.
fn kill_all(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).output();
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.remove();
    }
}
