//! `adpipe health`: the container health check. Asks a service's admin
//! endpoint (`/livez` by default) and exits 0 on a 2xx answer, 1 otherwise.
//!
//! Without a URL it finds the admin address where the service in the same
//! container was told to listen — `ADPIPE__HTTP__LISTEN` (every worker), else
//! `ADPIPE_REGISTRY_LISTEN` (the schema registry) — so one `HEALTHCHECK` in
//! the image serves every service, and needs no curl in the image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// Where to ask.
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The URL to ask; by default `/livez` on the admin address of this
    /// container's service (from ADPIPE__HTTP__LISTEN or
    /// ADPIPE_REGISTRY_LISTEN).
    pub url: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The environment variables that name a service's admin address, in order.
pub const LISTEN_VARIABLES: [&str; 2] = ["ADPIPE__HTTP__LISTEN", "ADPIPE_REGISTRY_LISTEN"];

/// The URL `adpipe health` asks given the environment `lookup`: `/livez` on
/// the first listen address set (a wildcard address asked on loopback).
pub fn default_url(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let (variable, value) = LISTEN_VARIABLES
        .iter()
        .find_map(|name| lookup(name).map(|value| (*name, value)))
        .with_context(|| {
            format!(
                "no URL given and none of {} is set",
                LISTEN_VARIABLES.join(", ")
            )
        })?;
    let mut address: SocketAddr = value
        .trim()
        .parse()
        .with_context(|| format!("{variable}={value:?} is not an address:port"))?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    if address.port() == 0 {
        bail!("{variable}={value:?} asks for any free port: give `adpipe health` the URL");
    }
    Ok(format!("http://{address}/livez"))
}

/// Asks once; `Err` names what failed.
pub async fn run(args: &HealthArgs) -> anyhow::Result<()> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => default_url(|name| std::env::var(name).ok())?,
    };
    let response = reqwest::Client::builder()
        .timeout(args.timeout)
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url}: no answer"))?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    /// A one-shot HTTP server answering every request with `status`.
    async fn serve(status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}/livez")
    }

    fn asking(url: String) -> HealthArgs {
        HealthArgs {
            url: Some(url),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn healthy_on_2xx_and_unhealthy_on_an_error_status_or_no_answer() {
        run(&asking(serve("200 OK").await))
            .await
            .expect("a 200 is healthy");
        let error = run(&asking(serve("503 Service Unavailable").await))
            .await
            .expect_err("unhealthy");
        assert!(error.to_string().contains("503"), "{error}");
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address")
        };
        let error = run(&asking(format!("http://{closed}/livez")))
            .await
            .expect_err("unhealthy");
        assert!(error.to_string().contains("no answer"), "{error}");
    }

    #[test]
    fn a_worker_is_asked_on_loopback_at_its_admin_port() {
        let url =
            default_url(lookup(&[("ADPIPE__HTTP__LISTEN", "0.0.0.0:9102")])).expect("an address");
        assert_eq!(url, "http://127.0.0.1:9102/livez");
    }

    #[test]
    fn the_registry_is_asked_at_its_own_listen_address() {
        let url =
            default_url(lookup(&[("ADPIPE_REGISTRY_LISTEN", "[::]:8081")])).expect("an address");
        assert_eq!(url, "http://[::1]:8081/livez");
    }

    #[test]
    fn without_an_address_or_with_port_zero_it_says_what_is_missing() {
        let error = default_url(lookup(&[]))
            .expect_err("nothing set")
            .to_string();
        assert!(error.contains("ADPIPE__HTTP__LISTEN"), "{error}");
        let error = default_url(lookup(&[("ADPIPE__HTTP__LISTEN", "127.0.0.1:0")]))
            .expect_err("refused")
            .to_string();
        assert!(error.contains("free port"), "{error}");
    }
}
