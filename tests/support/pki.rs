//! Test certificates: a CA and the certificates it issues (rcgen), as PEM.

/// A certificate authority: its issuer (to sign with) and its certificate (PEM).
pub(crate) struct Ca {
    pub(crate) issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub(crate) pem: String,
}

/// A new self-signed CA named `name`.
pub(crate) fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A certificate (PEM) and its key (PEM) issued by `ca`, named `name`, for the subject
/// alternative names `sans` (none: a client certificate).
pub(crate) fn leaf(ca: &Ca, name: &str, sans: &[&str]) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(sans).expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("certificate");
    (cert.pem(), key.serialize_pem())
}
