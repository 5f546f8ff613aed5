//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.
//!
//! Shared by `dht-node` and `dht-operator`, so it knows nothing about either: it serves a
//! Prometheus [`Registry`] and asks a closure whether the process is ready.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
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

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if (state.ready)() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {error}\n"))
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("test_events", "Events seen by the test", counter.clone());
        counter.inc_by(7);
        let ready = Arc::new(AtomicBool::new(false));
        let ready_flag = ready.clone();
        let state = AdminState {
            registry: Arc::new(registry),
            ready: Arc::new(move || ready_flag.load(Ordering::SeqCst)),
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
        server.await.unwrap().unwrap();
    }
}
