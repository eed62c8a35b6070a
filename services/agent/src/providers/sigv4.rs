//! AWS Signature Version 4 for the few requests the agent makes. Written
//! out (about sixty lines) rather than pulling in the AWS SDK, whose crates
//! take about ten minutes to build here; checked against AWS's published
//! example.

use sha2::{Digest, Sha256};

/// Credentials and scope of one signer.
#[derive(Clone)]
pub struct Signer {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret: String,
    /// Session token for temporary credentials.
    pub session_token: Option<String>,
    /// Region, for example `us-east-1`.
    pub region: String,
    /// Service, `apigateway` for API Gateway v1 and v2.
    pub service: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// RFC 3986 encoding as SigV4 wants it (unreserved characters kept).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Signer {
    /// The signing key of a day (`yyyymmdd`).
    fn key(&self, date: &str) -> [u8; 32] {
        let k = hmac(format!("AWS4{}", self.secret).as_bytes(), date.as_bytes());
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, self.service.as_bytes());
        hmac(&k, b"aws4_request")
    }

    /// The headers to add to a request: `x-amz-date`, `authorization`, and
    /// `x-amz-security-token` with a session token. `query` is the
    /// already-encoded query string; `extra` are more headers to sign,
    /// `amz_date` is `yyyymmddThhmmssZ`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        query: &str,
        extra: &[(&str, &str)],
        body: &[u8],
        amz_date: &str,
    ) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        headers.push(("host".into(), host.to_owned()));
        headers.push(("x-amz-date".into(), amz_date.to_owned()));
        if let Some(token) = &self.session_token {
            headers.push(("x-amz-security-token".into(), token.clone()));
        }
        headers.sort();
        let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
        params.sort_unstable();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        let signed = signed.join(";");
        let canonical = format!(
            "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
            uri_encode(path, true),
            params.join("&"),
            hex(&Sha256::digest(body))
        );
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let signature = hex(&hmac(&self.key(date), to_sign.as_bytes()));
        let mut out = vec![
            ("x-amz-date".to_owned(), amz_date.to_owned()),
            (
                "authorization".to_owned(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
                    self.access_key_id
                ),
            ),
        ];
        if let Some(token) = &self.session_token {
            out.push(("x-amz-security-token".to_owned(), token.clone()));
        }
        out
    }
}

/// `yyyymmddThhmmssZ` for now.
pub fn amz_now() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Signer {
        Signer {
            access_key_id: "AKIDEXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
            region: "us-east-1".into(),
            service: "iam".into(),
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The worked example of AWS's "Signature Version 4 signing process"
    /// documentation (IAM ListUsers, 2015-08-30).
    #[test]
    fn matches_the_aws_documented_example() {
        let s = example();
        assert_eq!(
            hex(&s.key("20150830")),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        let headers = s.sign(
            "GET",
            "iam.amazonaws.com",
            "/",
            "Action=ListUsers&Version=2010-05-08",
            &[(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )],
            b"",
            "20150830T123600Z",
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn session_tokens_are_sent_and_signed() {
        let mut s = example();
        s.session_token = Some("tok".into());
        let headers = s.sign("GET", "h", "/", "", &[], b"", "20150830T123600Z");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "x-amz-security-token" && v == "tok")
        );
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token"));
    }
}
