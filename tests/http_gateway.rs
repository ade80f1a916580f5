//! The HTTP gateway end to end: the real `talkheadd` binary, a real LMDB file, real TCP, signatures made
//! by the real bittensor-wallet library and by schnorrkel.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::collections::BTreeMap;
use talkheadd::domain::{EvaluationMetrics, Hotkey, ImageRef, Submission, Verdict};
use talkheadd::rounds::ReevaluatePolicy;
use talkheadd::store::{StageOutcome, Store, StoreOptions};

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

fn image(d: &str) -> String {
    format!("localhost:5000/miner/demo:v1@sha256:{d}")
}

fn options() -> StoreOptions {
    StoreOptions {
        map_size_bytes: 64 << 20,
        history_per_miner: 5,
        max_submissions: 100,
    }
}

/// Submissions pending in a stopped daemon's state file, as (hotkey, image_ref, submit_time).
fn stored(state: &std::path::Path) -> Vec<(String, String, f64)> {
    let store = Store::open(state, options()).unwrap();
    let rows = store
        .pending()
        .unwrap()
        .into_iter()
        .map(|t| (t.hotkey.to_string(), t.image_ref.to_string(), t.submit_time))
        .collect();
    store.close().unwrap();
    rows
}

fn signed_post(d: &Daemon, signer: &Signer, body: Vec<u8>) -> HttpResponse {
    d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&signer.legacy("/update", now()))
            .header("Content-Type", "application/json")
            .body(body),
    )
}

#[test]
fn bittensor_wallet_signed_update_is_stored_and_survives_a_restart() {
    let setup = Setup::new(&format!("[auth]\nallowed_hotkeys = [\"{ALICE}\"]\n"));
    let d = Daemon::start(&setup);
    let body = update_body(&[(ALICE, image(DIGEST_A), 1700000000.5)]);
    let headers = bt_sign(&["--uri", "//Alice", "legacy", "--path", "/update"]);
    assert_eq!(headers["X-Hotkey"], ALICE);
    let r = d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&headers)
            .header("Content-Type", "application/json")
            .body(body.clone()),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), serde_json::json!({"count": 1}));

    // The stronger scheme, signed by the same library, also works; tampering with the body does not.
    let body_file = setup.dir.path().join("body.json");
    let body2 = update_body(&[(ALICE, image(DIGEST_B), 1700000001.0)]);
    std::fs::write(&body_file, &body2).unwrap();
    let strong = bt_sign(&[
        "--uri",
        "//Alice",
        "strong",
        "--method",
        "POST",
        "--path",
        "/update",
        "--body-file",
        body_file.to_str().unwrap(),
    ]);
    let tampered = d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&strong)
            .body(update_body(&[(ALICE, image(DIGEST_A), 5.0)])),
    );
    assert_eq!(
        (tampered.status, tampered.reason().as_str()),
        (400, "body_digest_mismatch")
    );
    // A tampered request does not burn the nonce (it is recorded only once the body verified)...
    let ok = d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&strong)
            .body(body2.clone()),
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // ...and the genuine request cannot be replayed.
    let replay = d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&strong)
            .body(body2.clone()),
    );
    assert_eq!((replay.status, replay.reason().as_str()), (401, "replayed_nonce"));

    // A legacy signature whose signature byte is flipped is refused.
    let mut bad = bt_sign(&["--uri", "//Alice", "legacy", "--path", "/update"]);
    let sig = bad.get_mut("X-Signature").unwrap();
    let flipped = if sig.ends_with('0') { '1' } else { '0' };
    sig.pop();
    sig.push(flipped);
    let r = d.request(
        &HttpRequest::new("POST", "/update")
            .headers(&bad)
            .body(update_body(&[(ALICE, image(DIGEST_B), 9.0)])),
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "bad_signature"));

    assert!(d.stop().success());
    let rows = stored(&setup.dir.path().join("state.db"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, ALICE);
    assert_eq!(rows[0].1, image(DIGEST_B));
    assert_eq!(rows[0].2, 1700000001.0);

    // Restart on the same file: the submission is still there and the daemon serves it consistently.
    let d = Daemon::start(&setup);
    let r = d.request(&HttpRequest::new("GET", "/healthz"));
    assert_eq!(r.status, 200);
    assert!(d.stop().success());
    assert_eq!(stored(&setup.dir.path().join("state.db")).len(), 1);
}

