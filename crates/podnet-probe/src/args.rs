//! The command line: `podnet probe serve|get|tcp|udp`, and the parsers for its values.
//!
//! Values are parsed into types here so that a malformed URL, target or duration is a clap
//! usage error, reported before anything touches the network.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// The port `serve` listens on for HTTP when no listener is asked for.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// The lab's test workload: servers that say who answered and who asked, and clients that
/// count the answers.
#[derive(Subcommand, Debug, Clone)]
pub enum ProbeCommand {
    /// Serve HTTP (/hostname, /clientip, /healthz), TCP echo and UDP echo on 0.0.0.0.
    Serve(ServeArgs),
    /// Send HTTP GETs, each on a new connection.
    Get(GetArgs),
    /// Open TCP connections, each sending one line and reading one reply line.
    Tcp(TcpArgs),
    /// Send UDP datagrams from one socket, each waiting for its reply.
    Udp(UdpArgs),
}

/// `serve [--http PORT] [--tcp-echo PORT] [--udp-echo PORT]`.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeArgs {
    /// HTTP port (8080 when no listener is given at all).
    #[arg(long, value_name = "PORT")]
    pub http: Option<u16>,
    /// TCP echo port: each line is answered with `<hostname> <client-ip>:<port> <line>`.
    #[arg(long, value_name = "PORT")]
    pub tcp_echo: Option<u16>,
    /// UDP echo port: each datagram is answered with `<hostname> <client-ip>:<port> <payload>`.
    #[arg(long, value_name = "PORT")]
    pub udp_echo: Option<u16>,
}

impl ServeArgs {
    /// The HTTP port to listen on: the one given, or the default when no listener is given.
    pub fn http_port(&self) -> Option<u16> {
        match (self.http, self.tcp_echo, self.udp_echo) {
            (None, None, None) => Some(DEFAULT_HTTP_PORT),
            (http, _, _) => http,
        }
    }
}

/// The options every client shares.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// How many requests to send.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Pause between two requests (e.g. `100ms`, `1s`).
    #[arg(long, default_value = "0s", value_parser = parse_duration, value_name = "DUR")]
    pub interval: Duration,
    /// How long each request may take, connecting included (e.g. `500ms`, `2s`).
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Text, value_name = "FORMAT")]
    pub output: OutputFormat,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            count: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(2),
            output: OutputFormat::Text,
        }
    }
}

/// `get URL [options]`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct GetArgs {
    /// `http://HOST[:PORT]/PATH` (the scheme may be left out).
    pub url: HttpUrl,
    #[command(flatten)]
    pub opts: ClientOptions,
}

/// `tcp HOST:PORT [options] [--message TEXT]`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TcpArgs {
    /// `HOST:PORT`, `[IPv6]:PORT` for an IPv6 address.
    pub target: HostPort,
    /// The line to send (a newline is added).
    #[arg(long, short = 'm', default_value = "hello")]
    pub message: String,
    #[command(flatten)]
    pub opts: ClientOptions,
}

/// `udp HOST:PORT [options] [--message TEXT]`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct UdpArgs {
    /// `HOST:PORT`, `[IPv6]:PORT` for an IPv6 address.
    pub target: HostPort,
    /// The payload to send (a sequence number is added to match replies to requests).
    #[arg(long, short = 'm', default_value = "hello")]
    pub message: String,
    #[command(flatten)]
    pub opts: ClientOptions,
}

/// How a client reports.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// For a person: the answer alone, or every attempt and a summary.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// A duration such as `100ms`, `2s` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (expected e.g. 100ms, 2s)"))
}

/// A duration greater than zero: a zero timeout could never be met.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".to_string()),
        d => Ok(d),
    }
}

/// A host (name or address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an address; an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `(host, port)`, the form tokio resolves.
    pub fn as_pair(&self) -> (&str, u16) {
        (&self.host, self.port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port number"))?;
        let host = match host.strip_prefix('[') {
            Some(rest) => rest
                .strip_suffix(']')
                .ok_or_else(|| format!("{s:?}: unclosed '[' around an IPv6 address"))?,
            // A bare IPv6 address is ambiguous ("::1:80"): require the brackets.
            None if host.contains(':') => {
                return Err(format!("{s:?}: write an IPv6 address as [ADDRESS]:PORT"))
            }
            None => host,
        };
        if host.is_empty() {
            return Err(format!("{s:?}: the host is missing"));
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

/// A plain-HTTP URL, split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Where to connect.
    pub target: HostPort,
    /// The `Host` header: the authority as written.
    pub authority: String,
    /// The request target, `/` at least.
    pub path_and_query: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path_and_query)
    }
}

