use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;

/// A loopback port nothing listens on: connections are refused.
fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A member that accepts connections and never answers (paused, or cut off behind a
/// proxy that holds its traffic); counts the connections it accepted.
fn silent_member() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}

async fn channel(ports: &[u16]) -> (Channel, Arc<Members>) {
    let members = Arc::new(Members::default());
    let (channel, changes) = FailoverBuilder::sharing(Arc::clone(&members))
        .balanced_channel(8)
        .unwrap();
    for port in ports {
        let uri: Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
        let endpoint = Endpoint::from(uri.clone());
        changes.send(Change::Insert(uri, endpoint)).await.unwrap();
    }
    (channel, members)
}

fn grpc_request(path: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1{path}"))
        .header("content-type", "application/grpc")
        .body(full(&Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

async fn send(channel: &mut Channel, path: &str) -> Option<Result<Response<Body>, BoxError>> {
    let call = channel.ready().await.unwrap().call(grpc_request(path));
    tokio::time::timeout(Duration::from_millis(500), call)
        .await
        .ok()
}

#[tokio::test]
async fn a_refused_request_goes_on_to_the_next_member_and_one_given_up_moves_the_current() {
    let (silent, accepted) = silent_member();
    let (other, _) = silent_member();
    let (mut channel, members) = channel(&[refused_port(), silent, other]).await;
    assert_eq!(members.current(), 0);
    let answer = send(&mut channel, "/etcdserverpb.KV/Range").await;
    assert!(answer.is_none(), "the silent member never answers");
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the request the first member refused went on to the second"
    );
    assert_eq!(
        members.current(),
        2,
        "the refused member and the one given up on are left: the third is current"
    );
}

#[tokio::test]
async fn a_refused_stream_fails_and_is_not_sent_again() {
    let (silent, accepted) = silent_member();
    let (mut channel, members) = channel(&[refused_port(), silent]).await;
    let answer = send(&mut channel, "/etcdserverpb.Lease/LeaseKeepAlive")
        .await
        .expect("a refused connection fails at once");
    let err = answer.expect_err("refused");
    assert!(
        never_sent(&*err),
        "a refused connection sent nothing: {err:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a stream's body is not buffered, so it is not sent again"
    );
    assert_eq!(
        members.current(),
        1,
        "the next request goes to the next member"
    );
}

#[tokio::test]
async fn every_member_refusing_fails_with_the_connect_error() {
    let (mut channel, members) = channel(&[refused_port(), refused_port()]).await;
    let err = send(&mut channel, "/etcdserverpb.KV/Range")
        .await
        .expect("refused connections fail at once")
        .expect_err("nobody listens");
    assert!(never_sent(&*err), "{err:?}");
    assert_eq!(members.current(), 0, "both failed once: back to the first");
}
