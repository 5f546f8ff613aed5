//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! Shared by `dht-node` and `dht-operator`, so it knows nothing about either: it serves a
//! Prometheus [`Registry`] and asks a closure whether the process is ready. Three fixed paths
//! need no router, so hyper serves them alone: a router was a twentieth of dht-node's code.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;

/// What the admin server serves.
#[derive(Clone)]
pub struct AdminState {
    /// Encoded as Prometheus text on every `/metrics` request.
    pub registry: Arc<Registry>,
    /// `/readyz` answers 200 while this returns true, 503 otherwise.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Content type of the Prometheus text exposition format that prometheus-client writes.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long shutdown waits for requests in flight before it drops their connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long to wait before accepting again after `accept` failed for want of a resource (file
/// descriptors, memory), which a retry at once would only fail on again.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves the admin endpoints on `listener` until `shutdown` completes, then lets requests in
/// flight finish. A failed connection or `accept` is logged; it never stops the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin server: accepting a connection failed");
                    if !is_connection_error(&error) {
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let state = state.clone();
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let response = respond(&state, request.method(), request.uri().path());
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin server: connection failed");
            }
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown()).await.is_err() {
        tracing::warn!(
            "admin server: dropped connections still open {SHUTDOWN_GRACE:?} after shutdown"
        );
    }
}

/// Whether `accept` failed for the one connection it was taking, not for want of a resource.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

/// The admin server's paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Health,
    Readiness,
    Metrics,
}

impl Endpoint {
    fn of(path: &str) -> Option<Self> {
        match path {
            "/healthz" => Some(Self::Health),
            "/readyz" => Some(Self::Readiness),
            "/metrics" => Some(Self::Metrics),
            _ => None,
        }
    }
}

/// The response to `method` on `path`. hyper leaves the body out of a response to HEAD.
fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let Some(endpoint) = Endpoint::of(path) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match endpoint {
        Endpoint::Health => text(StatusCode::OK, "ok\n"),
        Endpoint::Readiness if (state.ready)() => text(StatusCode::OK, "ready\n"),
        Endpoint::Readiness => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        Endpoint::Metrics => metrics(&state.registry),
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => response(StatusCode::OK, METRICS_CONTENT_TYPE, body),
        Err(error) => {
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {error}\n"))
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn state_with_events(events: u64, ready: bool) -> AdminState {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("test_events", "Events seen by the test", counter.clone());
        counter.inc_by(events);
        AdminState { registry: Arc::new(registry), ready: Arc::new(move || ready) }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn answers_each_path_and_refuses_the_rest() {
        let state = state_with_events(7, false);
        let get = |path| respond(&state, &Method::GET, path);
        assert_eq!(get("/healthz").status(), StatusCode::OK);
        assert_eq!(get("/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            respond(&state_with_events(0, true), &Method::GET, "/readyz").status(),
            StatusCode::OK
        );

        let metrics = get("/metrics");
        assert_eq!(metrics.status(), StatusCode::OK);
        assert_eq!(metrics.headers()[header::CONTENT_TYPE], METRICS_CONTENT_TYPE);
        assert!(body(metrics).await.contains("test_events_total 7"));

        assert_eq!(get("/metricz").status(), StatusCode::NOT_FOUND);
        assert_eq!(respond(&state, &Method::HEAD, "/healthz").status(), StatusCode::OK);
        let post = respond(&state, &Method::POST, "/healthz");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
    }

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_over_http_until_shut_down() {
        let ready = Arc::new(AtomicBool::new(false));
        let ready_flag = ready.clone();
        let state = AdminState {
            ready: Arc::new(move || ready_flag.load(Ordering::SeqCst)),
            ..state_with_events(7, false)
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async {
            let _ = stopped.await;
        }));

        assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::SeqCst);
        assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = http_get(addr, "/metrics").await;
        assert!(metrics.contains("test_events_total 7"), "{metrics}");

        stop.send(()).unwrap();
        server.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );
    }
}
