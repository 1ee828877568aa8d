//! The controller's connection to an API server: kube's client stack (base URI, retries of
//! 429/503/504, authentication, extra headers) over a connection that speaks HTTP/2 when the
//! server offers it, as client-go does, with a ping that finds a dead connection.
//!
//! kube's own builder speaks HTTP/1.1 only: every request in flight holds a TLS connection of
//! its own, each answer is read with system calls of its own, and a connection that died
//! without a word is found only by the read timeout (295 s). Over HTTP/2 every request and watch
//! shares one connection whose frames are written together, and a connection that stops
//! answering pings is given up within 20 s.

use std::time::Duration;

use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioTimer},
};
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody, retry::RetryPolicy};
use tower::{BoxError, ServiceBuilder, ServiceExt, retry::RetryLayer, util::BoxService};

/// kube's service stack, as its own builder makes it.
pub type Service = BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// How often an idle HTTP/2 connection is pinged, and how long an answer may take before the
/// connection counts as dead (every request and watch on it then fails and starts over).
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of one answer the API server may send ahead of the controller's reading (a list's
/// page of 500 Secrets is about 2 MiB), and four times that over all answers at once; and the
/// largest frame it may send. HTTP/2's defaults (64 KiB windows and 16 KiB frames) made the
/// lists at a start twice as slow as over HTTP/1.1.
const WINDOW: u32 = 4 << 20;
const MAX_FRAME: u32 = 1 << 20;

/// A client builder for `config`. A proxy in the kubeconfig is left to kube's own builder
/// (HTTP/1.1), which speaks to it.
pub fn builder(config: kube::Config) -> kube::Result<ClientBuilder<Service>> {
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    http.set_nodelay(true);
    let tls = config.rustls_client_config()?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = match config.tls_server_name.as_deref() {
        Some(name) => https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            name.to_string().try_into().map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?,
        )),
        None => https,
    };
    // kube's timeouts of a connection's reads and writes, as its own builder sets them.
    let mut connector = hyper_timeout::TimeoutConnector::new(
        https.enable_http1().enable_http2().wrap_connector(http),
    );
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .http2_initial_stream_window_size(WINDOW)
        .http2_initial_connection_window_size(4 * WINDOW)
        .http2_max_frame_size(MAX_FRAME)
        .build::<_, Body>(connector);
    let default_ns = config.default_namespace.clone();
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client)
        .map_response(|response| {
            response.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
            })
        })
        .boxed();
    Ok(ClientBuilder::new(service, default_ns))
}
