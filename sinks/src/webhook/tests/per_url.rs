//! The webhook sink's per-URL behaviour (a sink whose `url` names each key's own URL):
//! retry-after and give-up per URL, request halving on 413, and the share of a send that
//! failing URLs get.

use super::*;
/// A sink whose URL holds the dataset (`/t/{datasetName}`), one lane per key.
fn per_key_sink(port: u16) -> WebhookSink {
    WebhookSink::new("hook", per_key_config(port)).unwrap()
}

/// The configuration of [`per_key_sink`].
fn per_key_config(port: u16) -> WebhookConfig {
    let mut cfg = config(port, 100);
    cfg.url = UrlTemplate::parse(&format!("http://127.0.0.1:{port}/t/{{datasetName}}")).unwrap();
    cfg.max_in_flight = 4;
    cfg
}

/// Requests received by `path`.
fn requests_to(got: &Mutex<Vec<Received>>, path: &str) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|r| r.headers[":path"] == path)
        .count()
}

#[test]
fn a_retry_after_holds_only_the_url_that_asked_for_it() {
    let (port, got, _) = server_fn(Duration::ZERO, |r, _| match r.headers[":path"].as_str() {
        "/t/d0" => (429, "Retry-After: 300\r\n".into(), b"slow down".to_vec()),
        _ => (200, String::new(), Vec::new()),
    });
    let mut sink = per_key_sink(port);
    // one row a request: d0's lane holds several requests, a write of 4 rows sends
    sink.config.batch_max_rows = 1;
    sink.write(&rows(3)).unwrap();
    let e = sink.flush().unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    assert!(e.retry_after() > Some(Duration::from_secs(250)), "{e}");
    assert_eq!(sink.pending.rows.len(), 1, "d1 and d2 were delivered");
    // rows of other URLs still go while d0 waits, and the write does not wait for d0's;
    // d0 is sent nothing before its time
    // (4 rows besides the held one: a write sends)
    sink.write(&rows(4))
        .expect("only rows of a URL that asked to wait are left");
    assert_eq!(requests_to(&got, "/t/d1"), 2);
    let e = sink.flush().unwrap_err();
    assert!(e.to_string().contains("asked to wait"), "{e}");
    assert!(e.retry_after() > Some(Duration::from_secs(250)), "{e}");
    assert_eq!(requests_to(&got, "/t/d0"), 1);
    assert_eq!(requests_to(&got, "/t/d1"), 2);
    assert_eq!(requests_to(&got, "/t/d2"), 2);
    assert_eq!(sink.pending.rows.len(), 2);
    assert!(sink.take_rejected().is_empty());
}

#[test]
fn a_url_is_not_given_up_while_it_asked_to_wait() {
    let (port, got, _) = server_fn(Duration::ZERO, |_, _| {
        (429, "Retry-After: 1\r\n".into(), b"later".to_vec())
    });
    let mut sink = per_key_sink(port);
    sink.config.give_up_after = Some(Duration::from_millis(300));
    sink.write(&rows(1)).unwrap();
    assert!(sink.flush().is_err());
    std::thread::sleep(Duration::from_millis(400));
    // past give_up_after, within the wait it asked for: kept, not sent
    let e = sink.flush().unwrap_err();
    assert!(e.retry_after() > Some(Duration::from_millis(300)), "{e}");
    assert!(sink.take_rejected().is_empty());
    assert_eq!(got.lock().unwrap().len(), 1);
    std::thread::sleep(e.retry_after().unwrap());
    // sent again once the wait is over, failed again: given up
    sink.flush().unwrap();
    assert_eq!(got.lock().unwrap().len(), 2);
    assert_eq!(sink.take_rejected()[0].error.code, UNDELIVERABLE);
}

