//! AWS credentials the way AWS users expect them: when no key is in the environment, the AWS
//! SDK's default provider chain (`aws-config`: `AWS_PROFILE` and `~/.aws/credentials` or
//! `~/.aws/config`, web identity as on Kubernetes with IRSA, ECS and EKS pod identity, the
//! EC2 instance role), bridged into object_store's [`CredentialProvider`].
//!
//! The instance-metadata probe, the chain's last resort, is bounded so that a host with no
//! credentials anywhere fails within about two seconds with [`NoCredentials`], which reads as
//! a permanent refusal with a hint rather than as an outage to retry.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;
use tokio::sync::{Mutex, OnceCell};

use super::refusal::NoCredentials;

/// Time allowed to connect to, and to hear from, the instance metadata service.
const IMDS_TIMEOUT: Duration = Duration::from_millis(800);
/// Credentials that expire within this are fetched anew.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// The AWS default chain, asked once and again only when what it gave nears expiry.
pub struct AwsChain {
    region: Option<String>,
    chain: OnceCell<DefaultCredentialsChain>,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl std::fmt::Debug for AwsChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AwsChain")
    }
}

impl AwsChain {
    /// A chain for `region` (used for the STS calls of web identity and role profiles);
    /// `None` lets the chain find it.
    pub fn new(region: Option<String>) -> AwsChain {
        AwsChain {
            region,
            chain: OnceCell::new(),
            cached: Mutex::new(None),
        }
    }

    async fn chain(&self) -> &DefaultCredentialsChain {
        self.chain
            .get_or_init(|| async {
                let imds = aws_config::imds::Client::builder()
                    .connect_timeout(IMDS_TIMEOUT)
                    .read_timeout(IMDS_TIMEOUT)
                    .max_attempts(1)
                    .build();
                let mut builder = DefaultCredentialsChain::builder().imds_client(imds);
                if let Some(region) = &self.region {
                    builder = builder.region(aws_config::Region::new(region.clone()));
                }
                builder.build().await
            })
            .await
    }
}

#[async_trait::async_trait]
impl CredentialProvider for AwsChain {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        if let Some((credential, expiry)) = &*cached {
            let fresh = expiry.is_none_or(|at| {
                at.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > REFRESH_BEFORE_EXPIRY)
            });
            if fresh {
                return Ok(credential.clone());
            }
        }
        let found = self
            .chain()
            .await
            .provide_credentials()
            .await
            .map_err(|error| {
                let source: Box<dyn std::error::Error + Send + Sync> = match error {
                    // A provider's error is most often the last resort, the instance metadata
                    // service, refusing a host that is not an instance (some networks answer
                    // its address with 403): nothing to wait for.
                    CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_)
                    | CredentialsError::ProviderError(_) => {
                        Box::new(NoCredentials(chain_text(&error)))
                    }
                    other => chain_text(&other).into(),
                };
                object_store::Error::Generic {
                    store: "S3",
                    source,
                }
            })?;
        let credential = Arc::new(AwsCredential {
            key_id: found.access_key_id().to_string(),
            secret_key: found.secret_access_key().to_string(),
            token: found.session_token().map(str::to_string),
        });
        *cached = Some((credential.clone(), found.expiry()));
        Ok(credential)
    }
}

/// The error and its causes in one line (the SDK's Display shows only the outermost).
fn chain_text(error: &CredentialsError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
