//! Small operator tools: a self-signed development certificate, and a health check
//! client for container images that have no shell or curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("cannot make the certificate")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `dev-cert.pem` and `dev-key.pem` (mode 0600) under `dir`.
pub fn write(dir: &Path, names: &[String]) -> Result<(PathBuf, PathBuf), DevCertError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())?;
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    write_file(&cert, certified.cert.pem().as_bytes(), 0o644)?;
    write_file(
        &key,
        certified.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok((cert, key))
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DevCertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| DevCertError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// GETs an `http://host:port/path` URL and succeeds on a 200.
pub fn healthcheck(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported".to_owned())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    if &head[..9] == b"HTTP/1.1 " && &head[9..12] == b"200" {
        Ok(())
    } else {
        Err(format!("answered {}", String::from_utf8_lossy(&head)))
    }
}