#[test]
fn a_url_failing_longer_than_give_up_after_is_dead_lettered_and_the_others_go_on() {
    let (port, got, _) = server_fn(Duration::ZERO, |r, _| match r.headers[":path"].as_str() {
        "/t/d0" => (503, String::new(), b"down".to_vec()),
        _ => (200, String::new(), Vec::new()),
    });
    let mut sink = per_key_sink(port);
    sink.config.give_up_after = Some(Duration::from_millis(300));
    sink.write(&rows(3)).unwrap();
    let e = sink.flush().unwrap_err();
    assert!(e.to_string().contains("answered 503"), "{e}");
    assert!(sink.take_rejected().is_empty(), "not given up yet");
    std::thread::sleep(Duration::from_millis(400));
    sink.write(&rows(3)).unwrap();
    sink.flush().expect("d0 given up: nothing left to retry");
    assert!(sink.pending.rows.is_empty());
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 2, "both rows of d0");
    for r in &rejected {
        assert_eq!(r.error.code, UNDELIVERABLE);
        assert!(
            r.error.message.contains("give_up_after"),
            "{}",
            r.error.message
        );
        assert!(
            r.error.message.contains("answered 503"),
            "{}",
            r.error.message
        );
        assert_eq!(
            r.error.details["url"],
            format!("http://127.0.0.1:{port}/t/d0")
        );
        let row: Value = serde_json::from_slice(&r.raw).unwrap();
        assert_eq!(row["datasetName"], "d0");
    }
    // a URL given up is tried once per call, its rows dead-lettered at its first failure
    let before = requests_to(&got, "/t/d0");
    sink.write(&rows(1)).unwrap();
    sink.flush().unwrap();
    assert_eq!(requests_to(&got, "/t/d0"), before + 1);
    assert_eq!(sink.take_rejected().len(), 1);
    assert_eq!(requests_to(&got, "/t/d1"), 2);
    // rows coming now and then: the URL stays given up until it answers
    std::thread::sleep(Duration::from_millis(400));
    sink.write(&rows(1)).unwrap();
    sink.flush().expect("still given up after a quiet spell");
    assert_eq!(sink.take_rejected().len(), 1);
}

#[test]
fn a_request_failing_longer_than_give_up_after_is_dead_lettered_while_its_url_works() {
    // the receiver fails every request that carries d1 (a row it cannot take), takes others
    let (port, _got, _) = server_fn(Duration::ZERO, |r, _| {
        if String::from_utf8_lossy(&r.body).contains("\"d1\"") {
            (500, String::new(), b"cannot".to_vec())
        } else {
            (200, String::new(), Vec::new())
        }
    });
    let mut cfg = config(port, 1);
    cfg.max_in_flight = 1;
    cfg.give_up_after = Some(Duration::from_millis(300));
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    // (one row a request, one lane: the write sends at once)
    assert!(sink.write(&rows(3)).is_err());
    assert_eq!(
        sink.pending.rows.len(),
        2,
        "d1 and the rest of its lane wait"
    );
    std::thread::sleep(Duration::from_millis(400));
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].error.code, UNDELIVERABLE);
    assert!(
        rejected[0].error.message.contains("these rows have failed"),
        "{}",
        rejected[0].error.message
    );
    assert!(sink.pending.rows.is_empty(), "d2 went after it");
}

#[test]
fn dead_letters_mask_the_credentials_an_answer_hands_out() {
    let (port, _got, _) = server_fn(Duration::ZERO, |_, _| {
        (
            400,
            "Set-Cookie: session=s3cr3t\r\nX-Request-Id: r-1\r\nContent-Location: http://h.example/x?sig=s3cr3t\r\n".into(),
            b"bad".to_vec(),
        )
    });
    let mut sink = WebhookSink::new("hook", config(port, 100)).unwrap();
    sink.write(&rows(1)).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    let headers = &rejected[0].error.details["headers"];
    assert_eq!(headers["set-cookie"], "***");
    assert_eq!(headers["x-request-id"], "r-1");
    assert_eq!(headers["content-location"], "http://h.example/x");
}

#[test]
fn a_413_halves_the_requests_of_its_url_until_they_fit_and_a_single_row_is_refused() {
    // the receiver takes at most 2 rows a request
    let (port, got, _) = server_fn(Duration::ZERO, |r, _| {
        let rows: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        match rows.len() {
            0..=2 => (200, String::new(), Vec::new()),
            _ => (413, String::new(), b"too large".to_vec()),
        }
    });
    let mut cfg = config(port, 100);
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(10)).unwrap();
    sink.flush()
        .expect("sent again in smaller requests within the call");
    assert!(sink.take_rejected().is_empty());
    let sizes = |from: usize| -> Vec<usize> {
        got.lock().unwrap()[from..]
            .iter()
            .map(|r| ids(r).len())
            .collect()
    };
    let first = sizes(0);
    // 10 (413), 5 and 5 (413; the second not sent: its lane waits), then pairs
    assert_eq!(&first[..2], &[10, 5], "{first:?}");
    assert!(first[2..].iter().all(|&n| n <= 2), "{first:?}");
    let mut delivered: Vec<String> = got.lock().unwrap()[2..].iter().flat_map(ids).collect();
    assert_eq!(delivered.len(), 10, "every row once: {first:?}");
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 10, "every row once: {first:?}");
    // later requests to that URL keep its size (it grows back only after many sends)
    sink.write(&rows(4)).unwrap();
    sink.flush().unwrap();
    assert_eq!(sizes(first.len()), vec![2, 2]);
    // a single row too large is refused
    let (port, got) = server(vec![(413, "")]);
    let mut sink = WebhookSink::new("hook", config(port, 100)).unwrap();
    sink.write(&rows(1)).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 1, "one row too large: refused");
    assert_eq!(rejected[0].error.details["status"], 413);
    assert_eq!(got.lock().unwrap().len(), 1);
}

