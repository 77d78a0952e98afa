//! The real `dojangd` process over real mTLS: who gets in, what every
//! endpoint answers, and how each class of bad input is refused.
#![allow(clippy::unwrap_used)]
#![allow(clippy::indexing_slicing, clippy::panic, clippy::expect_used)] // test code: a failed expect, panic or index is a failed test

use std::io::Write;
use std::path::Path;

use dojang::credential::verify::Trust;
use dojang::credential::{mdoc, sdjwt};
use softhsm_tests::daemon::{self, Daemon, Options};
use time::OffsetDateTime;

fn problem(reply: &softhsm_tests::https::Reply, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let body = reply.json();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert!(body["request_id"].as_str().is_some_and(|r| r.len() == 16));
    body
}

#[test]
fn mtls_admits_only_valid_certificates_with_a_role() {
    let d = Daemon::start(Options::default());
    let (jwk, _) = daemon::phone();
    let body = serde_json::to_vec(&daemon::request("mdoc", &daemon::number(1), &jwk)).unwrap();
    let headers = [("content-type", "application/json")];
    for refused in ["", "foreign", "expired", "notyet", "revoked"] {
        let mut c = softhsm_tests::https::Client::new(d.api_target(refused, false));
        let result = c.try_send("POST", "/v1/credentials", &headers, body.clone());
        assert!(
            result.is_err(),
            "certificate {refused:?} was let in: {result:?}"
        );
    }
    // A valid certificate without an identity, and one without a role.
    let reply = d
        .client("nosan")
        .send("POST", "/v1/credentials", &headers, body.clone());
    let p = problem(&reply, 401, "no_client_identity");
    assert_eq!(p["rule"], "client.identity");
    // Exactly one identity: several names, or a wildcard, are refused
    // (the first of two URIs must not decide who the client is).
    for (name, code) in [
        ("two-uris", "ambiguous_client_identity"),
        ("uri-and-dns", "ambiguous_client_identity"),
        ("wildcard", "malformed_client_identity"),
    ] {
        let reply = d
            .client(name)
            .send("POST", "/v1/credentials", &headers, body.clone());
        let p = problem(&reply, 401, code);
        assert_eq!(p["rule"], "client.identity", "{name}");
    }
    // The four refusals are counted, timed and logged like any answer.
    let metrics = String::from_utf8(d.ops_client().get("/metrics").body).unwrap();
    let api = "listener=\"api\",route=\"/v1/credentials\"";
    for series in [
        format!("dojang_http_requests_total{{{api},status=\"4xx\"}} 4"),
        format!("dojang_http_request_duration_seconds_count{{{api}}} 4"),
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
    }
    let log = d.log();
    for code in ["no_client_identity", "malformed_client_identity"] {
        assert!(
            log.lines()
                .any(|l| l.contains(" request ") && l.contains(code) && l.contains("status=401")),
            "{code}: {log}"
        );
    }
    let reply = d
        .client("stranger")
        .send("POST", "/v1/credentials", &headers, body.clone());
    let p = problem(&reply, 403, "forbidden");
    assert_eq!(p["rule"], "client.role");
    // An issuer without the revoker role cannot revoke.
    let reply = d.client("gateway").send(
        "POST",
        "/v1/credentials/00000000000000000000000000000000/revoke",
        &[],
        Vec::new(),
    );
    let _ = problem(&reply, 403, "forbidden");
    // The good client gets its credential.
    let reply = d
        .client("counter")
        .send("POST", "/v1/credentials", &headers, body);
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let log = d.log();
    assert!(log.contains("TLS handshake refused"), "{log}");
}

