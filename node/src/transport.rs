//! rpcudp over one UDP socket: requests go out from the listening socket (the receiver takes
//! the source address as the caller's contact), answers are matched by message id and source
//! address, incoming requests are handed to a [`RequestHandler`] and answered from the same
//! socket. Malformed datagrams are counted and dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::codec::{
    decode_datagram, encode_request, write_response, Datagram, DecodeError, MessageId, Request,
    Response, MAX_REQUEST_BODY, MESSAGE_ID_LEN, REQUEST,
};
use crate::config::NodeConfig;
use crate::lock;
use crate::metrics::{DropReason, Metrics, Outcome, Procedure};
use crate::random_key::RandomKeys;
use crate::rate_limit::SourceLimits;

/// Largest datagram read; UDP payloads cannot be larger.
const RECEIVE_BUFFER: usize = 65536;

/// The buffers of every node served on one thread: a datagram is read, handled and answered
/// before the receive loop awaits again, so one pair serves them all.
struct DatagramBuffers {
    /// A buffer per node was resident in full with many nodes on one thread (glibc's calloc
    /// hands out reused heap memory and zeroes every page of it): 55 KiB a node with 50 nodes
    /// a process. Reserved, never zeroed, so only the pages datagrams have filled are resident
    /// (zeroed, it was 64 KiB of every process).
    receive: Vec<u8>,
    /// Written anew for every answer: an allocation per answer was a tenth of the time spent
    /// serving one.
    answer: Vec<u8>,
}

thread_local! {
    static BUFFERS_OF_THREAD: RefCell<DatagramBuffers> = RefCell::new(DatagramBuffers {
        receive: Vec::with_capacity(RECEIVE_BUFFER),
        answer: Vec::new(),
    });
}

/// Datagrams the receive loop takes from a busy socket before it lets other tasks run.
const DATAGRAMS_PER_YIELD: u32 = 64;

/// Socket receive buffer asked of the kernel: a burst of joins (hundreds of requests at once)
/// overflows the usual default of about 200 KiB and drops datagrams. The kernel caps the
/// request (Linux: net.core.rmem_max); whatever it grants is kept.
const SOCKET_RECEIVE_BUFFER: libc::c_int = 4 * 1024 * 1024;

/// Asks for [`SOCKET_RECEIVE_BUFFER`]; a refusal only leaves the default, so it is logged.
fn enlarge_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = SOCKET_RECEIVE_BUFFER;
    // SAFETY: the descriptor belongs to `socket`, alive for the call; the option value points
    // to a c_int and its length says so.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "SO_RCVBUF kept at its default");
    }
}

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no answer from {peer} within {timeout:?}")]
    Timeout { peer: SocketAddr, timeout: Duration },
    #[error("{max} calls are already awaiting answers")]
    TooManyCalls { max: usize },
    #[error("request body of {size} bytes exceeds the {MAX_REQUEST_BODY}-byte limit")]
    TooLarge { size: usize },
    #[error("sending to {peer}: {source}")]
    Send { peer: SocketAddr, source: io::Error },
    #[error("bad answer from {peer}: {source}")]
    BadAnswer { peer: SocketAddr, source: DecodeError },
    #[error("the node is shutting down")]
    Closed,
}

/// Answers incoming requests. Runs on the receive loop, so it must not block.
pub trait RequestHandler: Send + Sync {
    /// What to do about `request` from `from`.
    fn handle(&self, from: SocketAddr, request: Request) -> Handled;
}

/// How a [`RequestHandler`] took a request.
#[derive(Debug)]
pub enum Handled {
    /// Served; this goes back to the caller.
    Answer(Response),
    /// Served, and not answered: the request was a notice.
    Silently,
    /// A procedure the handler does not know: not served, not answered (as Python does).
    Unknown,
}

struct PendingCall {
    peer: SocketAddr,
    /// The answer's msgpack body, read by the caller's reader.
    reply: oneshot::Sender<Vec<u8>>,
}

/// The calls awaiting an answer, by message id (random bytes this node drew).
type PendingCalls = HashMap<MessageId, PendingCall, RandomKeys>;

/// One node's UDP endpoint.
pub struct Transport {
    socket: UdpSocket,
    pending: Mutex<PendingCalls>,
    max_outstanding: usize,
    /// [`NodeConfig::datagram_loss`].
    datagram_loss: f64,
    /// [`NodeConfig::max_requests_per_source`] and [`NodeConfig::max_answer_bytes_per_source`].
    source_limits: (u32, u32),
    metrics: Metrics,
    /// Set when the receive loop ended: no answer can arrive any more.
    closed: AtomicBool,
}

