//! The client side of the proxy: one adapter per protocol, each turning its
//! connection or stream into the request path's [`crate::proxy::Downstream`] and
//! sending back what [`crate::proxy::forward`] returns.

pub mod h1;
pub mod h2;