#[test]
fn a_separate_officer_ca_alone_makes_officers_and_nothing_else() {
    let d = Daemon::start(Options {
        api: "officer_ca = \"{tls}/officer-ca.pem\"".into(),
        ..Options::default()
    });
    // An officers' CA with the services CA's key would make every service
    // an officer: the configuration is refused.
    let shared = Daemon::start(Options {
        api: "officer_ca = \"{tls}/ca.pem\"".into(),
        spawn: false,
        ..Options::default()
    });
    let out = shared
        .command("dojangd")
        .arg("validate")
        .arg("--config")
        .arg(&shared.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shares a key with client_ca"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(shared);
    // Without it configured, the officers' CA is not even trusted.
    let plain = Daemon::start(Options::default());
    let mut outsider = softhsm_tests::https::Client::new(plain.api_target("kim-officer-ca", false));
    assert!(outsider
        .try_send("GET", "/v1/approvals", &[], Vec::new())
        .is_err());
    drop(plain);

    // Officer kim with the officers' CA certificate: an officer.
    let reply = d.client("kim-officer-ca").get("/v1/approvals");
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // Kim's certificate from the services' CA: not an officer.
    let p = problem(&d.client("kim").get("/v1/approvals"), 403, "forbidden");
    assert_eq!(p["rule"], "client.ca");
    // The officers' CA cannot make an issuer, even for a policy issuer.
    let (jwk, _) = daemon::phone();
    let reply = d.client("counter-officer-ca").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(1), &jwk),
        &[],
    );
    let p = problem(&reply, 403, "forbidden");
    assert_eq!(p["rule"], "client.ca");
    // The services' CA still makes issuers.
    let reply = d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(2), &jwk),
        &[],
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

#[test]
fn issues_both_profiles_verified_independently_and_manages_their_status() {
    let d = Daemon::start(Options::default());
    let mut counter = d.client("counter");
    let iaca = d.iaca_der();
    let mut issued = Vec::new();
    for (n, profile) in ["mdoc", "sd-jwt"].into_iter().enumerate() {
        let (jwk, _) = daemon::phone();
        let reply = counter.post_json(
            "/v1/credentials",
            &daemon::request(profile, &daemon::number(n as u32 + 10), &jwk),
            &[],
        );
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let r = reply.json();
        assert_eq!(r["profile"], profile);
        assert_eq!(r["fee_krw"], 0, "first-time applicants get a free copy");
        assert_eq!(r["free_copy"], true);
        assert_eq!(r["key_label"], "ds-1");
        let credential = r["credential"].as_str().unwrap();
        let file = d.scratch().join(format!("issued.{profile}"));
        std::fs::write(&file, credential).unwrap();
        match profile {
            "mdoc" => {
                let v = d.verify_mdoc(credential);
                assert_eq!(v.status.as_ref().unwrap().idx, r["status"]["idx"]);
                let (ok, out) = python_verify(
                    "verify_mdoc.py",
                    &[
                        &file,
                        &d.scratch().join("pki/iaca.pem"),
                        Path::new(mdoc::DOC_TYPE),
                    ],
                );
                assert!(ok, "pymdoccbor refused: {out}");
            }
            _ => {
                let v = sdjwt::verify(
                    credential,
                    &Trust::Iaca(iaca.clone()),
                    // After the issuance: its signature is not valid before it.
                    OffsetDateTime::now_utc(),
                    Some(sdjwt::VCT),
                )
                .unwrap();
                assert_eq!(v.header["kid"], r["kid"]);
                let (ok, out) = python_verify(
                    "verify_sdjwt.py",
                    &[&file, &d.scratch().join("pki/ds/ds-1.pem")],
                );
                assert!(ok, "sd-jwt refused: {out}");
            }
        }
        issued.push(r);
    }

    // Metadata: the state and references, never personal data.
    let id = issued[0]["id"].as_str().unwrap();
    let meta = counter.get(&format!("/v1/credentials/{id}"));
    assert_eq!(meta.status, 200);
    let text = String::from_utf8_lossy(&meta.body).to_string();
    for personal in ["홍", "길동", "000515", "종로구"] {
        assert!(
            !text.contains(personal),
            "metadata leaks {personal}: {text}"
        );
    }
    assert_eq!(meta.json()["state"], "active");
    // Each names the status list in its own format's form (an mdoc the
    // CWT, an SD-JWT VC the JWT), as its issuance answer did.
    for r in &issued {
        let meta = counter
            .get(&format!("/v1/credentials/{}", r["id"].as_str().unwrap()))
            .json();
        assert_eq!(meta["status"], r["status"], "{meta}");
    }

    // Status bits as a verifier sees them, through suspend, reinstate, revoke.
    let uri = issued[0]["status"]["uri"].as_str().unwrap().to_owned();
    let idx = issued[0]["status"]["idx"].as_u64().unwrap();
    assert_eq!(d.status_bit(&uri, idx), 0);
    for (action, state, bit) in [
        ("suspend", "suspended", 2),
        ("reinstate", "active", 0),
        ("revoke", "revoked", 1),
    ] {
        let reply = counter.send(
            "POST",
            &format!("/v1/credentials/{id}/{action}"),
            &[],
            Vec::new(),
        );
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.json()["state"], state);
        assert_eq!(reply.json()["status"], issued[0]["status"]);
        assert_eq!(d.status_bit(&uri, idx), bit, "after {action}");
    }
    let again = counter.send(
        "POST",
        &format!("/v1/credentials/{id}/reinstate"),
        &[],
        Vec::new(),
    );
    let p = problem(&again, 409, "invalid_transition");
    assert_eq!(p["rule"], "credential.state_machine");
    let missing = counter.get("/v1/credentials/0123456789abcdef0123456789abcdef");
    let _ = problem(&missing, 404, "not_found");

    // Public documents verifiers fetch.
    let mut public = d.public_client();
    let jwks = public.get("/.well-known/jwks.json");
    assert_eq!(jwks.header("cache-control"), Some("public, max-age=300"));
    let keys = jwks.json()["keys"].as_array().unwrap().clone();
    let ds = keys.iter().find(|k| k["kid"] == issued[0]["kid"]).unwrap();
    assert_eq!(ds["x5c"].as_array().unwrap().len(), 2);
    let meta = public.get("/.well-known/jwt-vc-issuer").json();
    assert_eq!(meta["issuer"], "https://id.example.kr");
    let iaca_pem = public.get("/iaca.pem");
    assert_eq!(iaca_pem.status, 200);
    assert_eq!(
        openssl::x509::X509::from_pem(&iaca_pem.body)
            .unwrap()
            .to_der()
            .unwrap(),
        iaca
    );
    assert_eq!(public.get("/ds/ds-1.pem").status, 200);
    assert_eq!(public.get("/ds/nope.pem").status, 404);
    assert_eq!(public.get("/status/999").status, 404);
}

