//! Headers a proxy must not pass on: the gateway's data plane and the hub
//! router (`meridian route`) drop the same ones.

use axum::http::{HeaderMap, HeaderName, header};

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 7.6.1, and what proxies commonly drop).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` (any case) is a hop-by-hop header (not counting those a
/// `Connection` header names): for code that reads raw header names.
pub fn is_hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case(PROXY_CONNECTION.as_str())
        || HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// A header name as Go writes it (`Content-Type`, `X-Api-Key`): each
/// letter after a `-` (and the first) in upper case, the rest in lower
/// case. What Tyk's answers and its CORS library show.
pub fn canonical(name: &str) -> String {
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Removes hop-by-hop headers, and those the `Connection` header names.
#[inline]
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.get(header::CONNECTION)
        && connection.as_bytes().eq_ignore_ascii_case(b"keep-alive")
        && headers.get_all(header::CONNECTION).iter().count() == 1
    {
        // The common case: nothing named but keep-alive itself.
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
        headers.remove(&PROXY_CONNECTION);
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(&PROXY_CONNECTION);
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
