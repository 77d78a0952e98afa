//! What a credential says tells nobody more than it must: status positions
//! drawn at random from fixed-size lists, never in order, and in range of
//! the list a verifier fetches the moment the credential is answered, on
//! any node; signing times to the day, never the issuance second.
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
fn a_position_drawn_on_one_node_is_in_range_on_the_other_at_once() {
    let Some(schema) = PgSchema::create() else {
        return;
    };
    let a = Daemon::start(Options {
        store: Store::Postgres(schema.url.clone()),
        ..Options::default()
    });
    let b = a.second_node("b");
    let positions: Vec<u64> = (0..200)
        .map(|n| {
            let (issuer, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
            issue_and_look_up(issuer, other, n).1
        })
        .collect();
    assert_random(&positions);
    drop(b);
    drop(a);
    drop(schema);
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

/// Runs the independent status-list reader on the token at `path`.
fn independent_read(d: &Daemon, form: &str, path: &str, idx: u64) -> serde_json::Value {
    let token = d.public_client().get(path);
    assert_eq!(token.status, 200, "{path}");
    let dir = d.scratch();
    let (token_file, jwks_file) = (dir.join(format!("token.{form}")), dir.join("status.jwks"));
    std::fs::write(&token_file, &token.body).unwrap();
    std::fs::write(&jwks_file, d.public_client().get("/status/jwks.json").body).unwrap();
    let (ok, out) = common::python_verify(
        "verify_status_list.py",
        &[
            std::path::Path::new(form),
            &token_file,
            &jwks_file,
            std::path::Path::new(&idx.to_string()),
        ],
    );
    assert!(ok, "{form} refused: {out}");
    serde_json::from_str(out.trim()).unwrap()
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
    let id = mdoc["id"].as_str().unwrap();
    let revoked = d.client("counter").send(
        "POST",
        &format!("/v1/credentials/{id}/revoke"),
        &[],
        Vec::new(),
    );
    assert_eq!(revoked.status, 200);
    assert_eq!(
        independent_read(&d, "cwt", &format!("{path}.cwt"), idx)["status"],
        1
    );
    assert_eq!(independent_read(&d, "jwt", &path, idx)["status"], 1);
    // A token with a flipped byte is refused.
    let mut token = d.public_client().get(&format!("{path}.cwt")).body;
    let last = token.len() - 1;
    token[last] ^= 1;
    let keys = d.public_client().get("/status/jwks.json").json();
    let jwk: pkcs11_shim::Jwk = serde_json::from_value(keys["keys"][0].clone()).unwrap();
    let key = pkcs11_shim::public_key_from_jwk(&jwk).unwrap();
    assert!(dojang::status::verify_cwt(&token, &key).is_err());
}