fn raw_api(d: &Daemon) -> openssl::ssl::SslStream<std::net::TcpStream> {
    softhsm_tests::https::raw_tls(
        d.api,
        &d.tls.join("ca.pem"),
        Some((&d.tls.join("counter.pem"), &d.tls.join("counter.key"))),
    )
}

fn python_verify(script: &str, args: &[&Path]) -> (bool, String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(dir.join("../.venv/bin/python"))
        .arg(dir.join("python").join(script))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn idempotency_answers_expire_after_their_ttl() {
    let d = Daemon::start(Options {
        limits: "idempotency_ttl_s = 1".into(),
        ..Options::default()
    });
    let mut counter = d.client("counter");
    let (jwk, _) = daemon::phone();
    let request = daemon::request("mdoc", &daemon::number(21), &jwk);
    let key = [("idempotency-key", "order-21")];
    let first = counter.post_json("/v1/credentials", &request, &key);
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    // The sealed answer (a whole credential) is deleted once expired…
    let db = rusqlite::Connection::open(d.scratch().join("registry.db")).unwrap();
    let rows = || -> i64 {
        db.query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(rows(), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while rows() > 0 {
        assert!(std::time::Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // …so the same key is a new request: refused (one live ID per person),
    // never a second credential.
    let again = d
        .client("counter")
        .post_json("/v1/credentials", &request, &key);
    assert_eq!(
        again.status,
        409,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
}

#[test]
fn idempotency_keys_replay_the_same_answer_and_refuse_another_body() {
    let d = Daemon::start(Options::default());
    let mut counter = d.client("counter");
    let (jwk, _) = daemon::phone();
    let request = daemon::request("sd-jwt", &daemon::number(20), &jwk);
    let key = [("idempotency-key", "order-20")];
    let first = counter.post_json("/v1/credentials", &request, &key);
    assert_eq!(
        first.status,
        201,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    let second = counter.post_json("/v1/credentials", &request, &key);
    assert_eq!(second.status, 201);
    assert_eq!(first.body, second.body, "a replay returns the first answer");
    // Without the key, the same request is a second issuance: refused.
    let third = counter.post_json("/v1/credentials", &request, &[]);
    assert_eq!(
        third.status,
        409,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    // Same key, another body.
    let mut other = request.clone();
    other["channel"] = "qr_office".into();
    let p = counter.post_json("/v1/credentials", &other, &key);
    let body = problem(&p, 422, "idempotency_key_reused");
    assert_eq!(body["rule"], "idempotency.same_body");
    // Another client's key space is its own.
    let (jwk2, _) = daemon::phone();
    let fresh = d.client("gateway").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(21), &jwk2),
        &key,
    );
    assert_eq!(fresh.status, 201);
    // The stored response is sealed: the registry holds no credential text.
    let db = std::fs::read(d.scratch().join("registry.db")).unwrap_or_default();
    let wal = std::fs::read(d.scratch().join("registry.db-wal")).unwrap_or_default();
    let credential = first.json()["credential"].as_str().unwrap()[..40].to_owned();
    for bytes in [db, wal] {
        assert!(
            !bytes
                .windows(credential.len())
                .any(|w| w == credential.as_bytes()),
            "the credential is stored in clear"
        );
        assert!(!bytes.windows(6).any(|w| w == "홍길".as_bytes()));
    }
}

#[test]
fn each_class_of_bad_input_gets_its_problem() {
    let d = Daemon::start(Options::default());
    let mut c = d.client("counter");
    let json = [("content-type", "application/json")];
    let send = |c: &mut softhsm_tests::https::Client, headers: &[(&str, &str)], body: &[u8]| {
        c.send("POST", "/v1/credentials", headers, body.to_vec())
    };
    let (jwk, _) = daemon::phone();
    let good = daemon::request("mdoc", &daemon::number(30), &jwk);

    let _ = problem(
        &send(&mut c, &json, b"{\"profile\": "),
        400,
        "malformed_request",
    );
    let mut unknown = good.clone();
    unknown["extra"] = 1.into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&unknown).unwrap()),
        400,
        "unknown_field",
    );
    assert!(p["detail"].as_str().unwrap().contains("extra"));
    let _ = problem(
        &send(
            &mut c,
            &[("content-type", "text/plain")],
            &serde_json::to_vec(&good).unwrap(),
        ),
        415,
        "unsupported_media_type",
    );
    // Oversized, declared: refused before the body is read.
    let mut raw = raw_api(&d);
    raw.write_all(
        b"POST /v1/credentials HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          content-length: 5000000\r\n\r\n{",
    )
    .unwrap();
    let answer = softhsm_tests::https::read_all(&mut raw);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    // Oversized, chunked: refused once the limit is crossed.
    let mut raw = raw_api(&d);
    raw.write_all(
        b"POST /v1/credentials HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    for _ in 0..8 {
        if raw.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let answer = softhsm_tests::https::read_all(&mut raw);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let _ = problem(
        &send(&mut c, &json, deep.as_bytes()),
        400,
        "malformed_request",
    );
    // A wrong type must not echo the value (it may be personal data).
    let mut typed = good.clone();
    typed["holder"]["family_name"] = serde_json::json!(["홍비밀"]);
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&typed).unwrap()),
        400,
        "malformed_request",
    );
    assert!(!p.to_string().contains("홍비밀"), "{p}");

    // Device keys: off the curve, wrong curve, not base64.
    let mut off = good.clone();
    let mut y = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    y[31] ^= 1;
    off["device_key"]["y"] =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &y).into();
    let _ = problem(
        &send(&mut c, &json, &serde_json::to_vec(&off).unwrap()),
        400,
        "invalid_device_key",
    );
    let mut curve = good.clone();
    curve["device_key"]["crv"] = "secp256k1".into();
    let _ = problem(
        &send(&mut c, &json, &serde_json::to_vec(&curve).unwrap()),
        400,
        "invalid_device_key",
    );
    let mut number = good.clone();
    number["holder"]["resident_number"] = "001332-3123456".into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&number).unwrap()),
        400,
        "invalid_resident_number",
    );
    assert_eq!(p["rule"], "holder.resident_number_format");
    assert!(!p.to_string().contains("001332"));

    // Each class of input that looked well-formed and was not: refused with
    // its rule, before any key or row is touched.
    let mut private = good.clone();
    private["device_key"]["d"] = "AAAA".into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&private).unwrap()),
        400,
        "invalid_device_key",
    );
    assert_eq!(p["rule"], "device_key.public_only");
    for name in [
        "홍\u{202e}동길",
        "길\u{200b}동",
        "\u{feff}홍",
        "길\u{2066}동\u{2069}",
    ] {
        let mut trojan = good.clone();
        trojan["holder"]["given_name"] = name.into();
        let p = problem(
            &send(&mut c, &json, &serde_json::to_vec(&trojan).unwrap()),
            400,
            "invalid_holder_data",
        );
        assert_eq!(p["rule"], "holder.data", "{name:?}");
    }
    let mut noise = good.clone();
    noise["holder"]["portrait"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x42u8; 64]).into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&noise).unwrap()),
        400,
        "invalid_holder_data",
    );
    assert_eq!(p["rule"], "holder.portrait");
    for code in ["111100000", "11110000001", "1111\u{0}00000", "11110a0000"] {
        let mut place = good.clone();
        place["municipality"] = code.into();
        let p = problem(
            &send(&mut c, &json, &serde_json::to_vec(&place).unwrap()),
            400,
            "invalid_municipality",
        );
        assert_eq!(p["rule"], "request.municipality");
    }
    // Born in the future (an age rule would call it "under 17"), or in 1840.
    let next_year = (time::OffsetDateTime::now_utc().year() + 1) % 100;
    for (number, why) in [
        (format!("{next_year:02}0101-3123456"), "future"),
        ("400101-9123456".to_owned(), "before 1900"),
    ] {
        let mut born = good.clone();
        born["holder"]["resident_number"] = number.into();
        let p = problem(
            &send(&mut c, &json, &serde_json::to_vec(&born).unwrap()),
            400,
            "invalid_resident_number",
        );
        assert_eq!(p["rule"], "holder.birth_date", "{p}");
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
    }
    // A real JPEG portrait is signed.
    let mut jpeg = good.clone();
    let mut bytes = vec![0xff, 0xd8, 0xff, 0xe0];
    bytes.extend([0u8; 32]);
    bytes.extend([0xff, 0xd9]);
    jpeg["holder"]["portrait"] =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes).into();
    let (other_phone, _) = daemon::phone();
    jpeg["device_key"] = other_phone;
    jpeg["holder"]["resident_number"] = daemon::number(33).into();
    let ok = send(&mut c, &json, &serde_json::to_vec(&jpeg).unwrap());
    assert_eq!(ok.status, 201, "{}", ok.json());
    // The same holder on a new phone claims a first application again:
    // the registry knows better (the free quota is not spent on it).
    let mut again = jpeg.clone();
    again["device_key"] = daemon::phone().0;
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&again).unwrap()),
        422,
        "policy_denied",
    );
    assert_eq!(p["rule"], "holder.first_time", "{p}");
    again["first_time"] = false.into();
    let moved = send(&mut c, &json, &serde_json::to_vec(&again).unwrap());
    assert_eq!(moved.status, 201, "{}", moved.json());

    // Policy: too young (born 2015), no card, unknown channel.
    let mut young = good.clone();
    young["holder"]["resident_number"] = "150101-3123456".into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&young).unwrap()),
        422,
        "policy_denied",
    );
    assert_eq!(p["rule"], "holder.minimum_age");
    let mut no_card = good.clone();
    let _ = no_card.as_object_mut().unwrap().remove("card");
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&no_card).unwrap()),
        422,
        "policy_denied",
    );
    assert_eq!(p["rule"], "holder.physical_card");
    let mut profile = good.clone();
    profile["profile"] = "passport".into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&profile).unwrap()),
        403,
        "forbidden",
    );
    assert_eq!(p["rule"], "client.profile");

    // One person per phone: a second person on the same phone.
    assert_eq!(
        send(&mut c, &json, &serde_json::to_vec(&good).unwrap()).status,
        201
    );
    let mut second = good.clone();
    second["holder"]["resident_number"] = daemon::number(31).into();
    let p = problem(
        &send(&mut c, &json, &serde_json::to_vec(&second).unwrap()),
        409,
        "policy_conflict",
    );
    assert_eq!(p["rule"], "device.one_person");

    // Bad idempotency keys, unknown routes, wrong methods.
    let _ = problem(
        &send(
            &mut c,
            &[
                ("content-type", "application/json"),
                ("idempotency-key", ""),
            ],
            b"{}",
        ),
        400,
        "invalid_idempotency_key",
    );
    let _ = problem(&c.get("/v2/credentials"), 404, "not_found");
    let _ = problem(
        &c.send("DELETE", "/v1/credentials", &[], Vec::new()),
        405,
        "method_not_allowed",
    );

    // Still serving after all of that, on HTTP/2 too.
    let mut h2 = softhsm_tests::https::Client::new(d.api_target("counter", true));
    let (jwk, _) = daemon::phone();
    let reply = h2.post_json(
        "/v1/credentials",
        &daemon::request("sd-jwt", &daemon::number(32), &jwk),
        &[],
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );

    // Nothing personal in the log.
    let log = d.log();
    for personal in ["홍", "길동", "000515-3", "종로구", "150101"] {
        assert!(!log.contains(personal), "the log holds {personal}");
    }
}