#[test]
fn metrics_start_empty_with_an_etag_and_answer_304() {
    let signer = Signer::from_seed(1);
    let setup = Setup::new(&format!("[auth]\nallowed_hotkeys = [\"{}\"]\n", signer.hotkey));
    let d = Daemon::start(&setup);
    let r = d.request(&HttpRequest::new("GET", "/metrics").headers(&signer.legacy("/metrics", now())));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!([]));
    let etag = r.header("etag").unwrap().to_owned();
    assert!(etag.starts_with("W/\"metrics-"), "{etag}");

    let r = d.request(
        &HttpRequest::new("GET", "/metrics")
            .headers(&signer.legacy("/metrics", now()))
            .header("If-None-Match", &etag),
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));

    // Unsigned /metrics is refused unless auth.public_metrics is set.
    let r = d.request(&HttpRequest::new("GET", "/metrics"));
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_header"));
    assert!(d.stop().success());
}

#[test]
fn committed_rounds_are_served_in_the_reference_shape() {
    let signer = Signer::from_seed(2);
    let setup = Setup::new(&format!(
        "[auth]\nallowed_hotkeys = [\"{}\"]\npublic_metrics = true\n",
        signer.hotkey
    ));
    // Seed a committed round through the store API the evaluation engine uses.
    let state = setup.dir.path().join("state.db");
    {
        let store = Store::open(&state, options()).unwrap();
        let miners = [
            (Signer::from_seed(10).hotkey, DIGEST_A, 20.0),
            (Signer::from_seed(11).hotkey, DIGEST_B, 10.0),
        ];
        let batch: Vec<Submission> = miners
            .iter()
            .map(|(h, d, t)| Submission {
                hotkey: Hotkey::parse(h).unwrap(),
                image_ref: ImageRef::parse(&image(d)).unwrap(),
                submit_time: *t,
            })
            .collect();
        store.upsert_submissions(&batch, 100.0).unwrap();
        for ticket in store.pending().unwrap() {
            let mut m = EvaluationMetrics::failed(
                Verdict::Ok,
                "x",
                ticket.image_ref.as_str(),
                ticket.submit_time,
                101.0,
                5,
            );
            m.error = None;
            m.final_score = 0.5;
            m.quality_score = 0.5;
            assert!(matches!(
                store.stage_result(&ticket, m).unwrap(),
                StageOutcome::Staged
            ));
        }
        let rank = |c: &[talkheadd::rounds::RankInput<'_>]| (0..c.len()).collect::<Vec<usize>>();
        assert!(
            store
                .commit_round_if_complete(&ReevaluatePolicy::All, &rank)
                .unwrap()
                .is_some()
        );
        store.close().unwrap();
    }
    let d = Daemon::start(&setup);
    let r = d.request(&HttpRequest::new("GET", "/metrics"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rows = r.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    // Sorted by submit_time, as the reference.
    assert_eq!(rows[0]["submit_time"], 10.0);
    assert_eq!(rows[1]["submit_time"], 20.0);
    for row in rows {
        for key in ["hotkey", "image_ref", "submit_time", "metrics"] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
        let m = &row["metrics"];
        for key in [
            "final_score",
            "quality_score",
            "challenge_metrics",
            "efficiency",
            "scoring_count",
            "updated_at",
            "verdict",
        ] {
            assert!(m.get(key).is_some(), "metrics lack {key}: {m}");
        }
        assert_eq!(m["verdict"], "ok");
        assert!(
            m.get("error").is_none(),
            "a successful row must not carry error: {m}"
        );
    }
    let etag = r.header("etag").unwrap().to_owned();
    assert_ne!(etag, "W/\"metrics-0\"");
    let r =
        d.request(&HttpRequest::new("GET", "/metrics").header("If-None-Match", &format!("W/\"x\", {etag}")));
    assert_eq!(r.status, 304);

    // Re-submitting a new image for a committed miner removes it from /metrics and bumps the ETag.
    let miner = rows[0]["hotkey"].as_str().unwrap().to_owned();
    assert_eq!(rows[0]["image_ref"], image(DIGEST_B));
    let r = signed_post(&d, &signer, update_body(&[(&miner, image(DIGEST_A), 10.0)]));
    assert_eq!(r.status, 200);
    let r = d.request(&HttpRequest::new("GET", "/metrics").header("If-None-Match", &etag));
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_ne!(r.header("etag").unwrap(), etag);

    let prom = String::from_utf8(d.request(&HttpRequest::new("GET", "/prometheus")).body).unwrap();
    for family in [
        "talkheadd_http_requests_total",
        "talkheadd_store_size_bytes",
        "talkheadd_rounds_committed",
        "talkheadd_submissions",
    ] {
        assert!(prom.contains(family), "{family} missing from:\n{prom}");
    }
    assert!(prom.contains("route=\"/metrics\""), "{prom}");
    assert!(d.stop().success());
}

#[test]
fn every_rejection_answers_with_its_status_and_reason_and_changes_nothing() {
    let signer = Signer::from_seed(3);
    let stranger = Signer::from_seed(4);
    let mut setup = Setup::new(&format!("[auth]\nallowed_hotkeys = [\"{}\"]\n", signer.hotkey));
    setup.http = "max_body_bytes = 4096\nmax_batch = 3\n".into();
    let d = Daemon::start(&setup);
    let good = update_body(&[(ALICE, image(DIGEST_A), 1.0)]);
    let ts = now();
    let post = |headers: BTreeMap<String, String>, body: Vec<u8>| {
        HttpRequest::new("POST", "/update").headers(&headers).body(body)
    };
    let with = |mut h: BTreeMap<String, String>, k: &str, v: &str| {
        h.insert(k.into(), v.into());
        h
    };
    let without = |mut h: BTreeMap<String, String>, k: &str| {
        h.remove(k);
        h
    };
    let legacy = signer.legacy("/update", ts);
    let nonce = "nonce-0123456789abcdef";
    let strong = signer.strong("POST", "/update", "", ts, nonce, &good);
    let big_batch = update_body(&[
        (ALICE, image(DIGEST_A), 1.0),
        (ALICE, image(DIGEST_A), 2.0),
        (ALICE, image(DIGEST_A), 3.0),
        (ALICE, image(DIGEST_A), 4.0),
    ]);

    let mut cases: Vec<(&str, HttpRequest, u16, &str)> = vec![
        (
            "no auth headers",
            post(BTreeMap::new(), good.clone()),
            401,
            "missing_header",
        ),
        (
            "no signature",
            post(without(legacy.clone(), "X-Signature"), good.clone()),
            401,
            "missing_header",
        ),
        (
            "garbled timestamp",
            post(with(legacy.clone(), "X-Timestamp", "soon"), good.clone()),
            400,
            "bad_timestamp",
        ),
        (
            "stale timestamp",
            post(signer.legacy("/update", ts - 1000), good.clone()),
            401,
            "timestamp_skew",
        ),
        (
            "garbled hotkey",
            post(with(legacy.clone(), "X-Hotkey", "5Grw"), good.clone()),
            400,
            "bad_hotkey",
        ),
        (
            "hotkey not allowed",
            post(stranger.legacy("/update", ts), good.clone()),
            403,
            "hotkey_not_allowed",
        ),
        (
            "signature not hex",
            post(with(legacy.clone(), "X-Signature", "zz"), good.clone()),
            400,
            "bad_signature_encoding",
        ),
        (
            "signature for another path",
            post(signer.legacy("/metrics", ts), good.clone()),
            401,
            "bad_signature",
        ),
        (
            "not JSON",
            post(legacy.clone(), b"{nope".to_vec()),
            400,
            "malformed_body",
        ),
        (
            "not an array",
            post(legacy.clone(), b"{}".to_vec()),
            400,
            "malformed_body",
        ),
        (
            "invalid item",
            post(
                legacy.clone(),
                update_body(&[(ALICE, "miner/x:latest".into(), 1.0)]),
            ),
            400,
            "invalid_submissions",
        ),
        (
            "batch over max_batch",
            post(legacy.clone(), big_batch),
            413,
            "batch_too_large",
        ),
        (
            "body over max_body_bytes",
            post(legacy.clone(), vec![b' '; 5000]),
            413,
            "body_too_large",
        ),
        (
            "wrong content type",
            post(legacy.clone(), good.clone()).header("Content-Type", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong method",
            HttpRequest::new("PUT", "/update").headers(&legacy),
            405,
            "method_not_allowed",
        ),
        (
            "unknown route",
            HttpRequest::new("GET", "/admin"),
            404,
            "not_found",
        ),
        (
            "digest mismatch",
            post(strong.clone(), update_body(&[(ALICE, image(DIGEST_B), 1.0)])),
            400,
            "body_digest_mismatch",
        ),
        (
            "unknown scheme",
            post(with(strong.clone(), "X-Auth-Scheme", "v9"), good.clone()),
            400,
            "bad_auth_scheme",
        ),
    ];
    let mut chunked = post(legacy.clone(), vec![b' '; 20_000]);
    chunked.chunked = true;
    cases.push(("chunked body over the limit", chunked, 413, "body_too_large"));

    for (name, req, status, reason) in &cases {
        let r = d.request(req);
        assert_eq!(r.status, *status, "{name}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.reason(), *reason, "{name}");
        assert!(
            r.json()["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: no message"
        );
    }
    // The invalid-item answer lists the item and field.
    let r = d.request(&post(
        legacy.clone(),
        update_body(&[(ALICE, image(DIGEST_A), 1.0), ("x", "y".into(), -1.0)]),
    ));
    let items = r.json()["items"].clone();
    assert_eq!(items[0]["index"], 1);
    assert_eq!(items[0]["field"], "hotkey");

    // A strong-scheme request replayed with the same nonce is refused.
    let fresh = signer.strong(
        "POST",
        "/update",
        "",
        now(),
        "nonce-fedcba9876543210",
        &update_body(&[]),
    );
    assert_eq!(d.request(&post(fresh.clone(), update_body(&[]))).status, 200);
    let r = d.request(&post(fresh, update_body(&[])));
    assert_eq!((r.status, r.reason().as_str()), (401, "replayed_nonce"));

    assert!(d.stop().success());
    assert!(
        stored(&setup.dir.path().join("state.db")).is_empty(),
        "a rejected request stored something"
    );
}

#[test]
fn unsigned_mode_on_loopback_accepts_and_duplicates_resolve_to_the_last() {
    let setup = Setup::new("[auth]\nrequire_signature = false\n");
    let d = Daemon::start(&setup);
    assert!(
        d.log().contains("NOT authenticated"),
        "the daemon must say signatures are off:\n{}",
        d.log()
    );
    let body = update_body(&[(ALICE, image(DIGEST_A), 1.0), (ALICE, image(DIGEST_B), 2.0)]);
    let r = d.request(&HttpRequest::new("POST", "/update").body(body));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 2);
    assert!(d.stop().success());
    let rows = stored(&setup.dir.path().join("state.db"));
    assert_eq!(rows, vec![(ALICE.to_owned(), image(DIGEST_B), 2.0)]);
}

#[test]
fn silent_and_stalled_clients_are_cut_off_by_the_timeouts() {
    use std::io::{Read, Write};
    let mut setup = Setup::new("[auth]\nrequire_signature = false\n");
    setup.http = "header_timeout_secs = 1\nrequest_timeout_secs = 2\n".into();
    let d = Daemon::start(&setup);

    // A connection that never sends its headers is closed by the server (read returns EOF, not our
    // own read timeout, which is far longer).
    let mut silent = std::net::TcpStream::connect(d.addr).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = silent.read_to_end(&mut buf);
    // At http.header_timeout_secs = 1, not at the default 10 s (nor at once).
    let closed_after = started.elapsed();
    assert!(
        closed_after >= std::time::Duration::from_millis(900)
            && closed_after < std::time::Duration::from_secs(5),
        "a silent connection closed after {closed_after:?}"
    );

    // A body that stalls half-way gets 408 with a JSON reason.
    let mut stalled = std::net::TcpStream::connect(d.addr).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    stalled
        .write_all(b"POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stalled.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert!(d.stop().success());
}

/// Writes a whole `POST /update` (headers, then `body_len` bytes) before reading anything, as Python's
/// `http.client` and `requests` do, then reads the answer to the end.
fn post_everything_then_read(d: &Daemon, extra_headers: &str, body_len: usize) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(d.addr)?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    write!(
        stream,
        "POST /update HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {body_len}\r\n\r\n"
    )?;
    let chunk = vec![b' '; 1 << 20];
    let mut left = body_len;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

#[test]
fn a_client_that_sends_its_whole_body_before_reading_gets_the_refusal_not_a_reset() {
    let signer = Signer::from_seed(5);
    let setup = Setup::new(&format!("[auth]\nallowed_hotkeys = [\"{}\"]\n", signer.hotkey));
    let d = Daemon::start(&setup);
    // 38 MB, over the default max_body_bytes: refused from its Content-Length, before a byte is read.
    let legacy = signer.legacy("/update", now());
    let headers: String = legacy.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let answer = post_everything_then_read(&d, &headers, 38_000_000).expect("connection reset");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"error\":\"body_too_large\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Refused on its headers (no signature), with a body the client sends anyway.
    let answer = post_everything_then_read(&d, "", 3_000_000).expect("connection reset");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("\"error\":\"missing_header\""), "{answer}");
    // Python's own client (what validators use, through `requests`): it sends the whole body first.
    let script = format!(
        "import urllib.request, urllib.error\n\
         req = urllib.request.Request('http://{}/update', data=b' ' * 38_000_000,\n\
             headers={{'Content-Type': 'application/json'}}, method='POST')\n\
         try:\n    urllib.request.urlopen(req, timeout=30)\n\
         except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n",
        d.addr
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.starts_with("401 "),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The gateway still serves after discarding.
    let r = d.request(&HttpRequest::new("GET", "/healthz"));
    assert_eq!(r.status, 200);
    assert!(d.stop().success());
    assert!(stored(&setup.dir.path().join("state.db")).is_empty());
}

#[test]
fn max_connections_holds_further_clients_until_a_connection_closes() {
    use std::io::{Read, Write};
    let mut setup = Setup::new("[auth]\nrequire_signature = false\n");
    setup.http = "max_connections = 1\n".into();
    let d = Daemon::start(&setup);
    // The one connection the gateway serves: open, saying nothing yet.
    let first = std::net::TcpStream::connect(d.addr).unwrap();
    // A second client is left in the kernel's backlog: its request gets no answer while the first
    // connection lives.
    let mut second = std::net::TcpStream::connect(d.addr).unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(std::time::Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = second.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "answered beside a held connection: {early:?}"
    );
    // Once the first closes, the second is accepted and answered.
    drop(first);
    second.set_read_timeout(Some(WAIT)).unwrap();
    let mut raw = Vec::new();
    second.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(d.stop().success());
}
