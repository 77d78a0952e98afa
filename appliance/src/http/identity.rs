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

/// Which CA a client's chain (leaf first, as presented) comes from, given
/// the officers' CA certificates (none: one CA for all). The handshake
/// already verified the chain to one of the trusted CAs; this tells the two
/// apart by walking up from the leaf through the presented certificates
/// that actually signed the one below: the chain is the officers' if that
/// path reaches a certificate an officers' CA key signed. Certificates a
/// client merely appends (the officers' CA itself, say) are not on the
/// path and count for nothing. The two CAs never share a key (refused when
/// the TLS files load).
pub fn issuing_ca(chain: &[impl AsRef<[u8]>], officer_cas: &[openssl::x509::X509]) -> ClientCa {
    use openssl::x509::X509;
    if officer_cas.is_empty() {
        return ClientCa::Shared;
    }
    let signed_by = |cert: &X509, by: &X509| {
        by.public_key()
            .and_then(|key| cert.verify(&key))
            .unwrap_or(false)
    };
    let certs: Vec<X509> = chain
        .iter()
        .filter_map(|d| X509::from_der(d.as_ref()).ok())
        .collect();
    let Some(mut current) = certs.first() else {
        return ClientCa::Services;
    };
    for _ in 0..certs.len() {
        if officer_cas.iter().any(|ca| signed_by(current, ca)) {
            return ClientCa::Officers;
        }
        match certs
            .iter()
            .skip(1)
            .find(|c| !std::ptr::eq(*c, current) && signed_by(current, c))
        {
            Some(issuer) => current = issuer,
            None => break,
        }
    }
    ClientCa::Services
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

    fn key() -> PKey<openssl::pkey::Private> {
        PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap()
    }

    /// A certificate for `subject`'s key signed by `issuer` (names do not
    /// matter here: the walk follows signatures).
    fn issued(
        subject: &PKey<openssl::pkey::Private>,
        issuer: &PKey<openssl::pkey::Private>,
    ) -> openssl::x509::X509 {
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_pubkey(subject).unwrap();
        b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(issuer, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn the_officers_ca_is_told_by_the_path_the_leaf_was_signed_along() {
        let (officer_ca_key, services_ca_key) = (key(), key());
        let officer_ca = issued(&officer_ca_key, &officer_ca_key);
        let services_ca = issued(&services_ca_key, &services_ca_key);
        let cas = [officer_ca.clone()];
        let der = |c: &openssl::x509::X509| c.to_der().unwrap();
        let leaf_key = key();
        // Signed by the officers' CA, directly or through its intermediate.
        let direct = der(&issued(&leaf_key, &officer_ca_key));
        assert_eq!(issuing_ca(&[&direct], &cas), ClientCa::Officers);
        let intermediate_key = key();
        let intermediate = der(&issued(&intermediate_key, &officer_ca_key));
        let below = der(&issued(&leaf_key, &intermediate_key));
        assert_eq!(
            issuing_ca(&[&below, &intermediate], &cas),
            ClientCa::Officers
        );
        // A services leaf stays the services' even with the officers' CA
        // (or an officer's intermediate) appended: not on its path.
        let services = der(&issued(&leaf_key, &services_ca_key));
        let appended = [&services[..], &der(&officer_ca), &intermediate];
        assert_eq!(issuing_ca(&appended, &cas), ClientCa::Services);
        assert_eq!(
            issuing_ca(&[&services, &der(&services_ca)], &cas),
            ClientCa::Services
        );
        // No officers' CA configured: one CA for all.
        assert_eq!(issuing_ca(&[&direct], &[]), ClientCa::Shared);
    }
}