#[test]
fn refresh_resigns_the_same_document_with_the_current_key() {
    let d = Daemon::start(Options::default());
    let mut counter = d.client("counter");
    let (jwk, _) = daemon::phone();
    let number = daemon::number(40);
    let issued = counter.post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &number, &jwk),
        &[],
    );
    assert_eq!(
        issued.status,
        201,
        "{}",
        String::from_utf8_lossy(&issued.body)
    );
    let issued = issued.json();
    let id = issued["id"].as_str().unwrap();

    // Two officers rotate: a new DS key signs from now.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let new_label = d.rotate_now();

    let body = serde_json::json!({
        "holder": daemon::request("mdoc", &number, &jwk)["holder"],
        "device_key": jwk,
    });
    let refreshed = counter.post_json(&format!("/v1/credentials/{id}/refresh"), &body, &[]);
    assert_eq!(
        refreshed.status,
        200,
        "{}",
        String::from_utf8_lossy(&refreshed.body)
    );
    let r = refreshed.json();
    assert_eq!(r["id"], issued["id"]);
    assert_eq!(r["key_label"], new_label.as_str());
    assert_ne!(r["kid"], issued["kid"]);
    assert_eq!(r["document_expiry"], issued["document_expiry"]);
    assert_eq!(r["status"], issued["status"]);
    let v = d.verify_mdoc(r["credential"].as_str().unwrap());
    assert_eq!(v.status.as_ref().unwrap().idx, issued["status"]["idx"]);
    let file = d.scratch().join("refreshed.mdoc");
    std::fs::write(&file, r["credential"].as_str().unwrap()).unwrap();
    let (ok, out) = python_verify(
        "verify_mdoc.py",
        &[
            &file,
            &d.scratch().join("pki/iaca.pem"),
            Path::new(mdoc::DOC_TYPE),
        ],
    );
    assert!(ok, "pymdoccbor refused: {out}");
    let meta = counter.get(&format!("/v1/credentials/{id}")).json();
    assert_eq!(meta["kid"], r["kid"]);

    // The same holder and phone with other claims: not the same document.
    let mut renamed = body.clone();
    renamed["holder"]["given_name"] = "길순".into();
    let p = problem(
        &counter.post_json(&format!("/v1/credentials/{id}/refresh"), &renamed, &[]),
        409,
        "registry_conflict",
    );
    assert_eq!(p["rule"], "refresh.same_claims");
    // Another holder's data, another phone, a revoked credential: refused.
    let other = serde_json::json!({
        "holder": daemon::request("mdoc", &daemon::number(41), &jwk)["holder"],
        "device_key": jwk,
    });
    let p = problem(
        &counter.post_json(&format!("/v1/credentials/{id}/refresh"), &other, &[]),
        409,
        "registry_conflict",
    );
    assert_eq!(p["rule"], "refresh.same_holder_and_phone");
    let (other_phone, _) = daemon::phone();
    let moved = serde_json::json!({"holder": body["holder"], "device_key": other_phone});
    let _ = problem(
        &counter.post_json(&format!("/v1/credentials/{id}/refresh"), &moved, &[]),
        409,
        "registry_conflict",
    );
    assert_eq!(
        counter
            .send(
                "POST",
                &format!("/v1/credentials/{id}/revoke"),
                &[],
                Vec::new()
            )
            .status,
        200
    );
    let p = problem(
        &counter.post_json(&format!("/v1/credentials/{id}/refresh"), &body, &[]),
        409,
        "invalid_transition",
    );
    assert_eq!(p["rule"], "credential.state_machine");
}