/// A server on which `/t/d<n>` never answers for `n` below `first_answering` (a blackholed
/// tenant each) and the others answer 200 at once.
fn blackholing(first_answering: usize) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let (port, got, _) = server_fn(Duration::ZERO, move |r, _| {
        let n: usize = r.headers[":path"]["/t/d".len()..].parse().unwrap();
        if n < first_answering {
            std::thread::sleep(Duration::from_secs(20));
        }
        (200, String::new(), Vec::new())
    });
    (port, got)
}

/// [`per_key_config`] with requests timing out after 200 ms.
fn quick_timeouts(port: u16) -> WebhookConfig {
    let mut cfg = per_key_config(port);
    cfg.timeout = Duration::from_millis(200);
    cfg
}

#[test]
fn failing_urls_get_a_bounded_share_of_a_send_and_take_turns() {
    // d0..d39 never answer (a blackholed tenant each); d40..d43 answer at once
    let (port, got) = blackholing(40);
    let mut sink = WebhookSink::new("hook", quick_timeouts(port)).unwrap();
    let blackholed = |got: &Mutex<Vec<Received>>| -> Vec<usize> {
        (0..40)
            .map(|n| requests_to(got, &format!("/t/d{n}")))
            .collect()
    };
    // the first send learns which URLs fail: each is tried once
    sink.write(&rows(44)).unwrap();
    assert!(sink.flush().is_err());
    assert_eq!(blackholed(&got), vec![1; 40]);
    assert_eq!(requests_to(&got, "/t/d40"), 1);
    // known to fail, they no longer hold a send for 40 timeouts: the URLs that work go
    // first, the failing ones for about one second (`failing_budget`), the rest deferred
    sink.write(&rows(44)).unwrap();
    let started = Instant::now();
    let e = sink.flush().unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    assert_eq!(
        requests_to(&got, "/t/d43"),
        2,
        "the working URLs were sent to first"
    );
    let tried: usize = blackholed(&got).iter().map(|n| n - 1).sum();
    assert!(
        (1..=30).contains(&tried),
        "{tried} of 40 failing URLs tried in one send"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sink.pending.rows.len(), 80, "deferred rows stay pending");
    // the next sends start with the URLs not tried last (deferred URLs stay known to fail):
    // every one gets its turn, the least recently tried first
    let mut sends = 1;
    let mut before = blackholed(&got);
    while before.iter().any(|&n| n < 2) {
        assert!(sends < 10, "some failing URL never had a turn: {before:?}");
        assert!(sink.flush().is_err());
        sends += 1;
        let after = blackholed(&got);
        let tried: Vec<usize> = (0..40).filter(|&n| after[n] > before[n]).collect();
        let waiting: Vec<usize> = (0..40).filter(|&n| before[n] < 2).collect();
        assert!(
            tried.len() <= 30,
            "send {sends} tried {} failing URLs",
            tried.len()
        );
        assert!(
            tried.iter().all(|n| waiting.contains(n)) || waiting.iter().all(|n| tried.contains(n)),
            "send {sends} tried {tried:?} while {waiting:?} waited longest"
        );
        before = after;
    }
    assert!(sink.take_rejected().is_empty());
}

#[test]
fn past_the_budget_a_given_up_url_s_rows_are_dead_lettered_not_deferred() {
    // d0..d9 never answer; d10 answers
    let (port, got) = blackholing(10);
    let mut cfg = quick_timeouts(port);
    cfg.max_in_flight = 1;
    cfg.give_up_after = Some(Duration::from_millis(100));
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(11)).unwrap();
    assert!(sink.flush().is_err(), "not given up yet");
    std::thread::sleep(Duration::from_millis(150));
    // one lane at a time: about 5 of the 10 fit in the budget; past it, each URL failing
    // longer than give_up_after is given up unsent, its rows dead-lettered
    sink.write(&rows(11)).unwrap();
    sink.flush().expect("every failing URL given up");
    let tried: usize = (0..10)
        .map(|n| requests_to(&got, &format!("/t/d{n}")) - 1)
        .sum();
    assert!(tried < 10, "{tried} of 10 given-up URLs tried");
    assert_eq!(sink.take_rejected().len(), 20, "both rows of d0..d9");
    assert!(sink.pending.rows.is_empty());
    assert_eq!(requests_to(&got, "/t/d10"), 2);
}
