//! `colony certs`: a cluster CA and one certificate per node, for a test bed or a small
//! cluster (DESIGN §15). Owns only making and writing the files; using them is the TLS
//! layer's business.
//!
//! In `--out DIR`: `ca.pem` (the CA certificate every node and client trusts),
//! `ca-key.pem` (keep it off the nodes), and per `--node NAME:IP` `NAME.pem` and
//! `NAME-key.pem`. Keys are written mode 0600. A node certificate names its IP address as
//! its only subject alternative name (the address its peers check) and may serve and
//! authenticate as a client: nodes are both.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Flags of `colony certs`.
#[derive(Debug, Args, Clone)]
pub struct CertsArgs {
    /// Directory to write the CA and node certificates to (created if missing). Refuses
    /// if it already holds a `ca.pem`: a new CA would orphan the nodes of the old one.
    #[arg(long)]
    pub out: PathBuf,

    /// A node to certify, as NAME:IP (repeat for each node). NAME names the files
    /// (NAME.pem, NAME-key.pem); IP is the address the node's peers reach it at.
    #[arg(long = "node", required = true, value_name = "NAME:IP")]
    pub nodes: Vec<NodeSpec>,

    /// Days the certificates are valid for, from yesterday (some clock skew allowed).
    #[arg(long, default_value_t = 825)]
    pub days: u32,
}

/// A `--node NAME:IP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// File-name stem and certificate common name.
    pub name: String,
    /// The node's address, its certificate's IP SAN.
    pub ip: IpAddr,
}

/// Why a `--node` does not parse.
#[derive(Debug, thiserror::Error)]
pub enum NodeSpecError {
    /// No colon.
    #[error("{0:?} is not NAME:IP")]
    NoColon(String),
    /// A name that could not be a file name stem.
    #[error("node name {0:?}: use letters, digits, '.', '_' and '-' only")]
    BadName(String),
    /// Not an IP address.
    #[error("{0:?} is not an IP address")]
    BadIp(String),
}

impl FromStr for NodeSpec {
    type Err = NodeSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Split at the first colon: an IPv6 address has colons of its own.
        let (name, ip) = s
            .split_once(':')
            .ok_or_else(|| NodeSpecError::NoColon(s.to_owned()))?;
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid || name == "ca" || name.ends_with("-key") {
            return Err(NodeSpecError::BadName(name.to_owned()));
        }
        let ip = ip
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .map_err(|_| NodeSpecError::BadIp(ip.to_owned()))?;
        Ok(NodeSpec {
            name: name.to_owned(),
            ip,
        })
    }
}

/// Makes the CA and the node certificates and prints what it wrote.
///
/// # Errors
/// A repeated node name, an existing `ca.pem`, or a file that cannot be written.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let mut names: Vec<&str> = args.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!("node {:?} is named twice", pair[0]);
    }
    let ca_path = args.out.join("ca.pem");
    if ca_path.exists() {
        anyhow::bail!(
            "{} exists: refusing to make a new CA that its nodes would not trust (use a new --out)",
            ca_path.display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let ca_key = KeyPair::generate().context("cannot make the CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("Colony cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params, args.days)?;
    let ca_pem_key = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("cannot sign the CA")?;
    write(&args.out.join("ca-key.pem"), &ca_pem_key, true)?;
    write(&ca_path, &ca.pem(), false)?;
    println!(
        "CA: {}  (its key: ca-key.pem; keep it off the nodes)",
        ca_path.display()
    );

    for node in &args.nodes {
        let key = KeyPair::generate().context("cannot make a node key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&node.name);
        params.subject_alt_names = vec![SanType::IpAddress(node.ip)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, args.days)?;
        let cert = params
            .signed_by(&key, &ca)
            .with_context(|| format!("cannot sign {}'s certificate", node.name))?;
        let cert_path = args.out.join(format!("{}.pem", node.name));
        let key_path = args.out.join(format!("{}-key.pem", node.name));
        write(&key_path, &key.serialize_pem(), true)?;
        write(&cert_path, &cert.pem(), false)?;
        println!(
            "{} ({}): {} and {}",
            node.name,
            node.ip,
            cert_path.display(),
            key_path.display()
        );
    }
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `text` to `path`, readable only by its owner if `secret` (created so, never
/// widened afterwards).
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Sets `params` valid from yesterday (the nodes' clocks may lag a little) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    const DAY: u64 = 86_400;
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs()
        / DAY;
    let at = |day: u64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = at(today.saturating_sub(1));
    params.not_after = at(today + u64::from(days));
    Ok(())
}

/// The (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        i32::try_from(y).unwrap_or(i32::MAX),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_parse_and_bad_ones_say_why() {
        let n: NodeSpec = "backend-1:198.18.77.11".parse().unwrap();
        assert_eq!(n.name, "backend-1");
        assert_eq!(n.ip, "198.18.77.11".parse::<IpAddr>().unwrap());
        let v6: NodeSpec = "c:[::1]".parse().unwrap();
        assert_eq!(v6.ip, "::1".parse::<IpAddr>().unwrap());
        assert!(matches!(
            "x".parse::<NodeSpec>(),
            Err(NodeSpecError::NoColon(_))
        ));
        assert!(matches!(
            "../x:1.2.3.4".parse::<NodeSpec>(),
            Err(NodeSpecError::BadName(_))
        ));
        assert!(matches!(
            "ca:1.2.3.4".parse::<NodeSpec>(),
            Err(NodeSpecError::BadName(_))
        ));
        assert!(matches!(
            "x:host".parse::<NodeSpec>(),
            Err(NodeSpecError::BadIp(_))
        ));
    }

    #[test]
    fn day_counts_become_calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
    }
}