/// The API's TLS key lives in the token (`private_key_label`): handshakes
/// are signed there, clients of our own and curl (OpenSSL) both connect
/// and see a certificate for the token's key, no key file exists to copy,
/// and a key of another purpose is refused as the TLS key.
#[test]
fn the_api_tls_key_lives_in_the_token() {
    let d = Daemon::start(Options {
        tls_key_in_token: true,
        ..Options::default()
    });
    assert!(!d.tls.join("server.key").exists());
    let (jwk, _) = daemon::phone();
    let issued = d.client("counter").post_json(
        "/v1/credentials",
        &daemon::request("mdoc", &daemon::number(4100), &jwk),
        &[],
    );
    assert_eq!(issued.status, 201, "{}", issued.json());
    // An independent TLS client: curl over OpenSSL, with the client certificate.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(d.tls.join("ca.pem"))
        .arg("--cert")
        .arg(d.tls.join("counter.pem"))
        .arg("--key")
        .arg(d.tls.join("counter.key"))
        .arg("-w")
        .arg("%{http_code}")
        .arg(format!(
            "https://localhost:{}/v1/credentials/nope",
            d.api.port()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.ends_with("404"),
        "{text} {out:?}"
    );
    // The certificate presented is for the token's key, which never leaves it.
    let stream = std::net::TcpStream::connect(d.api).unwrap();
    let mut connector =
        openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    connector.set_ca_file(d.tls.join("ca.pem")).unwrap();
    connector
        .set_certificate_chain_file(d.tls.join("counter.pem"))
        .unwrap();
    connector
        .set_private_key_file(d.tls.join("counter.key"), openssl::ssl::SslFiletype::PEM)
        .unwrap();
    let tls = connector.build().connect("localhost", stream).unwrap();
    let presented = tls.ssl().peer_certificate().unwrap().public_key().unwrap();
    let shown: serde_json::Value =
        serde_json::from_str(&d.ctl(&["--json", "keys", "show", "tls-server-1"])).unwrap();
    let token_key =
        openssl::pkey::PKey::public_key_from_pem(shown["pem"].as_str().unwrap().as_bytes())
            .unwrap();
    assert!(presented.public_eq(&token_key));
    // One object per header line (`Private Key Object; EC`, then indented
    // attributes), in whatever order the token lists them.
    let objects = d.token_objects();
    let mut blocks: Vec<String> = Vec::new();
    for line in objects.lines() {
        match blocks.last_mut() {
            Some(block) if line.starts_with(char::is_whitespace) => {
                block.push('\n');
                block.push_str(line);
            }
            _ => blocks.push(line.to_owned()),
        }
    }
    let private = blocks
        .iter()
        .find(|b| b.starts_with("Private Key Object") && b.contains("label:      tls-server-1"))
        .unwrap_or_else(|| panic!("no private tls-server-1 in:\n{objects}"));
    assert!(private.contains("never extractable"), "{private}");
    // Another purpose's key is not a TLS key.
    let config = std::fs::read_to_string(&d.config).unwrap().replace(
        "private_key_label = \"tls-server-1\"",
        "private_key_label = \"audit-1\"",
    );
    let wrong = d.scratch().join("wrong-tls.toml");
    std::fs::write(&wrong, config).unwrap();
    let refused = d
        .command("dojangd")
        .args(["validate", "--config"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not a tls-server ES256 key"), "{err}");
}

/// A resumed TLS session would skip the client certificate's verification
/// against today's CRLs: the mTLS listener resumes none (every handshake is
/// a full one, the certificate checked each time).
#[test]
fn the_mtls_listener_resumes_no_session() {
    let d = Daemon::start(Options::default());
    assert_eq!(d.api_target("counter", false).resumed_handshakes(4), 0);
}

#[test]
fn an_office_counter_bound_to_its_district_cannot_issue_for_another() {
    let d = Daemon::start(Options {
        policy: |p| {
            p.replace(
                "identity = \"spiffe://mois.go.kr/office-counter\"\nroles = [\"issuer\", \"revoker\"]\n",
                "identity = \"spiffe://mois.go.kr/office-counter\"\nroles = [\"issuer\", \"revoker\"]\nmunicipalities = [\"1111000000\"]\n",
            )
        },
        ..Options::default()
    });
    let (jwk, _) = daemon::phone();
    let mut elsewhere = daemon::request("mdoc", &daemon::number(40), &jwk);
    elsewhere["municipality"] = "2611000000".into();
    let refused = d
        .client("counter")
        .post_json("/v1/credentials", &elsewhere, &[]);
    assert_eq!(refused.status, 403, "{}", refused.json());
    assert_eq!(refused.json()["rule"], "client.municipality");
    // Its own district is issued.
    let (jwk, _) = daemon::phone();
    let own = daemon::request("mdoc", &daemon::number(41), &jwk);
    let issued = d.client("counter").post_json("/v1/credentials", &own, &[]);
    assert_eq!(issued.status, 201, "{}", issued.json());
}

#[test]
fn a_client_without_the_role_is_audited_once_a_minute_not_per_request() {
    let d = Daemon::start(Options::default());
    // Early in a minute, so the flood stays in one.
    let second = time::OffsetDateTime::now_utc().second();
    if second > 50 {
        std::thread::sleep(std::time::Duration::from_secs(u64::from(61 - second)));
    }
    let body = serde_json::to_vec(&daemon::request(
        "mdoc",
        &daemon::number(50),
        &daemon::phone().0,
    ))
    .unwrap();
    let headers = [("content-type", "application/json")];
    let mut stranger = d.client("stranger");
    for _ in 0..6 {
        let reply = stranger.send("POST", "/v1/credentials", &headers, body.clone());
        let p = problem(&reply, 403, "forbidden");
        assert_eq!(p["rule"], "client.role");
    }
    let refused = d
        .audit_entries()
        .iter()
        .filter(|e| e.contains("client.role"))
        .count();
    assert_eq!(refused, 1, "six refusals, one audit entry");
}
