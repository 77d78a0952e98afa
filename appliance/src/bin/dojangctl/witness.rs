//! `witness …`: a c2sp.org/tlog-witness an auditor runs for one log, on a
//! machine of their own: `key` makes its Ed25519 key (a file the witness
//! keeps, never the log's token) and prints the vkey the log is configured
//! with; `serve` answers `POST /add-checkpoint`, cosigning each checkpoint
//! that extends the last one it cosigned and refusing any other (a fork).
//! What it cosigned is kept in a state file, written before it answers,
//! which one process at a time holds (`<state>.lock`) and which only
//! `--init` creates: a witness must never forget what it cosigned.
//! Plain HTTP: put it behind a TLS proxy when it leaves the host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use base64::Engine;
use clap::Subcommand;
use dojang::audit::checkpoint::NoteKey;
use dojang::audit::witness::{AddCheckpoint, CosignerKey, Refused, Witnessed, check};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::pkey::{PKey, Private};

/// A request body larger than this is refused (63 hashes and a note).
const MAX_BODY: usize = 64 * 1024;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request headers, and a connection
/// to finish.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a client has to send a request's body once its headers are in.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The state file: the log it is about, and the latest checkpoint the
/// witness cosigned of it.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    origin: String,
    #[serde(flatten)]
    witnessed: Witnessed,
}

