//! Proxying itself: pass-through, streaming both ways, upstream failures,
//! limits, HTTP/2 cleartext and WebSocket upgrades.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use support::*;

const MIB: u64 = 1024 * 1024;

fn assert_plain_text(response: &reqwest::Response) {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Content-Type: {content_type:?}"
    );
}

#[tokio::test]
async fn request_and_response_pass_through_unchanged() {
    let upstream = Upstream::start(|req| {
        let body = String::from_utf8_lossy(&req.body).into_owned();
        Reply::status(201)
            .header("X-App", "yes")
            .header("Content-Type", "text/plain")
            .body(format!("{} {} {body}", req.method, req.uri))
    })
    .await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let response = plain_client()
        .post(proxy.url("/items/7?x=1&y=two%20words"))
        .header("Content-Type", "application/json")
        .header("Accept-Language", "fr")
        .body("{\"hello\":1}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-app"], "yes");
    assert_eq!(
        response.text().await.unwrap(),
        "POST /items/7?x=1&y=two%20words {\"hello\":1}"
    );
    let seen = upstream.last();
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("accept-language"), Some("fr"));
    assert_eq!(seen.version, http::Version::HTTP_11);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let browser = Browser::new();

    for _ in 0..10 {
        let response = browser.get(&proxy.url("/")).await;
        assert_eq!(response.text().await.unwrap(), "ok");
    }

    assert_eq!(upstream.count(), 10);
    assert_eq!(
        upstream.connections(),
        1,
        "a new upstream connection per request"
    );
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_requests() {
    let release = Gate::new();
    let gate = release.clone();
    let upstream = Upstream::start(move |_| Reply::ok().held_until(&gate)).await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let addr = proxy.addr();
    let slow = tokio::spawn(plain_client().get(proxy.url("/slow")).send());
    upstream.wait_for_arrivals(1).await;

    let shutdown = tokio::spawn(proxy.shutdown());
    // Absence cannot be signalled: give a hasty shutdown time to show itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !shutdown.is_finished(),
        "run() returned while a request was in flight"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after the shutdown signal"
    );
    release.open();

    let response = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the in-flight request never finished")
        .unwrap()
        .expect("the in-flight request was dropped");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("run() did not return after the last request")
        .unwrap();
}

