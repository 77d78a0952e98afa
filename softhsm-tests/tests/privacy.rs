//! What a credential says tells nobody more than it must: status positions
//! drawn at random from fixed-size lists, never in order, and in range of
//! the list a verifier fetches the moment the credential is answered, on
//! any node; signing times to the day, never the issuance second. And the
//! lists themselves are verifiable from the IACA alone.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
mod common;

use base64::Engine;
use softhsm_tests::daemon::{self, Daemon, Options, PgSchema, Store};
use time::OffsetDateTime;

const LIST_SIZE: u64 = 1 << 20;

/// Issues one credential through `issuer` for holder `n` and returns its
/// status position; `served_by` must serve a list that has it in range and
/// says it is valid, right after the 201.
fn issue_and_look_up(issuer: &Daemon, served_by: &Daemon, n: u32) -> (String, u64) {
    let body = issue(issuer, "mdoc", n);
    let uri = body["status"]["uri"].as_str().unwrap().to_owned();
    let idx = body["status"]["idx"].as_u64().unwrap();
    // Nodes behind one address serve the same path; the token is verified
    // (an mdoc names the CBOR form).
    assert!(uri.ends_with(".cwt"), "{uri}");
    let path = format!("/status/{}", uri.rsplit_once('/').unwrap().1);
    let served = served_by.status_token_at(&path);
    assert_eq!(served.list.len(), LIST_SIZE);
    assert_eq!(served.list.get(idx), Some(0), "position {idx} of {uri}");
    (uri, idx)
}

/// The longest run of strictly increasing or strictly decreasing positions.
fn longest_monotone_run(positions: &[u64]) -> usize {
    let (mut longest, mut up, mut down) = (1, 1, 1);
    for pair in positions.windows(2) {
        up = if pair[1] > pair[0] { up + 1 } else { 1 };
        down = if pair[1] < pair[0] { down + 1 } else { 1 };
        longest = longest.max(up).max(down);
    }
    longest
}

/// Pearson's statistic of the positions over 16 equal parts of the list.
fn chi_square_16(positions: &[u64]) -> f64 {
    let mut buckets = [0u32; 16];
    for p in positions {
        buckets[(p * 16 / LIST_SIZE) as usize] += 1;
    }
    let expected = positions.len() as f64 / 16.0;
    buckets
        .iter()
        .map(|&o| (f64::from(o) - expected).powi(2) / expected)
        .sum()
}

/// What a random draw passes and an allocation in order fails.
fn assert_random(positions: &[u64]) {
    let mut unique = positions.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        positions.len(),
        "a position was handed out twice"
    );
    assert!(positions.iter().all(|p| *p < LIST_SIZE));
    // No arithmetic progression: three positions in a row never step by
    // the same difference (chance for uniform draws: about n / 2^20).
    for w in positions.windows(3) {
        assert_ne!(
            w[1].wrapping_sub(w[0]),
            w[2].wrapping_sub(w[1]),
            "an arithmetic progression: {w:?}"
        );
    }
    // Monotone runs: in n uniform draws a run of k or more is expected
    // about 2n/k! times, so a run of 6 appears ~3 times in 1,000 draws and
    // is no sign of order; 13 or more (~3e-7 for n = 1,000) is.
    let run = longest_monotone_run(positions);
    assert!(
        run < 13,
        "a monotone run of {run}: positions follow an order"
    );
    // Uniform over the list: chi-square with 15 degrees of freedom; 50
    // is exceeded by chance with probability about 1e-5.
    if positions.len() >= 160 {
        let chi = chi_square_16(positions);
        assert!(chi < 50.0, "not uniform over the list: chi-square {chi:.1}");
    }
}

