//! The async API (feature `tokio`): tokio tasks on one thread drive TI
//! streams between two stacks on an in-memory pipe, across explicit
//! failures; every wait is bounded (a lost wake-up fails the test instead
//! of hanging it).
#![cfg(feature = "tokio")]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use ti_stack::device::pipe::Pipe;
use ti_stack::{Mode, Runtime, StackConfig, StreamError, StreamEvent};
use ti_testnet::payload::{data, sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const LIMIT: Duration = Duration::from_secs(60);

fn runtimes() -> (Runtime<Pipe>, Runtime<Pipe>) {
    let (a, b) = Pipe::pair(1500);
    let client = Runtime::start(StackConfig::new(Ipv4Addr::new(10, 9, 0, 1)), a).expect("client");
    let server = Runtime::start(StackConfig::new(SERVER), b).expect("server");
    (client, server)
}

fn tasks() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

#[test]
fn async_echo_survives_explicit_failures_byte_exact() {
    let (client, server) = runtimes();
    let payload = data(6 << 20, 41);
    let sent = payload.clone();
    let exchange = async move {
        let listener = server.listen(7).expect("listen");
        let echo = tokio::spawn(async move {
            let mut s = listener.accept_async().await.expect("accept");
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = s.read(&mut buf).await.expect("server read");
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.expect("server write");
            }
            AsyncWriteExt::shutdown(&mut s)
                .await
                .expect("server shutdown");
            s
        });
        let mut c = client
            .connect_async(SocketAddrV4::new(SERVER, 7))
            .await
            .expect("connect");
        assert!(matches!(c.mode(), Mode::Resilient { .. }), "a TI-flow");
        let mut reader = c.try_clone();
        let back = tokio::spawn(async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.expect("client read");
            got
        });
        let mut resumes = 0;
        for (i, chunk) in sent.chunks(1 << 20).enumerate() {
            c.write_all(chunk).await.expect("client write");
            if i % 2 == 1 {
                c.fail_transport().expect("fail");
                // Let this resume happen before the next failure.
                for _ in 0..200 {
                    let events = c.events();
                    if events
                        .iter()
                        .any(|e| matches!(e, StreamEvent::Resumed { .. }))
                    {
                        resumes += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        AsyncWriteExt::shutdown(&mut c)
            .await
            .expect("client shutdown");
        let got = back.await.expect("reader task");
        let _server_end = echo.await.expect("echo task");
        (got, resumes, server, client)
    };
    let outcome = tasks().block_on(async { tokio::time::timeout(LIMIT, exchange).await });
    let (got, resumes, server, client) = outcome.expect("the exchange finished within the limit");
    assert_eq!(got.len(), payload.len());
    assert_eq!(sha256(&got), sha256(&payload), "byte-exact");
    assert_eq!(resumes, 3, "each of the three failures resumed");
    drop((server, client));
}

#[test]
fn async_calls_fail_once_the_runtime_stops_instead_of_hanging() {
    let (client, server) = runtimes();
    let scenario = async move {
        let listener = server.listen(8).expect("listen");
        let accept = tokio::spawn(async move {
            let mut s = listener.accept_async().await.expect("accept");
            let mut buf = [0u8; 16];
            // Nothing is ever written: this read waits until the stop.
            s.read(&mut buf).await
        });
        let _c = client
            .connect_async(SocketAddrV4::new(SERVER, 8))
            .await
            .expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        server.stop();
        accept.await.expect("task")
    };
    let result = tasks().block_on(async { tokio::time::timeout(LIMIT, scenario).await });
    let read = result.expect("the read ended within the limit");
    let err = read.expect_err("a read on a stopped runtime fails");
    assert_eq!(err.to_string(), StreamError::StackStopped.to_string());
}

/// Readiness and in-place I/O (what `tiflow up`'s relay uses): bytes move
/// with `writable` + `try_write` one way and `readable` + `try_read_to`
/// the other, across a failure, byte-exact; the end of stream reads as 0;
/// an abort by the peer resolves `failed` and fails `readable`.
#[test]
fn readiness_and_in_place_reads_move_bytes_and_report_ends() {
    let (client, server) = runtimes();
    let payload = data(3 << 20, 43);
    let expected = sha256(&payload);
    let scenario = async move {
        // The listener stays: the resume after the failure comes to it.
        let listener = server.listen(9).expect("listen");
        let accept = async { listener.accept_async().await.expect("accept") };
        let c = client
            .connect_async(SocketAddrV4::new(SERVER, 9))
            .await
            .expect("connect");
        let s = accept.await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                s.readable().await.expect("readable");
                // Take at most 1000 bytes a time: the rest stays for later.
                let n = s
                    .try_read_to(|front, _back| {
                        let take = front.len().min(1000);
                        got.extend_from_slice(&front[..take]);
                        Ok(take)
                    })
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::WouldBlock => Ok(usize::MAX),
                        _ => Err(e),
                    })
                    .expect("try_read_to");
                if n == 0 {
                    break;
                }
            }
            (got, s)
        });
        let mut rest = &payload[..];
        let mut failed_once = false;
        while !rest.is_empty() {
            let room = c.writable().await.expect("writable");
            assert!(room > 0);
            match c.try_write(&rest[..rest.len().min(room).min(64 << 10)]) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("try_write: {e}"),
            }
            if !failed_once && rest.len() < payload.len() / 2 {
                c.fail_transport().expect("fail");
                failed_once = true;
            }
        }
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let (got, s) = reader.await.expect("reader");

        assert_eq!(sha256(&got), expected, "byte-exact through a failure");
        let resumes = c.info().map_or(0, |i| i.stats.resumes);
        assert!(failed_once && resumes >= 1, "the flow resumed ({resumes})");
        // A read after the end of stream keeps saying so.
        assert_eq!(s.try_read_to(|_, _| unreachable!()).expect("eof"), 0);
        // The peer aborts: `failed` resolves, the flow's reads fail.
        s.abort().expect("abort");

        let error = tokio::time::timeout(LIMIT, c.failed())
            .await
            .expect("failed resolves");
        assert!(
            error
                .get_ref()
                .and_then(|e| e.downcast_ref::<StreamError>())
                .is_some(),
            "a stream error: {error}"
        );
        assert!(c.readable().await.is_err(), "readable reports the failure");
        assert!(c.writable().await.is_err(), "writable reports the failure");
    };
    let result = tasks().block_on(async { tokio::time::timeout(LIMIT, scenario).await });
    result.expect("no lost wake-up");
}

