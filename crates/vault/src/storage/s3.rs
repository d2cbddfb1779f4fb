//! A repository in an S3-compatible bucket, through Apache Arrow's `object_store`.
//!
//! Blocking calls over a private tokio runtime, so the vault stays synchronous (rayon threads
//! call it). Requests time out and are retried with exponential backoff a bounded number of
//! times (a server that is down, answers 5xx or stalls gives a clear error after that, and
//! nothing half-written: an S3 PUT is atomic). Path-style addressing, as every
//! S3-compatible server takes it. No conditional request is relied upon.

use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::{check_name, Kind, Storage};
use crate::{Error, Result};

/// Retries of a failed request before the error is returned.
pub const MAX_RETRIES: usize = 4;

/// A bucket (and a prefix in it).
pub struct S3Storage {
    store: AmazonS3,
    bucket: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl S3Storage {
    /// `bucket[/prefix]`, with the endpoint, region and credentials of the usual AWS
    /// environment variables (`AWS_ENDPOINT_URL`, `AWS_REGION` or `AWS_DEFAULT_REGION`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub fn from_env(bucket_and_prefix: &str) -> Result<S3Storage> {
        let (bucket, prefix) = match bucket_and_prefix.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (bucket_and_prefix, ""),
        };
        if bucket.is_empty() {
            return Err(Error::Invalid("s3://: no bucket named".into()));
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .with_region(
                env("AWS_REGION")
                    .or_else(|| env("AWS_DEFAULT_REGION"))
                    .unwrap_or_else(|| "us-east-1".into()),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: MAX_RETRIES,
                retry_timeout: Duration::from_secs(60),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60))
                    .with_allow_http(true),
            );
        if let Some(e) = env("AWS_ENDPOINT_URL").or_else(|| env("AWS_ENDPOINT")) {
            b = b.with_endpoint(e);
        }
        if let Some(k) = env("AWS_ACCESS_KEY_ID") {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = env("AWS_SECRET_ACCESS_KEY") {
            b = b.with_secret_access_key(s);
        }
        if let Some(t) = env("AWS_SESSION_TOKEN") {
            b = b.with_token(t);
        }
        let store = b.build().map_err(|e| Error::Storage {
            op: "open",
            object: format!("s3://{bucket_and_prefix}"),
            reason: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::io("tokio runtime"))?;
        Ok(S3Storage {
            store,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            rt,
        })
    }

    fn key(&self, kind: Kind, name: &str) -> Result<ObjPath> {
        check_name(kind, name)?;
        let mut parts: Vec<&str> = Vec::new();
        if !self.prefix.is_empty() {
            parts.push(&self.prefix);
        }
        let shard;
        match kind {
            Kind::Config => {}
            Kind::Data => {
                parts.push("data");
                shard = name[..2].to_string();
                parts.push(&shard);
            }
            k => parts.push(k.dir()),
        }
        parts.push(name);
        Ok(ObjPath::from(parts.join("/")))
    }

    fn list_prefix(&self, kind: Kind) -> ObjPath {
        let mut p = self.prefix.clone();
        if !kind.dir().is_empty() {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(kind.dir());
        }
        ObjPath::from(p)
    }

    fn err(&self, op: &'static str, kind: Kind, name: &str, e: object_store::Error) -> Error {
        if matches!(e, object_store::Error::NotFound { .. }) {
            return Error::Missing {
                object: kind.show(name),
            };
        }
        // object_store's messages carry the URL (bucket and key), never credentials.
        Error::Storage {
            op,
            object: format!("s3://{}/{}", self.bucket, kind.show(name)),
            reason: e.to_string(),
        }
    }
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<()> {
        let key = self.key(kind, name)?;
        let payload = bytes::Bytes::copy_from_slice(data);
        self.rt
            .block_on(self.store.put(&key, payload.into()))
            .map(|_| ())
            .map_err(|e| self.err("put", kind, name, e))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        self.rt
            .block_on(async { self.store.get(&key).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.err("get", kind, name, e))
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let key = self.key(kind, name)?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::corrupt(kind.show(name), "range overflows"))?;
        let b = self
            .rt
            .block_on(self.store.get_range(&key, offset..end))
            .map_err(|e| self.err("get", kind, name, e))?;
        if b.len() as u64 != len {
            return Err(Error::corrupt(
                kind.show(name),
                format!("asked {len} bytes at {offset}, got {}", b.len()),
            ));
        }
        Ok(b.to_vec())
    }

    fn list(&self, kind: Kind) -> Result<Vec<(String, u64)>> {
        let prefix = self.list_prefix(kind);
        let metas: Vec<object_store::ObjectMeta> = self
            .rt
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(|e| Error::Storage {
                op: "list",
                object: format!("s3://{}/{}/", self.bucket, kind.dir()),
                reason: e.to_string(),
            })?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                // `config` lists every key under the prefix: keep the one object only.
                let depth_ok = match kind {
                    Kind::Config => m.location.as_ref() == self.key(kind, "config").ok()?.as_ref(),
                    _ => true,
                };
                (depth_ok && check_name(kind, &name).is_ok()).then_some((name, m.size))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<()> {
        let key = self.key(kind, name)?;
        match self.rt.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", kind, name, e)),
        }
    }
}
