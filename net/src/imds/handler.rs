//! The metadata service's request -> response logic, free of sockets and clocks.
//! (Skeleton: filled in by the following commits.)

/// A parsed HTTP request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataRequest {
    /// Request method (`GET`, `PUT`, ...).
    pub method: String,
    /// Request target as sent (`/latest/meta-data/instance-id`).
    pub target: String,
    /// Header (name, value) pairs in arrival order; names compare case-insensitively.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    /// HTTP status code.
    pub status: u16,
    /// Extra headers (name, value) beyond the ones every response carries.
    pub headers: Vec<(String, String)>,
    /// `Content-Type` of the body.
    pub content_type: &'static str,
    /// Response body.
    pub body: Vec<u8>,
    /// IP TTL for the response's packets (`Some(hop limit)` for the token PUT), else the default.
    pub hop_limit: Option<u8>,
}
