//! Who a client is: the URI SAN of its certificate (e.g. a SPIFFE id), else
//! its first DNS SAN. The policy maps identities to roles; the subject DN is
//! never used, since CAs rarely constrain it.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity in a client's end-entity certificate (DER), if it has one.
pub fn client_identity(certificate_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(certificate_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let names = &san.value.general_names;
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let dns = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    uri.or(dns)
        .filter(|s| !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
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

    fn cert(uri: Option<&str>, dns: Option<&str>) -> Vec<u8> {
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
        if uri.is_some() || dns.is_some() {
            let mut san = SubjectAlternativeName::new();
            if let Some(d) = dns {
                let _ = san.dns(d);
            }
            if let Some(u) = uri {
                let _ = san.uri(u);
            }
            let ext = san.build(&b.x509v3_context(None, None)).unwrap();
            b.append_extension(ext).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build().to_der().unwrap()
    }

    #[test]
    fn uri_san_wins_over_dns() {
        let der = cert(Some("spiffe://mois.go.kr/gw"), Some("gw.example.kr"));
        assert_eq!(
            client_identity(&der).as_deref(),
            Some("spiffe://mois.go.kr/gw")
        );
    }

    #[test]
    fn dns_san_when_no_uri_and_none_without_san() {
        assert_eq!(
            client_identity(&cert(None, Some("gw.example.kr"))).as_deref(),
            Some("gw.example.kr")
        );
        assert_eq!(client_identity(&cert(None, None)), None);
    }
}
