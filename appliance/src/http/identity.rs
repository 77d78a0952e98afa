//! Who a client is: the one identity its certificate carries, a URI SAN
//! (e.g. a SPIFFE id) or else a DNS SAN. A certificate naming several (two
//! URIs, a URI and a DNS name) is refused rather than read one way: which
//! name counts must not depend on their order. Wildcards and names of the
//! wrong shape for their type are refused, so a DNS SAN can never pass for
//! a URI identity in the policy. The subject DN is never used, since CAs
//! rarely constrain it.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate gives no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIdentity {
    /// No URI or DNS subject alternative name.
    Missing,
    /// More than one URI or DNS name: ambiguous.
    Several,
    /// A wildcard, or a name not of its type's shape.
    Malformed,
}

impl NoIdentity {
    /// The problem code and the detail a client is told.
    pub fn explain(self) -> (&'static str, &'static str) {
        match self {
            NoIdentity::Missing => (
                "no_client_identity",
                "the client certificate has no URI or DNS subject alternative name",
            ),
            NoIdentity::Several => (
                "ambiguous_client_identity",
                "the client certificate names more than one URI or DNS subject alternative name; it must carry exactly one identity",
            ),
            NoIdentity::Malformed => (
                "malformed_client_identity",
                "the client certificate's identity is a wildcard or not a well-formed URI or DNS name",
            ),
        }
    }
}

/// The identity in a client's end-entity certificate (DER).
pub fn client_identity(certificate_der: &[u8]) -> Result<String, NoIdentity> {
    let (_, cert) = X509Certificate::from_der(certificate_der).map_err(|_| NoIdentity::Missing)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| NoIdentity::Malformed)?
        .ok_or(NoIdentity::Missing)?;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some((*u, true)),
        GeneralName::DNSName(d) => Some((*d, false)),
        _ => None,
    });
    let (name, is_uri) = names.next().ok_or(NoIdentity::Missing)?;
    if names.next().is_some() {
        return Err(NoIdentity::Several);
    }
    let well_formed = if is_uri {
        uri_shaped(name)
    } else {
        dns_shaped(name)
    };
    if well_formed {
        Ok(name.to_owned())
    } else {
        Err(NoIdentity::Malformed)
    }
}

/// Which CA issued a client's certificate, as far as roles care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCa {
    /// One client CA for every role (no `officer_ca` configured).
    Shared,
    /// The services' CA (`client_ca`) when officers have their own.
    Services,
    /// The officers' own CA (`officer_ca`).
    Officers,
}

/// Which CA issued `certificate_der`, given the officers' CA certificates
/// (none: one CA for all). The handshake already verified the chain to one
/// of the trusted CAs; this only tells the two apart, by signature.
pub fn issuing_ca(certificate_der: &[u8], officer_cas: &[openssl::x509::X509]) -> ClientCa {
    if officer_cas.is_empty() {
        return ClientCa::Shared;
    }
    let Ok(leaf) = openssl::x509::X509::from_der(certificate_der) else {
        return ClientCa::Services;
    };
    let by_officer_ca = officer_cas.iter().any(|ca| {
        ca.public_key()
            .and_then(|key| leaf.verify(&key))
            .unwrap_or(false)
    });
    if by_officer_ca {
        ClientCa::Officers
    } else {
        ClientCa::Services
    }
}

/// `scheme://authority/path`: ASCII, no wildcard, no whitespace.
fn uri_shaped(name: &str) -> bool {
    let Some((scheme, rest)) = name.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'*')
}

/// A host name: dot-separated labels of letters, digits and hyphens (no
/// wildcard, no scheme), each 1 to 63 long.
fn dns_shaped(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::X509Builder;
    use openssl::x509::extension::SubjectAlternativeName;

    /// A certificate with these SANs (`URI:…`, `DNS:…`, `email:…`).
    fn cert(sans: &[&str]) -> Vec<u8> {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_pubkey(&key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        let later = openssl::asn1::Asn1Time::days_from_now(1).unwrap();
        b.set_not_before(&now).unwrap();
        b.set_not_after(&later).unwrap();
        if !sans.is_empty() {
            let mut san = SubjectAlternativeName::new();
            for entry in sans {
                let _ = match entry.split_once(':') {
                    Some(("URI", v)) => san.uri(v),
                    Some(("DNS", v)) => san.dns(v),
                    Some(("email", v)) => san.email(v),
                    _ => panic!("{entry}"),
                };
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn one_uri_or_one_dns_name_is_the_identity() {
        assert_eq!(
            client_identity(&cert(&["URI:spiffe://mois.go.kr/gw"])).as_deref(),
            Ok("spiffe://mois.go.kr/gw")
        );
        assert_eq!(
            client_identity(&cert(&["DNS:gw.example.kr"])).as_deref(),
            Ok("gw.example.kr")
        );
        // Other name types (an email) are not identities and do not count.
        assert_eq!(
            client_identity(&cert(&[
                "URI:spiffe://mois.go.kr/gw",
                "email:ops@example.kr"
            ]))
            .as_deref(),
            Ok("spiffe://mois.go.kr/gw")
        );
    }

    #[test]
    fn several_missing_wildcard_and_malformed_names_are_refused() {
        for (sans, refused) in [
            (
                &["URI:spiffe://a/x", "URI:spiffe://a/y"][..],
                NoIdentity::Several,
            ),
            (
                &["URI:spiffe://a/x", "DNS:gw.example.kr"][..],
                NoIdentity::Several,
            ),
            (
                &["DNS:a.example.kr", "DNS:b.example.kr"][..],
                NoIdentity::Several,
            ),
            (&[][..], NoIdentity::Missing),
            (&["email:ops@example.kr"][..], NoIdentity::Missing),
            (&["DNS:*.example.kr"][..], NoIdentity::Malformed),
            (&["URI:spiffe://mois.go.kr/*"][..], NoIdentity::Malformed),
            (
                &["DNS:spiffe://mois.go.kr/officer/kim"][..],
                NoIdentity::Malformed,
            ),
            (&["URI:mois.go.kr"][..], NoIdentity::Malformed),
        ] {
            assert_eq!(client_identity(&cert(sans)), Err(refused), "{sans:?}");
        }
    }
}
