//! The listener: HTTP/1.1 `GET` only, one request per connection (`Connection: close`), a
//! bounded request head read under a timeout. Enough for Prometheus and orchestrator probes;
//! nothing here is exposed beyond `metrics.bind`.

use super::Probe;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head read; longer ones are answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// A client has this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until the task is aborted (the node does when it stops).
pub async fn serve(listener: TcpListener, probe: Arc<Probe>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, probe.clone()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, probe: Arc<Probe>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Some(head)) => head,
        Ok(None) => {
            let _ = respond(&mut stream, 431, "text/plain", "request head too large\n").await;
            return;
        }
        Err(_) => return,
    };
    let mut words = head.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        let _ = respond(&mut stream, 405, "text/plain", "only GET\n").await;
        return;
    }
    let (status, kind, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", probe.render()),
        "/health" => json_answer(probe.health()),
        "/ready" => json_answer(probe.ready().await),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /health or /ready\n".to_string(),
        ),
    };
    let _ = respond(&mut stream, status, kind, &body).await;
}

fn json_answer(answer: super::ProbeAnswer) -> (u16, &'static str, String) {
    let status = if answer.ok { 200 } else { 503 };
    (status, "application/json", format!("{}\n", answer.body))
}

/// The request line and headers; `None` when they exceed `MAX_HEAD`.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        head.extend_from_slice(&buf[..n]);
        if n == 0 || head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

async fn respond(stream: &mut TcpStream, status: u16, kind: &str, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
