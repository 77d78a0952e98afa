//! A node's session advisory lock on PostgreSQL.
//!
//! Held on a connection of its own (one more per node than
//! `store.pool_size`), so no pooled connection's end can drop it. The
//! server releases a session's advisory locks when the session ends: a
//! killed daemon's at once (its kernel closes the socket), a lost host's
//! within seconds (the session's keepalives and `idle_session_timeout`),
//! and a start waits that long for a silent daemon of its node. If the
//! daemon's own connection ends (a restarted server, a terminated backend,
//! a network cut), the lock went with it: [`PostgresNodeLock::check`]
//! reconnects and takes it again, unless another process took it first.
//! Through a pooler in transaction mode (PgBouncer) a session lock means
//! nothing: `store.postgres` must reach the server, or a pooler in session
//! mode.

use std::time::Duration;

use anyhow::Context;
use postgres::Client;
use postgres_openssl::MakeTlsConnector;

use super::errors::map_err;
use super::tls::tls_for;

/// The longest a look at the lock waits for the server.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest application name the server keeps (NAMEDATALEN − 1).
const NAME_MAX: usize = 63;
/// How long a start waits for a silent daemon of its node to lose the lock.
const TAKE_WAIT: Duration = Duration::from_secs(15);
/// Seconds without a query after which a holding daemon is said to be
/// silent in the log (a live one looks at its lock every second).
const SILENT: f64 = 3.0;

/// What a look at the lock found.
#[derive(Debug)]
pub enum Held {
    /// Held as before.
    Still,
    /// It had ended (its file removed, its connection cut) and is taken
    /// again.
    Retaken,
    /// It cannot be looked at now (its server slow or unreachable): held
    /// or not, it is looked at again next round.
    Unreachable(String),
    /// Another process took the node's lock while this one's had ended:
    /// this process must stop.
    Lost(String),
}

/// The advisory lock key of `node_id` in the registry in `schema`: two
/// registries in one database (schemas) have nodes of the same name.
pub fn node_lock_key(schema: &str, node_id: &str) -> i64 {
    let digest = openssl::sha::sha256(format!("dojangd node\0{schema}\0{node_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Non-negative, so the holder's lookup can split it into two oids.
    i64::from_be_bytes(first) & i64::MAX
}

/// The node's advisory lock and the connection that holds it.
pub struct PostgresNodeLock {
    config: postgres::Config,
    tls: Option<MakeTlsConnector>,
    node_id: String,
    /// This process's sessions' name: `dojangd PID NONCE NODE` (a pid
    /// alone repeats across hosts and containers).
    name: String,
    key: i64,
    client: Option<Client>,
}

/// The session holding a node's lock, as far as this role may see it.
struct Holder {
    pid: i32,
    name: Option<String>,
    from: String,
    since: Option<String>,
    /// Seconds since its last query ended (a live daemon's: under one).
    silent_for: Option<f64>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "held by \"{}\" from {} since {}",
            self.name.as_deref().unwrap_or("?"),
            self.from,
            self.since.as_deref().unwrap_or("?")
        )
    }
}

