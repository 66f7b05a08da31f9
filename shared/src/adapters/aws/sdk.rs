//! The AWS SDK configuration of the Lambda functions, loaded once per container, at init.
//!
//! The SDK's default HTTPS client trusts the system's root certificates, and finding and
//! decoding them (a 200 KiB bundle, and on some systems every file of `/etc/ssl/certs` too)
//! was most of a function's init time beyond a hello world's. Every AWS endpoint's certificate
//! chains to the Amazon Trust Services roots, so [`config`] trusts those five, built into the
//! binary. An overridden endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`: an
//! emulator, a proxy, a private endpoint with a CA of its own) keeps the system's roots.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore};

/// Amazon Root CA 1 to 4 and Starfield Services Root CA G2 (which cross-signs them), as
/// Amazon Trust Services publishes them (amazontrust.com/repository).
const AMAZON_ROOTS: &str = include_str!("amazon-root-cas.pem");

/// The SDK configuration from the environment (region, credentials), as
/// `aws_config::load_from_env` loads it, over an HTTPS client that trusts the Amazon roots.
pub async fn config() -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    let overridden = std::env::vars_os().any(|(name, _)| {
        name.to_str()
            .is_some_and(|name| name.starts_with("AWS_ENDPOINT_URL"))
    });
    if overridden {
        return loader.load().await;
    }
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(amazon_roots())
        .build_https();
    loader.http_client(https).load().await
}

fn amazon_roots() -> TlsContext {
    TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_pem_certificate(AMAZON_ROOTS))
        .build()
        .expect("a trust store of certificates only builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amazon_roots_are_five_certificates() {
        assert_eq!(
            AMAZON_ROOTS.matches("-----BEGIN CERTIFICATE-----").count(),
            5
        );
        assert_eq!(AMAZON_ROOTS.matches("-----END CERTIFICATE-----").count(), 5);
        amazon_roots();
    }
}