#[tokio::test]
async fn thirty_megabyte_download_is_streamed() {
    const LEN: u64 = 30 * MIB;
    // The upstream sends its first chunk, then waits until the client has
    // received bytes: a proxy that buffers the whole body never delivers any.
    let client_got_bytes = Gate::new();
    let gate = client_got_bytes.clone();
    let upstream = Upstream::start(move |_| Reply::download(LEN).paused_until(&gate)).await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let received = tokio::time::timeout(PATIENCE, async {
        let mut response = plain_client().get(proxy.url("/big")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut received = 0u64;
        while let Some(chunk) = response.chunk().await.expect("download broke off") {
            assert!(
                matches_pattern(received, &chunk),
                "corrupt bytes at offset {received}"
            );
            received += chunk.len() as u64;
            client_got_bytes.open();
        }
        received
    })
    .await
    .expect("the download stalled: the proxy waits for the whole body before sending it");

    assert_eq!(received, LEN);
}

#[tokio::test]
async fn twenty_four_megabyte_upload_is_streamed() {
    const LEN: u64 = 24 * MIB;
    const CHUNK: usize = 64 * 1024;
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let (chunks, chunks_rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let body = futures_util::stream::unfold(chunks_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let upload = tokio::spawn(
        plain_client()
            .post(proxy.url("/upload"))
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );

    // Send the first megabyte and wait for the upstream to see some of it
    // while the client still holds back the other 23.
    let mut sent = 0u64;
    while sent < MIB {
        chunks.send(pattern(sent, CHUNK)).await.unwrap();
        sent += CHUNK as u64;
    }
    assert!(
        upstream.received_body_bytes(1, PATIENCE).await,
        "the upstream got nothing before the upload finished: the proxy buffers request bodies"
    );
    while sent < LEN {
        chunks.send(pattern(sent, CHUNK)).await.unwrap();
        sent += CHUNK as u64;
    }
    drop(chunks);

    let response = tokio::time::timeout(PATIENCE, upload)
        .await
        .expect("the upload did not finish")
        .unwrap()
        .expect("upload failed");
    assert_eq!(response.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.body_len, LEN);
    assert!(matches_pattern(0, &seen.body), "corrupt upload");
}

#[tokio::test]
async fn refused_upstream_gives_502_without_leaking_its_address() {
    let dead = refused_addr();
    let proxy = Proxy::start(config(&format!("http://{dead}"))).await;

    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 502);
    assert_plain_text(&response);
    let body = response.text().await.unwrap();
    assert!(body.to_lowercase().contains("refused"), "{body:?}");
    assert!(
        !body.contains(&dead.port().to_string()),
        "{body:?} leaks the port"
    );
    assert!(!body.contains("127.0.0.1"), "{body:?} leaks the address");
}

#[tokio::test]
async fn upstream_resetting_the_connection_gives_502() {
    let upstream = ResettingUpstream::start().await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 502);
    assert_plain_text(&response);
    let body = response.text().await.unwrap();
    assert!(body.to_lowercase().contains("reset"), "{body:?}");
    assert!(
        !body.contains(&upstream.addr().port().to_string()),
        "{body:?}"
    );
    assert!(!body.contains("127.0.0.1"), "{body:?}");
}

#[tokio::test]
async fn slow_upstream_gives_504_after_the_upstream_timeout() {
    let upstream = Upstream::start(|_| Reply::ok().after(Duration::from_secs(5))).await;
    let proxy = Proxy::start(config(&upstream.url()).set("upstream.timeout", "500ms")).await;

    let started = Instant::now();
    let response = get_without_cookie(&proxy.url("/")).await;

    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the proxy waited for the upstream instead of timing out"
    );
    let body = response.text().await.unwrap();
    assert!(
        !body.contains(&upstream.addr().port().to_string()),
        "{body:?}"
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_request_gets_a_session() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut h2 = h2c(proxy.addr()).await;

    let first = h2
        .send_request(
            http::Request::get(proxy.url("/h2"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("h2 request");
    assert_eq!(first.version(), http::Version::HTTP_2);
    assert_eq!(first.status(), 200);
    let cookie = expect_session_cookie(first.headers());
    assert_eq!(
        &first.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );
    let created = upstream.last();
    assert_eq!(
        created.version,
        http::Version::HTTP_11,
        "HTTP/1.1 to the upstream"
    );
    assert_eq!(created.expect_session_id(), cookie.id());
    assert!(created.is_new_session());

    let second = h2
        .send_request(
            http::Request::get(proxy.url("/h2"))
                .header("cookie", cookie.pair())
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("second h2 request");
    assert_eq!(second.status(), 200);
    assert!(session_set_cookie(second.headers()).is_none());
    let returning = upstream.last();
    assert_eq!(returning.expect_session_id(), cookie.id());
    assert!(!returning.is_new_session());
}

#[tokio::test]
async fn h2c_cookie_split_over_several_header_fields_is_understood() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());
    let mut h2 = h2c(proxy.addr()).await;

    // HTTP/2 clients may send each cookie in its own `cookie` field.
    let response = h2
        .send_request(
            http::Request::get(proxy.url("/"))
                .header("cookie", "theme=dark")
                .header("cookie", issued.pair())
                .header("cookie", "lang=en")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("h2 request");

    assert_eq!(response.status(), 200);
    assert!(session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(seen.expect_session_id(), issued.id());
    assert_eq!(
        seen.cookies(),
        vec![
            ("theme".to_owned(), "dark".to_owned()),
            ("lang".to_owned(), "en".to_owned()),
        ]
    );
}

#[tokio::test]
async fn websocket_upgrade_tunnels_with_the_session_on_the_handshake() {
    let upstream = Upstream::start(websocket_app).await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let issued = expect_session_cookie(get_without_cookie(&proxy.url("/")).await.headers());
    let mut handshake = format!("ws://{}/ws", proxy.addr())
        .into_client_request()
        .unwrap();
    handshake
        .headers_mut()
        .insert("cookie", issued.pair().parse().unwrap());
    handshake
        .headers_mut()
        .insert("x-session-data", "role=admin".parse().unwrap());

    let (mut socket, response) =
        tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(handshake))
            .await
            .expect("handshake timed out")
            .expect("handshake failed");

    assert_eq!(response.status(), 101);
    assert!(session_set_cookie(response.headers()).is_none());
    let seen = upstream.last();
    assert_eq!(
        seen.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert_eq!(seen.expect_session_id(), issued.id());
    assert!(!seen.is_new_session());
    assert_eq!(
        seen.session_data(),
        None,
        "a spoofed X-Session-Data reached the upstream"
    );

    socket.send(Message::text("hello")).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("hello"));
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
    assert_eq!(
        echoed.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_handshake_without_a_cookie_starts_a_session() {
    let upstream = Upstream::start(websocket_app).await;
    let proxy = Proxy::start(config(&upstream.url())).await;

    let (mut socket, response) = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.addr())),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");

    assert_eq!(response.status(), 101);
    let seen = upstream.last();
    assert!(seen.is_new_session());
    let cookie = expect_session_cookie(response.headers());
    assert_eq!(cookie.id(), seen.expect_session_id());
    socket.send(Message::text("ping?")).await.unwrap();
    let echoed = tokio::time::timeout(PATIENCE, socket.next()).await.unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("ping?"));
}

#[tokio::test]
async fn body_over_max_body_bytes_gets_413_and_never_reaches_the_upstream() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url()).set("limits.max_body_bytes", "1024")).await;

    let response = plain_client()
        .post(proxy.url("/upload"))
        .body(vec![b'a'; 2048])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    assert_eq!(upstream.count(), 0);

    let fits = plain_client()
        .post(proxy.url("/upload"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    assert_eq!(upstream.last().body_len, 1024);
}

#[tokio::test]
async fn streamed_body_over_max_body_bytes_is_cut_off_with_413() {
    const LIMIT: u64 = 64 * 1024;
    let upstream = Upstream::ok().await;
    let proxy =
        Proxy::start(config(&upstream.url()).set("limits.max_body_bytes", &LIMIT.to_string()))
            .await;
    // No Content-Length: the proxy only learns the size while streaming.
    let chunks = (0..4u64).map(|i| Ok::<_, std::io::Error>(pattern(i * LIMIT, LIMIT as usize)));

    let response = plain_client()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 413);
    let forwarded = upstream
        .requests()
        .iter()
        .map(|r| r.body_len)
        .max()
        .unwrap_or(0);
    assert!(forwarded <= LIMIT, "{forwarded} bytes reached the upstream");
}

#[tokio::test]
async fn headers_over_max_header_bytes_get_431() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url()).set("limits.max_header_bytes", "8192")).await;

    let response = plain_client()
        .get(proxy.url("/"))
        .header("X-Big", "b".repeat(16 * 1024))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 431);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_connection_closed() {
    let upstream = Upstream::ok().await;
    let proxy = Proxy::start(config(&upstream.url())).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();

    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the connection was left open")
        .ok();

    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_eq!(upstream.count(), 0);
}