#[derive(Subcommand)]
pub(crate) enum WitnessCommand {
    /// Make a witness key (Ed25519, PKCS#8 PEM, mode 0600) and print its
    /// vkey, which the log's `server.audit.witnesses` names.
    Key {
        /// The witness's name (e.g. `witness.example.org/w1`).
        #[arg(long)]
        name: String,
        /// Where to write the private key (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve `POST /add-checkpoint` for one log.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The witness's name.
    #[arg(long)]
    name: String,
    /// The witness's private key (from `witness key`).
    #[arg(long)]
    key: PathBuf,
    /// The log's origin.
    #[arg(long)]
    origin: String,
    /// The log's audit public key (PEM), from outside the log; repeat it
    /// to trust the new key beside the old one after a rotation.
    #[arg(long, required = true)]
    log_key: Vec<PathBuf>,
    /// The key's name in the log's notes [default: the origin].
    #[arg(long)]
    log_key_name: Option<String>,
    /// Where the witness keeps the last checkpoint it cosigned (JSON).
    #[arg(long)]
    state: PathBuf,
    /// Start a new witness of the log: the state file is created (refused
    /// if it exists). Without it a missing state file is an error: a
    /// witness that forgot what it cosigned would cosign a fork.
    #[arg(long)]
    init: bool,
}

/// `witness key` / `witness serve`.
pub(crate) fn run(command: WitnessCommand) -> anyhow::Result<()> {
    match command {
        WitnessCommand::Key { name, out } => {
            let key = PKey::generate_ed25519()?;
            write_new_private(&out, &key.private_key_to_pem_pkcs8()?)?;
            println!("{}", cosigner(&name, &key)?.vkey());
            Ok(())
        }
        WitnessCommand::Serve(args) => serve(args),
    }
}

fn write_new_private(path: &Path, pem: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(pem)?;
    file.sync_all()?;
    Ok(())
}

fn cosigner(name: &str, key: &PKey<Private>) -> anyhow::Result<CosignerKey> {
    let public: [u8; 32] = key
        .raw_public_key()?
        .try_into()
        .map_err(|_| anyhow::anyhow!("not an Ed25519 key"))?;
    Ok(CosignerKey::new(name, public)?)
}

/// One witness: its key, the log it follows, and what it cosigned.
struct Witness {
    key: PKey<Private>,
    cosigner: CosignerKey,
    origin: String,
    log_keys: Vec<NoteKey>,
    state_path: PathBuf,
    /// Checked and updated under one lock: two requests must not both
    /// pass against the same old size (the spec's rollback race).
    held: Mutex<Witnessed>,
    /// Held for the life of the process: a second witness process on the
    /// same state would check forks against a state of its own.
    _state_lock: std::fs::File,
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let pem = std::fs::read(&args.key).with_context(|| format!("{}", args.key.display()))?;
    let key = PKey::private_key_from_pem(&pem).context("the witness key")?;
    let name = args.log_key_name.unwrap_or_else(|| args.origin.clone());
    let log_keys = args
        .log_key
        .iter()
        .map(|path| {
            let trusted = super::audit_proof::trusted_log(path, name.clone(), args.origin.clone())?;
            Ok(NoteKey::new(&trusted.key_name, trusted.key)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Whatever can fail does before `--init` writes a state, so a retry
    // with `--init` is not refused for a file the failed start left.
    let cosigner = cosigner(&args.name, &key)?;
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("listening on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let state_lock = lock_state(&args.state)?;
    let held = load_state(&args.state, &args.origin, args.init)?;
    let witness = Arc::new(Witness {
        cosigner,
        key,
        origin: args.origin,
        log_keys,
        state_path: args.state,
        held: Mutex::new(held),
        _state_lock: state_lock,
    });
    println!("{}", witness.cosigner.vkey());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        eprintln!("witness {} listening on {}", args.name, args.listen);
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(place) = places.clone().acquire_owned().await else {
                return Ok(());
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait, do not die.
                    eprintln!("witness: accepting: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let witness = witness.clone();
            let _connection = tokio::spawn(async move {
                let _place = place;
                let service = hyper::service::service_fn(move |request| {
                    let witness = witness.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&witness, request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    })
}

/// Takes `<state>.lock` for the life of the process, or says who has it.
fn lock_state(state: &Path) -> anyhow::Result<std::fs::File> {
    let mut path = state.as_os_str().to_owned();
    path.push(".lock");
    dojang::store::node_lock::lock_file(
        &PathBuf::from(path),
        "another witness process holds its state (one process per state file)",
        "dojangctl witness serve",
    )
}

/// The state the witness goes on from: read and checked, or with `init`
/// a new one (the empty tree) written first.
fn load_state(path: &Path, origin: &str, init: bool) -> anyhow::Result<Witnessed> {
    if init {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => anyhow::bail!(
                "{} exists: --init starts a new witness only",
                path.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        }
        let empty = Witnessed {
            size: 0,
            root: base64::engine::general_purpose::STANDARD
                .encode(dojang::audit::merkle::root(&[])),
        };
        let state = State {
            origin: origin.to_owned(),
            witnessed: empty.clone(),
        };
        persist_new(path, &state)?;
        return Ok(empty);
    }
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{} does not exist: a new witness starts with --init (a witness that lost its state must not start afresh: it would cosign a fork)",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!("{}", path.display())),
    })?;
    let state: State = serde_json::from_slice(&bytes).context("the witness state")?;
    anyhow::ensure!(
        state.origin == origin,
        "{} is the state of another log ({})",
        path.display(),
        state.origin
    );
    state
        .witnessed
        .check()
        .with_context(|| format!("{}", path.display()))?;
    Ok(state.witnessed)
}

async fn answer(witness: &Arc<Witness>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/add-checkpoint" {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != hyper::Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => return text(StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "the body came too slowly\n"),
    };
    let witness = witness.clone();
    tokio::task::spawn_blocking(move || witness.add_checkpoint(&body))
        .await
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"))
}

impl Witness {
    fn add_checkpoint(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let request = match AddCheckpoint::parse(body) {
            Ok(request) => request,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e}\n")),
        };
        let Ok(mut held) = self.held.lock() else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
        };
        match check(&request, &self.origin, &self.log_keys, Some(&*held)) {
            Ok((_, witnessed)) => {
                // The same checkpoint again changes nothing to keep.
                if witnessed != *held {
                    let state = State {
                        origin: self.origin.clone(),
                        witnessed: witnessed.clone(),
                    };
                    if let Err(e) = persist(&self.state_path, &state) {
                        eprintln!("witness: keeping the state: {e:#}");
                        return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
                    }
                    *held = witnessed;
                }
                // The body exactly as the log signed it (check parsed it).
                let body = request
                    .note
                    .split_once("\n\n")
                    .map(|(b, _)| format!("{b}\n"))
                    .unwrap_or_default();
                match self.cosign(&body) {
                    Ok(line) => text(StatusCode::OK, &line),
                    Err(e) => {
                        eprintln!("witness: signing: {e:#}");
                        text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                    }
                }
            }
            Err(refused) => {
                // A fork is evidence: said loudly, with what was shown.
                eprintln!(
                    "witness: refused a checkpoint of {}: {refused}",
                    self.origin
                );
                let status = StatusCode::from_u16(refused.status())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                match refused {
                    Refused::OtherSize(size) => {
                        let mut r = text(status, &format!("{size}\n"));
                        let _ = r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("text/x.tlog.size"),
                        );
                        r
                    }
                    other => text(status, &format!("{other}\n")),
                }
            }
        }
    }

    fn cosign(&self, body: &str) -> anyhow::Result<String> {
        let time = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp())?;
        let message = dojang::audit::witness::cosigned_message(body, time);
        let signature =
            openssl::sign::Signer::new_without_digest(&self.key)?.sign_oneshot_to_vec(&message)?;
        Ok(self.cosigner.line(time, &signature))
    }
}

/// Writes the state through a new temporary file (never one that was
/// there: a planted link is not followed), synced, then renamed.
fn persist(path: &Path, state: &State) -> anyhow::Result<()> {
    let temporary = write_temporary(path, state)?;
    std::fs::rename(&temporary, path)?;
    sync_directory(path)
}

/// [`persist`] for a state that must not replace one: linked into place
/// (which fails if `path` appeared meanwhile), then the temporary removed.
fn persist_new(path: &Path, state: &State) -> anyhow::Result<()> {
    let temporary = write_temporary(path, state)?;
    let linked = std::fs::hard_link(&temporary, path);
    std::fs::remove_file(&temporary)?;
    linked.with_context(|| format!("creating {}", path.display()))?;
    sync_directory(path)
}

/// The state written, synced, to a new temporary file beside `path`.
fn write_temporary(path: &Path, state: &State) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)?;
    file.write_all(&serde_json::to_vec(state)?)?;
    file.sync_all()?;
    Ok(temporary)
}

fn sync_directory(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let _ = response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