#[test]
fn a_thousand_issuances_take_random_positions_in_range_at_once() {
    let d = Daemon::start(Options::default());
    let issued: Vec<(String, u64)> = (0..1000).map(|n| issue_and_look_up(&d, &d, n)).collect();
    let positions: Vec<u64> = issued.iter().map(|(_, i)| *i).collect();
    assert!(
        issued.iter().all(|(uri, _)| *uri == issued[0].0),
        "one list"
    );
    assert_random(&positions);
    eprintln!(
        "1,000 positions: longest monotone run {}, chi-square {:.1}",
        longest_monotone_run(&positions),
        chi_square_16(&positions)
    );
    // Fixed size (checked above for every token) whatever the list
    // holds: its length says nothing of how many IDs exist.
    let path = format!("/status/{}", issued[0].0.rsplit_once('/').unwrap().1);
    let served = d.status_token_at(&path);
    eprintln!(
        "a 2^20 list holding 1,000: {} bytes as CWT, {} as JWT",
        d.public_client().get(&path).body.len(),
        d.public_client()
            .get(path.trim_end_matches(".cwt"))
            .body
            .len()
    );
    assert!(served.exp > served.iat);
    assert!(served.ttl > 0);
}

#[test]
fn positions_drawn_on_two_nodes_are_random_in_range_at_once_and_changes_cross_in_30_s() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let a = Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        ..Options::default()
    });
    let b = a.second_node("b");
    let issued: Vec<(String, u64)> = (0..1000)
        .map(|n| {
            let (issuer, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
            issue_and_look_up(issuer, other, n)
        })
        .collect();
    let positions: Vec<u64> = issued.iter().map(|(_, i)| *i).collect();
    assert_random(&positions);
    eprintln!(
        "1,000 positions on two PostgreSQL nodes: longest monotone run {}, chi-square {:.1}",
        longest_monotone_run(&positions),
        chi_square_16(&positions)
    );
    // A revocation on a reaches b's served list in the background, with
    // no request to b asking for it, within the stated 30 s.
    let revoked = issue(&a, "mdoc", 5000);
    let (uri, idx) = (
        revoked["status"]["uri"].as_str().unwrap(),
        revoked["status"]["idx"].as_u64().unwrap(),
    );
    let path = list_path(uri);
    assert_eq!(b.status_token_at(&path).list.get(idx), Some(0));
    let signed_before = metric(&b, "dojang_status_list_signatures_total");
    revoke(&a, revoked["id"].as_str().unwrap());
    let started = std::time::Instant::now();
    while metric(&b, "dojang_status_list_signatures_total") <= signed_before {
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert!(metric(&b, "dojang_status_list_staleness_seconds") <= 30.0);
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(b.status_token_at(&path).list.get(idx), Some(1));
    eprintln!(
        "a revocation on one node in the other's list after {:.1} s (bound 30 s)",
        started.elapsed().as_secs_f64()
    );
    drop(b);
    drop(a);
    drop(schema);
}

/// Revokes credential `id` through `d`, as the counter's client.
fn revoke(d: &Daemon, id: &str) {
    let reply = d.client("counter").send(
        "POST",
        &format!("/v1/credentials/{id}/revoke"),
        &[],
        Vec::new(),
    );
    assert_eq!(reply.status, 200);
}

/// A sample's value on `d`'s `/metrics`.
fn metric(d: &Daemon, name: &str) -> f64 {
    let text = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Issues `profile` for holder `n`; the 201's body.
fn issue(d: &Daemon, profile: &str, n: u32) -> serde_json::Value {
    let (jwk, _) = daemon::phone();
    let request = daemon::request(profile, &daemon::number(50_000 + n), &jwk);
    let reply = d
        .client("counter")
        .post_json("/v1/credentials", &request, &[]);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()
}

/// The issuer-signed JWT's payload of an SD-JWT VC.
fn sd_jwt_payload(credential: &str) -> serde_json::Value {
    let jwt = credential.split('~').next().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

#[test]
fn signing_times_say_the_day_not_the_second() {
    let d = Daemon::start(Options::default());
    let first = issue(&d, "sd-jwt", 1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = issue(&d, "sd-jwt", 2);
    let mdoc = issue(&d, "mdoc", 3);
    let now = OffsetDateTime::now_utc();
    // The day began at midnight in Seoul, unless the DS certificate is
    // younger (as in this test): then at its notBefore, which every
    // credential that key signs shares.
    let label = first["key_label"].as_str().unwrap();
    let ds =
        openssl::x509::X509::from_pem(&d.public_client().get(&format!("/ds/{label}.pem")).body)
            .unwrap();
    let epoch = openssl::asn1::Asn1Time::from_unix(0).unwrap();
    let not_before = epoch.diff(ds.not_before()).unwrap();
    let not_before = i64::from(not_before.days) * 86_400 + i64::from(not_before.secs);
    let seoul_midnight = now
        .to_offset(time::macros::offset!(+9))
        .replace_time(time::Time::MIDNIGHT);
    let expected = seoul_midnight.unix_timestamp().max(not_before);
    for reply in [&first, &second] {
        let payload = sd_jwt_payload(reply["credential"].as_str().unwrap());
        assert_eq!(payload["iat"], expected, "{payload}");
        assert_eq!(payload["nbf"], expected);
        assert!(payload["iat"].as_i64().unwrap() <= now.unix_timestamp());
    }
    let verified = d.verify_mdoc(mdoc["credential"].as_str().unwrap());
    assert_eq!(verified.valid_from.unix_timestamp(), expected);
}

/// Runs the independent status-list reader on the token at `path`: the
/// key from the status JWKS, or (`iaca`) only from the certificate the
/// token carries, which must chain to that IACA. Its answer, if it read
/// the token; its refusal otherwise.
fn independent_read_as(
    d: &Daemon,
    form: &str,
    path: &str,
    idx: u64,
    iaca: Option<&std::path::Path>,
) -> Result<serde_json::Value, String> {
    let token = d.public_client().get(path);
    assert_eq!(token.status, 200, "{path}");
    let dir = d.scratch();
    let (token_file, jwks_file) = (dir.join(format!("token.{form}")), dir.join("status.jwks"));
    std::fs::write(&token_file, &token.body).unwrap();
    std::fs::write(&jwks_file, d.public_client().get("/status/jwks.json").body).unwrap();
    let idx = idx.to_string();
    let mut args = vec![
        std::path::Path::new(form),
        &token_file,
        &jwks_file,
        std::path::Path::new(&idx),
    ];
    args.extend(iaca);
    let (ok, out) = common::python_verify("verify_status_list.py", &args);
    if ok {
        Ok(serde_json::from_str(out.trim()).unwrap())
    } else {
        Err(out)
    }
}

fn independent_read(d: &Daemon, form: &str, path: &str, idx: u64) -> serde_json::Value {
    independent_read_as(d, form, path, idx, None)
        .unwrap_or_else(|why| panic!("{form} refused: {why}"))
}

/// Waits until the token at `path` carries the status-list key's
/// certificate (the online IACA certifies it in the leading node's first
/// rounds; an offline one at the first ceremony); the certificate.
fn chained_token(d: &Daemon, path: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(certificate) = d.status_token_at(path).certificate {
            return certificate;
        }
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Both forms of the list at `path` read by the independent decoder from
/// the IACA alone: position `idx` has `status`.
fn assert_chained_to_iaca(d: &Daemon, path: &str, idx: u64, status: u64) {
    let _ = chained_token(d, path);
    let _ = chained_token(d, &format!("{path}.cwt"));
    let iaca = d.scratch().join("pki/iaca.pem");
    for (form, at) in [("jwt", path.to_owned()), ("cwt", format!("{path}.cwt"))] {
        let read = independent_read_as(d, form, &at, idx, Some(&iaca))
            .unwrap_or_else(|why| panic!("{form} refused from the IACA: {why}"));
        assert_eq!(read["chain"], "iaca");
        assert_eq!(read["status"], status);
    }
}

fn list_path(uri: &str) -> String {
    let list = uri.rsplit_once("/status/").unwrap().1;
    format!("/status/{}", list.trim_end_matches(".cwt"))
}

#[test]
fn status_tokens_chain_to_the_iaca_and_a_swapped_certificate_is_never_carried() {
    let d = Daemon::start(Options::default());
    let mdoc = issue(&d, "mdoc", 12);
    let (path, idx) = (
        list_path(mdoc["status"]["uri"].as_str().unwrap()),
        mdoc["status"]["idx"].as_u64().unwrap(),
    );
    assert_chained_to_iaca(&d, &path, idx, 0);
    // The certificate is a status-list signer's, not a document signer's:
    // strict path validation to the IACA passes, and it has no DS purpose.
    let certificate = chained_token(&d, &path);
    let pem = openssl_x509_pem(&certificate);
    let iaca = d.scratch().join("pki/iaca.pem");
    let signer = write_scratch(&d, "status-signer.pem", &pem);
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&iaca)
        .arg(&signer)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let dump = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&signer)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dump.contains("Status List"), "{dump}");
    assert!(!dump.contains("1.0.18013.5.1.2"), "{dump}");
    // A database insider puts a document signer's certificate (issued by
    // the same IACA) on the status-list key's row: no token ever carries
    // it; the online IACA certifies the key again (audited), and tokens
    // chain to the IACA with the new certificate.
    let ds = swap_in_ds_certificate(&d);
    wait_for_carried(&d, &path, &ds, |c| c.is_some_and(|c| c != certificate));
    assert_chained_to_iaca(&d, &path, idx, 0);
    assert_eq!(
        d.audit_entries()
            .iter()
            .filter(|e| e.contains("keys.certify"))
            .count(),
        2,
        "the certification and the re-certification"
    );
}

/// A database insider's edit: the first DS certificate copied onto the
/// status-list key's row; that certificate.
/// Reads the status token at `path` until the certificate it carries is
/// `done` (20 s at most); never may it carry the smuggled `ds` certificate.
fn wait_for_carried(d: &Daemon, path: &str, ds: &[u8], done: impl Fn(Option<&[u8]>) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let carried = d.status_token_at(path).certificate;
        assert_ne!(carried.as_deref(), Some(ds), "the DS certificate");
        if done(carried.as_deref()) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn swap_in_ds_certificate(d: &Daemon) -> Vec<u8> {
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let ds: Vec<u8> = db
        .query_row(
            "SELECT certificate FROM signing_keys WHERE chain = 'ds' AND certificate IS NOT NULL LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let swapped = db
        .execute(
            "UPDATE signing_keys SET certificate = ?1 WHERE chain = 'status-list'",
            [&ds],
        )
        .unwrap();
    assert!(swapped >= 1);
    ds
}

fn status_key_readiness(d: &Daemon) -> String {
    let ready = d.ops_client().get("/readyz").json();
    ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "status_list_key")
        .unwrap()["detail"]
        .to_string()
}

#[test]
fn an_offline_ceremony_certifies_the_status_list_key_and_a_swapped_certificate_is_refused() {
    let d = Daemon::start(Options {
        offline_iaca: true,
        ..Options::default()
    });
    // The daemon's first ceremony request asked for the status-list key's
    // certificate beside the DS spares; the import put it on the key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.keys().iter().any(|k| k["state"] == "active") {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mdoc = issue(&d, "mdoc", 13);
    let (path, idx) = (
        list_path(mdoc["status"]["uri"].as_str().unwrap()),
        mdoc["status"]["idx"].as_u64().unwrap(),
    );
    assert_chained_to_iaca(&d, &path, idx, 0);
    assert!(
        d.audit_entries()
            .iter()
            .any(|e| e.contains("keys.certify") && e.contains("status")),
        "the certification is audited"
    );
    assert!(status_key_readiness(&d).contains("certified by the IACA"));
    // A database insider copies a DS certificate (same IACA) onto the
    // status-list key's row: the node refuses it, its tokens carry no
    // chain until the next ceremony, a verifier trusting only the IACA
    // refuses them, and readiness says so.
    let ds = swap_in_ds_certificate(&d);
    wait_for_carried(&d, &path, &ds, |c| c.is_none());
    let iaca = d.scratch().join("pki/iaca.pem");
    for (form, at) in [("jwt", path.clone()), ("cwt", format!("{path}.cwt"))] {
        let refused = independent_read_as(&d, form, &at, idx, Some(&iaca)).unwrap_err();
        assert!(refused.contains("no x5c"), "{refused}");
    }
    let detail = status_key_readiness(&d);
    assert!(detail.contains("no certificate"), "{detail}");
}

fn openssl_x509_pem(der: &[u8]) -> Vec<u8> {
    openssl::x509::X509::from_der(der)
        .unwrap()
        .to_pem()
        .unwrap()
}

fn write_scratch(d: &Daemon, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = d.scratch().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn both_encodings_are_read_by_independent_decoders() {
    let d = Daemon::start(Options::default());
    let mdoc = issue(&d, "mdoc", 10);
    let sd_jwt = issue(&d, "sd-jwt", 11);
    // An mdoc names the CBOR form, an SD-JWT VC the JWT form of one list.
    let cwt_uri = mdoc["status"]["uri"].as_str().unwrap();
    let jwt_uri = sd_jwt["status"]["uri"].as_str().unwrap();
    assert_eq!(cwt_uri, format!("{jwt_uri}.cwt"));
    let verified = d.verify_mdoc(mdoc["credential"].as_str().unwrap());
    assert_eq!(verified.status.as_ref().unwrap().uri, cwt_uri);
    let path = jwt_uri
        .split_once("/status/")
        .map(|(_, l)| format!("/status/{l}"))
        .unwrap();
    let idx = mdoc["status"]["idx"].as_u64().unwrap();
    for (form, at, sub) in [
        ("cwt", format!("{path}.cwt"), cwt_uri),
        ("jwt", path.clone(), jwt_uri),
    ] {
        let read = independent_read(&d, form, &at, idx);
        assert_eq!(read["sub"], sub);
        assert_eq!(read["bits"], 2);
        assert_eq!(read["size"], LIST_SIZE);
        assert_eq!(read["status"], 0);
        assert!(read["exp"].as_i64() > read["iat"].as_i64());
    }
    // Content negotiation at the list's URI.
    let negotiated = d.public_client().send(
        "GET",
        &path,
        &[("accept", "application/statuslist+cwt")],
        Vec::new(),
    );
    assert_eq!(
        negotiated.header("content-type"),
        Some("application/statuslist+cwt")
    );
    // A revocation reaches both forms.
    revoke(&d, mdoc["id"].as_str().unwrap());
    assert_eq!(
        independent_read(&d, "cwt", &format!("{path}.cwt"), idx)["status"],
        1
    );
    assert_eq!(independent_read(&d, "jwt", &path, idx)["status"], 1);
    // And from the IACA alone, through the certificate each form carries.
    assert_chained_to_iaca(&d, &path, idx, 1);
    // A token with a flipped byte is refused.
    let mut token = d.public_client().get(&format!("{path}.cwt")).body;
    let last = token.len() - 1;
    token[last] ^= 1;
    let keys = d.public_client().get("/status/jwks.json").json();
    let jwk: pkcs11_shim::Jwk = serde_json::from_value(keys["keys"][0].clone()).unwrap();
    let key = pkcs11_shim::public_key_from_jwk(&jwk).unwrap();
    assert!(dojang::status::verify_cwt(&token, &key).is_err());
}