/// `request` framed under a fresh message id, unless its body is too large to send.
fn request_datagram(request: &Request) -> Result<(MessageId, Vec<u8>), RpcError> {
    let id: MessageId = rand::random();
    let datagram = encode_request(&id, request);
    let body_size = datagram.len() - 1 - MESSAGE_ID_LEN;
    if body_size > MAX_REQUEST_BODY {
        return Err(RpcError::TooLarge { size: body_size });
    }
    Ok((id, datagram))
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare equal to their IPv4 form.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Reads an answer's msgpack body into what the call returns.
pub type Reader<T> = fn(&[u8]) -> Result<T, DecodeError>;

/// Removes a call's entry however the call ends: answered, timed out, or its future dropped.
struct PendingGuard<'a> {
    transport: &'a Transport,
    id: MessageId,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.transport.pending().remove(&self.id);
    }
}

impl Transport {
    pub async fn bind(
        addr: SocketAddr,
        config: &NodeConfig,
        metrics: Metrics,
    ) -> io::Result<Transport> {
        let socket = UdpSocket::bind(addr).await?;
        enlarge_receive_buffer(&socket);
        Ok(Transport {
            socket,
            pending: Mutex::new(PendingCalls::default()),
            max_outstanding: config.max_outstanding_calls,
            datagram_loss: config.datagram_loss,
            source_limits: (config.max_requests_per_source, config.max_answer_bytes_per_source),
            metrics,
            closed: AtomicBool::new(false),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn pending(&self) -> MutexGuard<'_, PendingCalls> {
        lock(&self.pending)
    }

    /// Sends `request` to `peer`, waits up to `timeout` for its answer and reads its msgpack
    /// body with `read` (`codec::find_node_answer`, ...). An answer that `read` refuses is
    /// counted as malformed.
    ///
    /// An `async` block, not an `async fn`: the future of an `async fn` keeps a second copy of
    /// the arguments it uses after an await, and every call in flight carries this one.
    pub fn call<'a, T: 'a>(
        &'a self,
        peer: SocketAddr,
        request: &'a Request,
        timeout: Duration,
        read: Reader<T>,
    ) -> impl Future<Output = Result<T, RpcError>> + 'a {
        let peer = canonical(peer);
        async move {
            let started = Instant::now();
            let result = self.call_unrecorded(peer, request, timeout).await.and_then(|body| {
                read(&body).map_err(|source| {
                    self.metrics.dropped(DropReason::Malformed);
                    RpcError::BadAnswer { peer, source }
                })
            });
            let outcome = match &result {
                Ok(_) => Outcome::Ok,
                Err(RpcError::Timeout { .. }) => Outcome::Timeout,
                Err(_) => Outcome::Error,
            };
            let latency = result.is_ok().then(|| started.elapsed().as_secs_f64());
            self.metrics.call_finished(request.method(), outcome, latency);
            result
        }
    }

    /// Sends `request` to `peer` and expects no answer (a notice): no pending call, no timer.
    pub async fn notify(&self, peer: SocketAddr, request: &Request) -> Result<(), RpcError> {
        let (_, datagram) = request_datagram(request)?;
        let peer = canonical(peer);
        self.send(&datagram, peer).await.map_err(|source| RpcError::Send { peer, source })?;
        Ok(())
    }

    /// Sends `datagram` to `peer`, waiting for room only when the socket has none. The
    /// waiting future (432 bytes) is boxed then, so that the futures of the calls in flight
    /// and of the receive loop do not carry it.
    async fn send(&self, datagram: &[u8], peer: SocketAddr) -> io::Result<usize> {
        match self.socket.try_send_to(datagram, peer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(self.socket.send_to(datagram, peer)).await
            }
            sent => sent,
        }
    }