/// A task waiting in `accept_async` sleeps until a connection joins the
/// accept queue: counted in polls of its future, not in time (waking
/// listener tasks after every poll made an idle accept poll itself
/// forever, a core's worth of CPU in `tiflow up --serve`).
#[test]
fn an_idle_accept_is_not_polled_again_until_a_connection_arrives() {
    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (client, server) = runtimes();
    let scenario = async move {
        let listener = server.listen(11).expect("listen");
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let mut accept = Box::pin(async move { listener.accept_async().await.map(|_| listener) });
        let task = tokio::spawn(std::future::poll_fn(move |cx| {
            counter.fetch_add(1, Ordering::Relaxed);
            accept.as_mut().poll(cx)
        }));
        // The driver polls the stack at least every 5 ms meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = polls.load(Ordering::Relaxed);
        assert!(idle <= 3, "an idle accept was polled {idle} times");
        let _c = client
            .connect_async(SocketAddrV4::new(SERVER, 11))
            .await
            .expect("connect");
        task.await.expect("accept task").expect("accepted");
    };
    let result = tasks().block_on(async { tokio::time::timeout(LIMIT, scenario).await });
    result.expect("the accept was woken");
}

/// A connect that nobody answers ends with the stack's connect timeout,
/// and the waiting task hears of it: the handshake's end is noticed on a
/// connection timer, and the stream must be woken then (the blocking API
/// re-checked every 100 ms and hid a missing wake-up; an async task would
/// wait forever).
#[test]
fn an_unanswered_async_connect_ends_at_the_connect_timeout() {
    let (a, b) = Pipe::pair(1500);
    let mut config = StackConfig::new(Ipv4Addr::new(10, 9, 0, 1));
    config.connect_timeout = Duration::from_millis(500);
    let client = Runtime::start(config, a).expect("client");
    let _server = Runtime::start(StackConfig::new(SERVER), b).expect("server");
    let scenario = async move {
        // An address nobody on the link has: the SYNs go unanswered.
        let nobody = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 99), 7);
        tokio::time::timeout(Duration::from_secs(10), client.connect_async(nobody)).await
    };
    let outcome = tasks().block_on(scenario);
    match outcome {
        Ok(Err(StreamError::TimedOut | StreamError::ConnectionRefused)) => {}
        Ok(other) => panic!("unexpected outcome: {:?}", other.map(|s| s.mode())),
        Err(_) => panic!("the connect's end never woke the task"),
    }
}
