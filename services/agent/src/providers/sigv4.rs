//! AWS Signature Version 4 for the agent's requests to API Gateway, through
//! smithy-rs's `aws-sigv4` (the signer the AWS SDK uses, without the SDK).
//! [`Signer::sign`] takes a request as it will be sent and returns the
//! headers to add; its tests run AWS's published SigV4 test-suite vectors.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The signing parameters are incomplete.
    #[error("SigV4 parameters: {0}")]
    Params(#[from] v4::signing_params::BuildError),
    /// The request cannot be signed as given.
    #[error("SigV4: {0}")]
    Request(#[from] aws_sigv4::http_request::SigningError),
}

/// Credentials and scope of one signer.
#[derive(Clone, Debug)]
pub struct Signer {
    identity: Identity,
    region: String,
    service: String,
}

impl Signer {
    /// A signer for `service` (`apigateway` for API Gateway v1 and v2) in
    /// `region`, with static credentials (and a session token for temporary
    /// ones).
    pub fn new(
        access_key_id: &str,
        secret: &str,
        session_token: Option<String>,
        region: &str,
        service: &str,
    ) -> Self {
        let credentials = Credentials::new(access_key_id, secret, session_token, None, "meridian");
        Self {
            identity: credentials.into(),
            region: region.to_owned(),
            service: service.to_owned(),
        }
    }

    /// The region it signs for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Signs `method url` with `headers` and `body` at `at`; returns the
    /// headers to add (`authorization`, `x-amz-date`, and
    /// `x-amz-security-token` with a session token). `url` is the full URL
    /// with its query string, as it will be sent; the host (and port) comes
    /// from it unless `headers` has one.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        at: SystemTime,
    ) -> Result<Vec<(String, String)>, SignError> {
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.service)
            .time(at)
            .settings(SigningSettings::default())
            .build()?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )?;
        let (instructions, _signature) = sign(request, &params)?.into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// AWS's SigV4 test suite: its credentials, scope and time.
    fn suite() -> (Signer, SystemTime) {
        let signer = Signer::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            "us-east-1",
            "service",
        );
        // 2015-08-30T12:36:00Z
        (
            signer,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160),
        )
    }

    fn authorization(headers: &[(String, String)]) -> &str {
        headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .expect("an authorization header")
    }

    /// Vectors of the published suite (name, method, URL, extra headers,
    /// body, signed headers, signature), covering what a hand-written signer
    /// gets wrong: query order by key, encoding of the query, header values
    /// trimmed with inner runs of spaces collapsed. (`get-utf8` is left out:
    /// a URL carries its path encoded once already, and services other than
    /// S3 sign it encoded twice, as the SDK does.)
    #[test]
    fn published_test_suite_vectors() {
        let (signer, at) = suite();
        let host = "https://example.amazonaws.com";
        type Vector<'a> = (
            &'a str,
            &'a str,
            String,
            Vec<(&'a str, &'a str)>,
            &'a str,
            &'a str,
            &'a str,
        );
        let vectors: Vec<Vector> = vec![
            (
                "get-vanilla",
                "GET",
                format!("{host}/"),
                vec![],
                "",
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                format!("{host}/?Param2=value2&Param1=value1"),
                vec![],
                "",
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "get-vanilla-query-unreserved",
                "GET",
                format!(
                    "{host}/?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                ),
                vec![],
                "",
                "host;x-amz-date",
                "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
            ),
            (
                "get-vanilla-utf8-query",
                "GET",
                format!("{host}/?%E1%88%B4=bar"),
                vec![],
                "",
                "host;x-amz-date",
                "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04",
            ),
            (
                "get-header-value-trim",
                "GET",
                format!("{host}/"),
                vec![("my-header1", "value1"), ("my-header2", "\"a   b   c\"")],
                "",
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
            ),
            (
                "post-header-value-case",
                "POST",
                format!("{host}/"),
                vec![("my-header1", "VALUE1")],
                "",
                "host;my-header1;x-amz-date",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            ),
            (
                "post-vanilla-query",
                "POST",
                format!("{host}/?Param1=value1"),
                vec![],
                "",
                "host;x-amz-date",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            (
                "post-x-www-form-urlencoded",
                "POST",
                format!("{host}/"),
                vec![("content-type", "application/x-www-form-urlencoded")],
                "Param1=value1",
                "content-type;host;x-amz-date",
                "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
            ),
        ];
        for (name, method, url, headers, body, signed, signature) in vectors {
            let added = signer
                .sign(method, &url, &headers, body.as_bytes(), at)
                .unwrap();
            let expected = format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={signature}"
            );
            assert_eq!(authorization(&added), expected, "{name}");
            assert!(
                added.contains(&("x-amz-date".into(), "20150830T123600Z".into())),
                "{name}"
            );
        }
    }

    #[test]
    fn a_session_token_is_sent_and_a_port_is_part_of_the_host() {
        let (_, at) = suite();
        let signer = Signer::new(
            "AKID",
            "secret",
            Some("token".into()),
            "eu-west-1",
            "apigateway",
        );
        let added = signer
            .sign(
                "GET",
                "http://127.0.0.1:5000/restapis?limit=100",
                &[],
                b"",
                at,
            )
            .unwrap();
        assert!(added.contains(&("x-amz-security-token".into(), "token".into())));
        assert!(authorization(&added).contains("/eu-west-1/apigateway/aws4_request"));
        let other_port = signer
            .sign(
                "GET",
                "http://127.0.0.1:5001/restapis?limit=100",
                &[],
                b"",
                at,
            )
            .unwrap();
        assert_ne!(authorization(&added), authorization(&other_port));
    }
}