impl PostgresNodeLock {
    /// Takes `node_id`'s lock in the registry at `url`, or says who holds
    /// it. A holder that is a daemon of this node and sends nothing (its
    /// host lost or frozen) is waited for, up to [`TAKE_WAIT`], while the
    /// server drops its session; one seen querying again is refused.
    pub fn take(
        url: &str,
        ca_file: Option<&std::path::Path>,
        node_id: &str,
    ) -> anyhow::Result<Self> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("store.postgres.url: {e}"))?;
        let tls = tls_for(&config, ca_file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut nonce = [0u8; 4];
        openssl::rand::rand_bytes(&mut nonce)?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let mut name = format!("dojangd {} {nonce} {node_id}", std::process::id());
        // As the server keeps it (a node id is ASCII), so a session can
        // know its own name there.
        name.truncate(NAME_MAX);
        let _ = config
            .application_name(&name)
            .connect_timeout(CHECK_TIMEOUT)
            .tcp_user_timeout(CHECK_TIMEOUT);
        let mut lock = PostgresNodeLock {
            config,
            tls,
            node_id: node_id.to_owned(),
            name,
            key: 0,
            client: None,
        };
        let mut client = lock.connect().map_err(anyhow::Error::msg)?;
        let schema: Option<String> = client
            .query_one("SELECT current_schema()::text", &[])
            .map_err(|e| anyhow::anyhow!("reading the registry's schema: {e}"))?
            .get(0);
        let schema = schema.context("no schema of store.postgres's search_path exists")?;
        lock.key = node_lock_key(&schema, node_id);
        let deadline = std::time::Instant::now() + TAKE_WAIT;
        let mut last_silence = None;
        while !try_lock(&mut client, lock.key).map_err(anyhow::Error::msg)? {
            let holder = holder(&mut client, lock.key);
            let silence = holder
                .as_ref()
                .filter(|h| h.name.as_deref().is_some_and(|n| names_node(n, node_id)))
                .and_then(|h| h.silent_for);
            // A daemon of this node that queries again is alive: refused.
            // One that stays silent may be a lost host: waited for.
            let alive = match (silence, last_silence) {
                (None, _) => true,
                (Some(now), Some(before)) => now < before,
                (Some(_), None) => false,
            };
            if alive || std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "another process holds node {node_id}'s lock in this registry ({}): \
                     one dojangd per server.node_id",
                    describe(holder.as_ref())
                );
            }
            if silence.is_some_and(|s| s > SILENT) {
                tracing::warn!(
                    "node {node_id}'s lock is {}, silent: waiting for the server to drop it",
                    describe(holder.as_ref())
                );
            }
            last_silence = silence;
            std::thread::sleep(Duration::from_secs(1));
        }
        lock.client = Some(client);
        Ok(lock)
    }

    /// Whether the lock is still held: a round trip on its connection, and
    /// if that connection ended, a new one that takes the lock again.
    pub fn check(&mut self) -> Held {
        if let Some(client) = self.client.as_mut() {
            match client.simple_query("SELECT 1") {
                Ok(_) => return Held::Still,
                // A slow answer is not a lost session: keep it.
                Err(e) if !client.is_closed() => return Held::Unreachable(e.to_string()),
                Err(_) => {}
            }
        }
        self.client = None;
        let mut client = match self.connect() {
            Ok(client) => client,
            Err(e) => return Held::Unreachable(e),
        };
        match self.retake(&mut client) {
            Ok(true) => {
                self.client = Some(client);
                Held::Retaken
            }
            Ok(false) => Held::Lost(format!(
                "another process took node {}'s lock while this one's connection was gone ({})",
                self.node_id,
                describe(holder(&mut client, self.key).as_ref())
            )),
            Err(e) => Held::Unreachable(e),
        }
    }

    /// Takes the lock on a new connection; this process's own earlier
    /// session, if the server still has it, is ended first.
    fn retake(&self, client: &mut Client) -> Result<bool, String> {
        if try_lock(client, self.key)? {
            return Ok(true);
        }
        match holder(client, self.key) {
            Some(h) if h.name.as_deref() == Some(self.name.as_str()) => {
                let _ = client
                    .execute("SELECT pg_terminate_backend($1, 5000)", &[&h.pid])
                    .map_err(|e| map_err(e).to_string())?;
                if try_lock(client, self.key)? {
                    Ok(true)
                } else {
                    Err("this process's earlier session still holds the lock".into())
                }
            }
            _ => Ok(false),
        }
    }

    /// A connection whose statements are bounded and whose death the
    /// server notices within seconds (its keepalives; `idle_session_timeout`
    /// where the server has it): a lost host's lock is freed for its
    /// restart, not held for the kernel's two hours.
    fn connect(&self) -> Result<Client, String> {
        let mut client = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(postgres::NoTls),
        }
        .map_err(|e| map_err(e).to_string())?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {}; SET tcp_keepalives_idle = 5; \
                 SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3",
                CHECK_TIMEOUT.as_millis()
            ))
            .map_err(|e| map_err(e).to_string())?;
        // PostgreSQL 14 and later; older servers go by the keepalives.
        let _ = client.batch_execute("SET idle_session_timeout = '10s'");
        Ok(client)
    }
}

/// Whether a session's name is a daemon's of `node_id` (its end perhaps
/// cut off at [`NAME_MAX`]).
fn names_node(name: &str, node_id: &str) -> bool {
    match name.splitn(4, ' ').collect::<Vec<_>>()[..] {
        // A prefix only where the server cut the name: "test-1" is not
        // "test-10"'s.
        ["dojangd", _, _, node] if name.len() == NAME_MAX => {
            !node.is_empty() && node_id.starts_with(node)
        }
        ["dojangd", _, _, node] => node == node_id,
        _ => false,
    }
}

fn try_lock(client: &mut Client, key: i64) -> Result<bool, String> {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .map(|row| row.get(0))
        .map_err(|e| map_err(e).to_string())
}

fn describe(holder: Option<&Holder>) -> String {
    holder.map_or_else(
        || "its holder is not visible to this role".into(),
        ToString::to_string,
    )
}

/// The session holding `key`, if this role may see it.
fn holder(client: &mut Client, key: i64) -> Option<Holder> {
    let row = client
        .query_opt(
            "SELECT a.pid, a.application_name, \
                    CASE WHEN a.client_port = -1 THEN 'a local socket' \
                         WHEN a.client_addr IS NULL THEN 'an address hidden from this role' \
                         ELSE host(a.client_addr) END, \
                    a.backend_start::text, \
                    CASE WHEN a.state = 'idle' THEN \
                      extract(epoch FROM clock_timestamp() - a.state_change)::float8 END \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = ($1::int8 >> 32)::oid AND l.objid = ($1::int8 & 4294967295)::oid",
            &[&key],
        )
        .ok()??;
    Some(Holder {
        pid: row.get(0),
        name: row.get(1),
        from: row.get(2),
        since: row.get(3),
        silent_for: row.get(4),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemons_session_name_names_its_node_even_cut_short() {
        assert!(names_node("dojangd 41 0a1b2c3d test-1", "test-1"));
        let long = "n".repeat(64);
        let mut name = format!("dojangd 4194304 0a1b2c3d {long}");
        name.truncate(NAME_MAX);
        assert!(names_node(&name, &long));
        assert!(!names_node("dojangd 41 0a1b2c3d test-2", "test-1"));
        assert!(!names_node("dojangd 41 0a1b2c3d ", "test-1"));
        assert!(!names_node("psql", "test-1"));
        assert!(!names_node("dojangctl 41 0a1b2c3d test-1", "test-1"));
        assert!(!names_node("dojangd 41 0a1b2c3d test-1", "test-10"));
    }

    #[test]
    fn keys_differ_by_schema_and_node_and_are_never_negative() {
        let key = node_lock_key("public", "test-1");
        assert!(key >= 0);
        assert_ne!(key, node_lock_key("dj_other", "test-1"));
        assert_ne!(key, node_lock_key("public", "test-2"));
        assert_eq!(key, node_lock_key("public", "test-1"));
    }
}
