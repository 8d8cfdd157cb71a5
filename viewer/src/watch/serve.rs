//! A minimal HTTP/1.1 server for `/metrics`: one thread, one request per
//! connection, the latest rendering handed over through a mutex. Prometheus
//! asks for one URL with GET; nothing else is served.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The exposition the server hands out, replaced by the watch loop.
pub type Exposition = Arc<Mutex<String>>;

/// Bind `addr` now (so a taken port is the command's error) and serve from
/// a thread; returns the address bound (port 0 picks one).
pub fn start(addr: SocketAddr, exposition: Exposition) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("toktrace-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // A client that stalls must not stall the next scrape for long.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = answer(stream, &exposition);
            }
        })?;
    Ok(bound)
}

fn answer(stream: TcpStream, exposition: &Exposition) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Headers are read and ignored; a bounded number, so a client cannot
    // keep the thread busy.
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let mut stream = reader.into_inner();
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = exposition.lock().map(|s| s.clone()).unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "toktrace watch: metrics at /metrics\n".to_string(),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connects");
        s.write_all(request.as_bytes()).expect("sends");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("reads");
        out
    }

    #[test]
    fn serves_the_latest_exposition_and_nothing_else() {
        let exposition: Exposition = Arc::new(Mutex::new("a 1\n".into()));
        let addr = start("127.0.0.1:0".parse().expect("addr"), exposition.clone()).expect("binds");
        let first = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
        assert!(first.ends_with("a 1\n"));
        *exposition.lock().expect("lock") = "a 2\n".into();
        assert!(get(addr, "GET /metrics?x=1 HTTP/1.1\r\n\r\n").ends_with("a 2\n"));
        assert!(get(addr, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A taken address is an error, not a silent second server.
        assert!(start(addr, exposition).is_err());
    }
}
