//! HTTP/1.1 as bytes: the strict codec both sides of the proxy parse and write
//! with, and the one upstream client that carries every request (from HTTP/1
//! and HTTP/2 clients alike) to the upstream.

pub mod client;
pub mod codec;