impl FromStr for HttpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // `get 10.96.0.10/hostname` is what people type: default to http.
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let uri: hyper::Uri = with_scheme
            .parse()
            .map_err(|e| format!("{s:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(format!("{s:?}: only http is supported, not {other}")),
            None => return Err(format!("{s:?}: the scheme is missing")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{s:?}: the host is missing"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{s:?}: user information is not supported"));
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{s:?}: the host is missing"));
        }
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/");
        Ok(HttpUrl {
            target: HostPort {
                host: host.to_string(),
                port: authority.port_u16().unwrap_or(80),
            },
            authority: authority.as_str().to_string(),
            path_and_query: path_and_query.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: ProbeCommand,
    }

    fn parse(args: &[&str]) -> Result<ProbeCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("probe").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn serve_defaults_to_http_8080_only_without_listeners() {
        let ProbeCommand::Serve(a) = parse(&["serve"]).expect("parses") else {
            panic!("not serve")
        };
        assert_eq!(a.http_port(), Some(8080));
        assert_eq!((a.tcp_echo, a.udp_echo), (None, None));

        let ProbeCommand::Serve(a) = parse(&["serve", "--udp-echo", "5353"]).expect("parses")
        else {
            panic!("not serve")
        };
        assert_eq!(a.http_port(), None);
        assert_eq!(a.udp_echo, Some(5353));

        let ProbeCommand::Serve(a) = parse(&[
            "serve",
            "--http",
            "80",
            "--tcp-echo",
            "7",
            "--udp-echo",
            "7",
        ])
        .expect("parses") else {
            panic!("not serve")
        };
        assert_eq!(
            (a.http_port(), a.tcp_echo, a.udp_echo),
            (Some(80), Some(7), Some(7))
        );
    }

    #[test]
    fn get_options_and_defaults() {
        let ProbeCommand::Get(a) = parse(&["get", "http://web/hostname"]).expect("parses") else {
            panic!("not get")
        };
        assert_eq!(a.opts, ClientOptions::default());
        assert_eq!(a.url.to_string(), "http://web/hostname");

        let ProbeCommand::Get(a) = parse(&[
            "get",
            "10.96.0.10:8080/clientip",
            "--count",
            "5",
            "--interval",
            "100ms",
            "--timeout",
            "1s",
            "-o",
            "json",
        ])
        .expect("parses") else {
            panic!("not get")
        };
        assert_eq!(a.opts.count, 5);
        assert_eq!(a.opts.interval, Duration::from_millis(100));
        assert_eq!(a.opts.timeout, Duration::from_secs(1));
        assert_eq!(a.opts.output, OutputFormat::Json);
        assert_eq!(a.url.target.as_pair(), ("10.96.0.10", 8080));
    }

    #[test]
    fn tcp_and_udp_take_a_message() {
        let ProbeCommand::Tcp(a) = parse(&["tcp", "web:7", "--message", "hi there"]).expect("ok")
        else {
            panic!("not tcp")
        };
        assert_eq!(
            (a.target.as_pair(), a.message.as_str()),
            (("web", 7), "hi there")
        );
        let ProbeCommand::Udp(a) = parse(&["udp", "[fd00::1]:53", "-c", "3"]).expect("ok") else {
            panic!("not udp")
        };
        assert_eq!(a.target.as_pair(), ("fd00::1", 53));
        assert_eq!((a.message.as_str(), a.opts.count), ("hello", 3));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for bad in [
            &["get", "https://web/"][..],
            &["get", "http://web/", "--count", "0"],
            &["get", "http://web/", "--timeout", "0s"],
            &["get", "http://web/", "--interval", "soon"],
            &["get", "http://web/", "-o", "yaml"],
            &["tcp", "web"],
            &["tcp", "web:http"],
            &["udp", "::1:53"],
            &["udp", ":53"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn urls() {
        let u: HttpUrl = "http://[::1]:8080/clientip?x=1".parse().expect("parses");
        assert_eq!(u.target.as_pair(), ("::1", 8080));
        assert_eq!(u.authority, "[::1]:8080");
        assert_eq!(u.path_and_query, "/clientip?x=1");
        assert_eq!(u.to_string(), "http://[::1]:8080/clientip?x=1");

        let u: HttpUrl = "web.default.svc".parse().expect("parses");
        assert_eq!(u.target.as_pair(), ("web.default.svc", 80));
        assert_eq!(u.path_and_query, "/");
        assert_eq!(u.to_string(), "http://web.default.svc/");

        assert!("http://user@web/".parse::<HttpUrl>().is_err());
    }

    #[test]
    fn host_ports() {
        let hp: HostPort = "10.244.1.5:7".parse().expect("parses");
        assert_eq!(hp.to_string(), "10.244.1.5:7");
        let hp: HostPort = "[fd00::5]:7".parse().expect("parses");
        assert_eq!(hp.to_string(), "[fd00::5]:7");
        assert!("[fd00::5:7".parse::<HostPort>().is_err());
        assert!("web:70000".parse::<HostPort>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_positive_duration("0ms").is_err());
        assert!(parse_duration("2").is_err());
    }
}
