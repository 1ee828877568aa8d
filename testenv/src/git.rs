//! A Git server for the tests: Git's own smart HTTP server (`git http-backend`, run as a CGI
//! program per request) behind a minimal HTTP/1.1 listener on the loopback, serving the bare
//! repositories of a folder. Read-only; the tests push into the bare repositories on disk.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Serves the repositories under `root` at `http://127.0.0.1:<port>/<name>.git` until dropped.
pub struct GitServer {
    pub url: String,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl GitServer {
    pub fn start(root: &Path) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (root_for_thread, stopped) = (root.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let root = root_for_thread.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &root) {
                        eprintln!("git server: {e}");
                    }
                });
            }
        });
        Ok(Self {
            url: format!("http://127.0.0.1:{port}"),
            root: root.to_path_buf(),
            stop,
            port,
        })
    }

    /// A new bare repository `<name>.git` with one commit of `files` (path, content) on branch
    /// `main`; returns its URL.
    pub fn create(&self, name: &str, files: &[(&str, &str)]) -> Result<String, String> {
        let bare = self.root.join(format!("{name}.git"));
        git(
            &self.root,
            &["init", "--quiet", "--bare", "-b", "main", &path(&bare)],
        )?;
        self.commit(name, files, "first")?;
        Ok(format!("{}/{name}.git", self.url))
    }

    /// Commits `files` (written over what is there) to `main` of `<name>.git`.
    pub fn commit(&self, name: &str, files: &[(&str, &str)], message: &str) -> Result<(), String> {
        let bare = self.root.join(format!("{name}.git"));
        let work = self.root.join(format!("{name}.work"));
        if !work.exists() {
            git(
                &self.root,
                &["clone", "--quiet", &path(&bare), &path(&work)],
            )?;
            git(&work, &["checkout", "--quiet", "-B", "main"])?;
        }
        for (file, content) in files {
            let at = work.join(file);
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&at, content).map_err(|e| e.to_string())?;
        }
        git(&work, &["add", "--all"])?;
        git(
            &work,
            &[
                "-c",
                "user.name=tests",
                "-c",
                "user.email=tests@kubeconfig-authority.dev",
                "commit",
                "--quiet",
                "-m",
                message,
            ],
        )?;
        git(&work, &["push", "--quiet", "origin", "main"])
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn git(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .map_err(|e| format!("git {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One request: parsed, handed to `git http-backend`, its CGI answer written back as an HTTP
/// response, then the connection closed.
fn serve(stream: TcpStream, root: &Path) -> Result<(), String> {
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| e.to_string())?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    let (path_info, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut backend = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", length.to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header("content-encoding").unwrap_or_default(),
        )
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("git http-backend: {e}"))?;
    if let Some(mut stdin) = backend.stdin.take() {
        stdin.write_all(&body).map_err(|e| e.to_string())?;
    }
    let out = backend.wait_with_output().map_err(|e| e.to_string())?;
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        })
        .ok_or("git http-backend answered without headers")?;
    let head = String::from_utf8_lossy(&out.stdout[..split.0]).into_owned();
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    for h in head.lines().map(str::trim_end).filter(|h| !h.is_empty()) {
        match h.strip_prefix("Status:") {
            Some(s) => status = s.trim().to_string(),
            None => response.extend_from_slice(format!("{h}\r\n").as_bytes()),
        }
    }
    let body = &out.stdout[split.0 + split.1..];
    let mut stream = stream;
    let start = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    stream
        .write_all(start.as_bytes())
        .and_then(|()| stream.write_all(&response))
        .and_then(|()| stream.write_all(b"\r\n"))
        .and_then(|()| stream.write_all(body))
        .map_err(|e| e.to_string())?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}