    /// An `async` block for the reason [`Transport::call`] gives.
    #[expect(clippy::manual_async_fn, reason = "an async fn keeps copies of its arguments")]
    fn call_unrecorded<'a>(
        &'a self,
        peer: SocketAddr,
        request: &'a Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, RpcError>> + 'a {
        async move {
            let (id, datagram) = request_datagram(request)?;
            let (reply, answer) = oneshot::channel();
            {
                let mut pending = self.pending();
                // Checked under the lock that `serve` clears the map with: a call either sees
                // the flag or has its entry cleared (and its reply channel dropped).
                if self.closed.load(Ordering::SeqCst) {
                    return Err(RpcError::Closed);
                }
                if pending.len() >= self.max_outstanding {
                    return Err(RpcError::TooManyCalls { max: self.max_outstanding });
                }
                pending.insert(id, PendingCall { peer, reply });
            }
            let _guard = PendingGuard { transport: self, id };
            self.send(&datagram, peer).await.map_err(|source| RpcError::Send { peer, source })?;
            // Not kept while the answer is awaited: a lookup's calls in flight held 128 bytes each.
            drop(datagram);
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(_)) => Err(RpcError::Closed),
                Err(_) => Err(RpcError::Timeout { peer, timeout }),
            }
        }
    }

    /// Receives datagrams until `shutdown`: answers go to their callers, requests to `handler`
    /// within their source's budget.
    pub async fn serve(&self, handler: &dyn RequestHandler, shutdown: CancellationToken) {
        let (requests, answer_bytes) = self.source_limits;
        let mut limits = SourceLimits::new(requests, answer_bytes, Instant::now());
        let mut taken_without_yielding = 0;
        loop {
            // The socket is read until it is empty before waiting on it (and on `shutdown`):
            // under load most datagrams are then taken without a trip through the runtime.
            // Every so often the loop yields anyway, so that a flood cannot starve the other
            // tasks of the thread (the admin server's probes among them).
            taken_without_yielding += 1;
            if taken_without_yielding == DATAGRAMS_PER_YIELD {
                taken_without_yielding = 0;
                tokio::task::yield_now().await;
            }
            // Read, handled and answered before the next await: the thread's buffers are free
            // again for the other nodes it serves. Only an answer the socket has no room for
            // now is copied out, to be sent once it has.
            let received = BUFFERS_OF_THREAD.with_borrow_mut(|buffers| -> io::Result<_> {
                let DatagramBuffers { receive, answer } = buffers;
                receive.clear();
                let (_, from) = self.socket.try_recv_buf_from(receive)?;
                let from = canonical(from);
                if !self.dispatch(receive, from, handler, &mut limits, answer) {
                    return Ok(None);
                }
                Ok(match self.socket.try_send_to(answer, from) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        Some((answer.clone(), from))
                    }
                    Err(error) => {
                        tracing::debug!(to = %from, %error, "sending an answer failed");
                        None
                    }
                    Ok(_) => None,
                })
            });
            let received = match received {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        ready = self.socket.readable() => match ready {
                            Ok(()) => continue,
                            Err(error) => Err(error),
                        },
                    }
                }
                received => received,
            };
            match received {
                Ok(Some((answer, to))) => {
                    // `send` boxes the wait: the loop's future lives as long as the node.
                    if let Err(error) = self.send(&answer, to).await {
                        tracing::debug!(%to, %error, "sending an answer failed");
                    }
                }
                Ok(None) => {}
                // ICMP errors of earlier sends surface here on some systems; they end nothing.
                Err(error) => tracing::debug!(%error, "receiving a datagram failed"),
            }
        }
        // Wake every caller still waiting, and refuse new calls: nothing can answer them.
        let mut pending = self.pending();
        self.closed.store(true, Ordering::SeqCst);
        pending.clear();
    }

    /// Handles one datagram from `from`; true when it is to be answered with what it wrote in
    /// `answer`.
    fn dispatch(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        handler: &dyn RequestHandler,
        limits: &mut SourceLimits,
        answer: &mut Vec<u8>,
    ) -> bool {
        if self.datagram_loss > 0.0 && rand::random::<f64>() < self.datagram_loss {
            self.metrics.dropped(DropReason::InjectedLoss);
            return false;
        }
        // Checked before decoding: a flood over budget costs no more than this lookup.
        let now = limits.now();
        if datagram.first() == Some(&REQUEST) && !limits.admit_request(from, now) {
            self.metrics.dropped(DropReason::RateLimited);
            return false;
        }
        match decode_datagram(datagram) {
            Ok(Datagram::Request { id, request }) => {
                // The name outlives the request the handler takes. Only what the handler
                // served is counted: a series per made-up name would grow without bound.
                let procedure = Procedure::of(request.method());
                let response = match handler.handle(from, request) {
                    Handled::Answer(response) => Some(response),
                    Handled::Silently => None,
                    Handled::Unknown => return false,
                };
                self.metrics.served(procedure);
                let Some(response) = response else {
                    return false;
                };
                write_response(answer, &id, &response);
                limits.charge_answer(from, answer.len(), now);
                true
            }
            Ok(Datagram::Response { id, body }) => {
                self.accept_response(id, body, from);
                false
            }
            Err(error) => {
                let reason = match error {
                    DecodeError::TooShort(_) => DropReason::TooShort,
                    DecodeError::UnknownType(_) => DropReason::UnknownType,
                    DecodeError::Msgpack { .. } | DecodeError::Field { .. } => {
                        DropReason::Malformed
                    }
                };
                self.metrics.dropped(reason);
                tracing::debug!(%from, %error, len = datagram.len(), "dropped a datagram");
                false
            }
        }
    }

    fn accept_response(&self, id: MessageId, body: &[u8], from: SocketAddr) {
        let mut pending = self.pending();
        // Only the address the call went to may answer it: a third party that guesses or
        // sniffs a message id cannot inject answers.
        match pending.get(&id) {
            Some(call) if call.peer == from => {
                if let Some(call) = pending.remove(&id) {
                    // The caller may have given up in the meantime; nothing to do then.
                    let _ = call.reply.send(body.to_vec());
                }
            }
            _ => {
                drop(pending);
                self.metrics.dropped(DropReason::Unmatched);
                tracing::debug!(%from, "dropped an answer that no call awaits");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    use super::*;
    use crate::codec::ping_answer;

    fn receive_buffer(socket: &UdpSocket) -> libc::c_int {
        let mut size: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: the descriptor is alive; size and len point to a c_int and its length.
        let result = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_mut(&mut size).cast::<libc::c_void>(),
                &mut len,
            )
        };
        assert_eq!(result, 0, "{}", io::Error::last_os_error());
        size
    }

    #[tokio::test]
    async fn the_node_socket_gets_a_larger_receive_buffer_than_a_plain_one() {
        let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let transport = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            &NodeConfig::default(),
            Metrics::unregistered(),
        )
        .await;
        let enlarged = receive_buffer(&transport.unwrap().socket);
        let default = receive_buffer(&plain);
        // Equal only where the kernel caps the buffer at its default (rmem_max = rmem_default).
        assert!(enlarged >= default, "{enlarged} < {default}");
        if std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|max| max.trim().parse::<libc::c_int>().ok())
            .is_some_and(|max| max > default)
        {
            assert!(enlarged > default, "SO_RCVBUF stayed at {default}");
        }
    }

    struct Pong;

    impl RequestHandler for Pong {
        fn handle(&self, _: SocketAddr, _: Request) -> Handled {
            Handled::Answer(Response::Ping(crate::id::NodeId([7; 20])))
        }
    }

    /// A ping to a node that drops `loss` of what it receives: answered or timed out.
    async fn ping_through_loss(loss: f64) -> Result<crate::id::NodeId, RpcError> {
        let any = "127.0.0.1:0".parse().unwrap();
        let lossy = NodeConfig { datagram_loss: loss, ..NodeConfig::default() };
        let server = Arc::new(Transport::bind(any, &lossy, Metrics::unregistered()).await.unwrap());
        let client = Arc::new(
            Transport::bind(any, &NodeConfig::default(), Metrics::unregistered()).await.unwrap(),
        );
        let shutdown = CancellationToken::new();
        let serving: Vec<_> = [server.clone(), client.clone()]
            .into_iter()
            .map(|transport| {
                let shutdown = shutdown.clone();
                tokio::spawn(async move { transport.serve(&Pong, shutdown).await })
            })
            .collect();
        let ping = Request::Ping { sender: crate::id::NodeId([1; 20]) };
        let answer = client
            .call(server.local_addr().unwrap(), &ping, Duration::from_millis(300), ping_answer)
            .await;
        shutdown.cancel();
        for task in serving {
            task.await.unwrap();
        }
        answer
    }

    #[tokio::test]
    async fn a_test_loss_of_one_drops_every_datagram_and_none_drops_nothing() {
        assert!(ping_through_loss(0.0).await.is_ok());
        assert!(matches!(ping_through_loss(1.0).await, Err(RpcError::Timeout { .. })));
    }

    /// Takes 100 µs per request: a flood keeps its socket from ever running dry.
    struct SlowPong;

    impl RequestHandler for SlowPong {
        fn handle(&self, from: SocketAddr, request: Request) -> Handled {
            let until = Instant::now() + Duration::from_micros(100);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            Pong.handle(from, request)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooded_receive_loop_still_lets_the_other_tasks_of_its_thread_run() {
        let node = Arc::new(
            Transport::bind(
                "127.0.0.1:0".parse().unwrap(),
                &NodeConfig::default(),
                Metrics::unregistered(),
            )
            .await
            .unwrap(),
        );
        let target = node.local_addr().unwrap();
        let flooding = Arc::new(AtomicBool::new(true));
        let flooder = std::thread::spawn({
            let flooding = flooding.clone();
            move || {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let ping = encode_request(
                    &[3; MESSAGE_ID_LEN],
                    &Request::Ping { sender: crate::id::NodeId([1; 20]) },
                );
                while flooding.load(Ordering::Relaxed) {
                    let _ = socket.send_to(&ping, target);
                }
            }
        });
        // The socket fills before the loop starts, so its first reads never find it empty.
        std::thread::sleep(Duration::from_millis(50));
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn({
            let (node, shutdown) = (node.clone(), shutdown.clone());
            async move { node.serve(&SlowPong, shutdown).await }
        });
        let mut ticks = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks += 1;
        }
        flooding.store(false, Ordering::Relaxed);
        flooder.join().unwrap();
        shutdown.cancel();
        serving.await.unwrap();
        // 100 at most; a loop that never yields leaves this task one or two.
        assert!(ticks >= 20, "the other task ran {ticks} times in 500 ms");
    }
}
