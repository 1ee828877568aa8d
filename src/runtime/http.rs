//! The process's HTTP face: `/livez`, `/readyz` (what this replica is doing, and whether its
//! watches stalled) and `/metrics`.

use std::{sync::Arc, time::Duration};

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HealthState {
    /// Not leading yet (the default).
    #[allow(dead_code)]
    Starting = 0,
    /// Another replica leads: ready, and idle.
    Follower = 1,
    /// Leading, caches still filling.
    Syncing = 2,
    /// Leading, caches filled.
    Synced = 3,
}

#[derive(Debug, Default)]
pub struct Health {
    state: std::sync::atomic::AtomicU8,
    /// Which watches have stalled, while any has.
    stalled: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn set(&self, state: HealthState) {
        self.state
            .store(state as u8, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_stalled(&self, message: Option<String>) {
        if let Ok(mut stalled) = self.stalled.lock() {
            *stalled = message;
        }
    }

    pub fn answer(&self) -> (&'static str, String) {
        let unavailable = "503 Service Unavailable";
        let state = self.state.load(std::sync::atomic::Ordering::Relaxed);
        if state == HealthState::Follower as u8 {
            return ("200 OK", "ok: follower, idle".into());
        }
        if let Some(stalled) = self.stalled.lock().ok().and_then(|s| s.clone()) {
            return (unavailable, format!("not serving: {stalled}"));
        }
        match state {
            3 => ("200 OK", "ok: leader, caches synced".into()),
            2 => (unavailable, "leader, caches are not synced yet".into()),
            _ => (unavailable, "starting".into()),
        }
    }
}

/// `/livez` answers 200 while the process runs; `/readyz` 200 once this replica leads with
/// its caches filled, or follows (idle); `/metrics` the Prometheus metrics (OpenMetrics). A
/// deliberately small HTTP/1.0 responder for probes and scrapes.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let text = "text/plain";
            let (code, content_type, body) = match path {
                "/livez" => ("200 OK", text, "ok".to_string()),
                "/readyz" => {
                    let (code, body) = health.answer();
                    (code, text, body)
                }
                "/metrics" => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.render(),
                ),
                _ => ("404 Not Found", text, "not found".to_string()),
            };
            let response = format!(
                "HTTP/1.0 {code}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_what_the_replica_does() {
        let health = Health::default();
        assert_eq!(health.answer().0, "503 Service Unavailable", "starting");
        health.set(HealthState::Follower);
        assert_eq!(health.answer(), ("200 OK", "ok: follower, idle".into()));
        health.set(HealthState::Syncing);
        assert!(health.answer().1.contains("not synced"));
        health.set(HealthState::Synced);
        assert_eq!(health.answer().0, "200 OK");
        health.set_stalled(Some("stepped down as leader: Kubeconfigs (refused)".into()));
        let (code, body) = health.answer();
        assert_eq!(code, "503 Service Unavailable");
        assert!(body.contains("stepped down"), "{body}");
        health.set(HealthState::Follower);
        assert_eq!(
            health.answer().0,
            "200 OK",
            "a follower is idle, whatever stalled"
        );
    }
}
