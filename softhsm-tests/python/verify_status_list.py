"""Read a Dojang status-list token, either form, with libraries we did not
write (cbor2 and cryptography for the CWT form, jwcrypto for the JWT form).

usage: verify_status_list.py cwt|jwt TOKEN_FILE STATUS_JWKS_FILE INDEX [IACA_PEM]
Exit 0 and print {"sub", "iat", "exp", "ttl", "bits", "size", "status",
"chain"} as JSON if the signature verifies; exit 1 otherwise. Without
IACA_PEM the key comes from the JWKS (by kid); with it, only from the
certificate the token carries (x5c / x5chain), which must be one the IACA
issued for signing status lists: valid now, digitalSignature, not a CA, and
never the mdoc document-signer purpose.
"""
import datetime
import base64
import json
import sys
import zlib

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography import x509
from jwcrypto import jwk, jws


def ec_key(entry):
    """A P-256/P-384 public key from a JWK."""
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[entry["crv"]]
    number = lambda c: int.from_bytes(base64.urlsafe_b64decode(entry[c] + "=="), "big")
    return ec.EllipticCurvePublicNumbers(number("x"), number("y"), curve).public_key()


MDL_DS = x509.ObjectIdentifier("1.0.18013.5.1.2")


def chained_key(der, iaca):
    """The public key of `der`, a status-list signer certificate the IACA issued."""
    cert = x509.load_der_x509_certificate(der)
    cert.verify_directly_issued_by(iaca)
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ValueError("the status-list certificate is not valid now")
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    if not usage.digital_signature or usage.key_cert_sign:
        raise ValueError("the certificate is not for signing")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise ValueError("the certificate is a CA")
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if MDL_DS in eku:
            raise ValueError("a document signer's certificate, not a status-list signer's")
    except x509.ExtensionNotFound:
        pass
    return cert.public_key()


def read_cwt(raw, keys, iaca):
    tagged = cbor2.loads(raw)
    sign1 = tagged.value if isinstance(tagged, cbor2.CBORTag) else tagged
    if isinstance(tagged, cbor2.CBORTag) and tagged.tag != 18:
        raise ValueError("not a COSE_Sign1 tag")
    protected, _unprotected, payload, signature = sign1
    header = cbor2.loads(protected)
    if header.get(16) != "application/statuslist+cwt":
        raise ValueError("typ is not application/statuslist+cwt")
    if header.get(1) != -7:
        raise ValueError("alg is not ES256")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    half = len(signature) // 2
    der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                               int.from_bytes(signature[half:], "big"))
    if iaca is not None:
        chain = header.get(33)
        if chain is None:
            raise ValueError("no x5chain to the IACA")
        leaf = chain[0] if isinstance(chain, list) else chain
        chained_key(leaf, iaca).verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
    else:
        for entry in keys:
            try:
                ec_key(entry).verify(der, to_be_signed, ec.ECDSA(hashes.SHA256()))
                break
            except Exception:
                continue
        else:
            raise ValueError("no status key verifies the signature")
    claims = cbor2.loads(payload)
    status_list = claims[65533]
    return {"sub": claims[2], "iat": claims[6], "exp": claims[4], "ttl": claims.get(65534),
            "bits": status_list["bits"], "lst": status_list["lst"]}


def read_jwt(raw, keys, iaca):
    token = jws.JWS()
    token.deserialize(raw.decode().strip())
    header = token.jose_header
    if header.get("typ") != "statuslist+jwt":
        raise ValueError("typ is not statuslist+jwt")
    if iaca is not None:
        if not header.get("x5c"):
            raise ValueError("no x5c to the IACA")
        public = chained_key(base64.b64decode(header["x5c"][0]), iaca)
        token.verify(jwk.JWK.from_pyca(public), alg=header["alg"])
    else:
        key = next(k for k in keys if k.get("kid") == header.get("kid"))
        token.verify(jwk.JWK(**key), alg=header["alg"])
    claims = json.loads(token.payload)
    status_list = claims["status_list"]
    lst = base64.urlsafe_b64decode(status_list["lst"] + "=" * (-len(status_list["lst"]) % 4))
    return {"sub": claims["sub"], "iat": claims["iat"], "exp": claims["exp"],
            "ttl": claims.get("ttl"), "bits": status_list["bits"], "lst": lst}


def main() -> int:
    form, token_file, jwks_file, index = sys.argv[1:5]
    iaca = None
    if len(sys.argv) > 5:
        iaca = x509.load_pem_x509_certificate(open(sys.argv[5], "rb").read())
    raw = open(token_file, "rb").read()
    keys = json.load(open(jwks_file))["keys"]
    try:
        read = (read_cwt if form == "cwt" else read_jwt)(raw, keys, iaca)
    except Exception as exc:
        print(json.dumps({"valid": False, "error": repr(exc)}))
        return 1
    packed = zlib.decompress(read.pop("lst"))
    bits, i = read["bits"], int(index)
    per_byte = 8 // bits
    status = (packed[i // per_byte] >> ((i % per_byte) * bits)) & ((1 << bits) - 1)
    chain = "iaca" if iaca is not None else "jwks"
    print(json.dumps({"valid": True, "size": len(packed) * per_byte, "status": status,
                      "chain": chain, **read}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
