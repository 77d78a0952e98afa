#!/usr/bin/env bash
# `make demo`: a first key ceremony on a fresh SoftHSM token under .demo/.
# A second run reuses the token and its keys; `make demo-clean` removes them.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
state="$root/.demo"
bin="$root/target/debug"

module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && module="$m" && break
done
[ -n "$module" ] || { echo "demo: SoftHSM module not found (make deps)"; exit 1; }

mkdir -p "$state/tokens"
chmod 700 "$state"
export SOFTHSM2_CONF="$state/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$state/tokens" > "$SOFTHSM2_CONF"
fi
if [ ! -f "$state/pin" ]; then
  # A random dev PIN, kept in a 0600 file: never on a command line or in the config.
  (umask 077; openssl rand -hex 8 > "$state/pin"; openssl rand -hex 8 > "$state/so-pin")
fi
if ! softhsm2-util --show-slots 2>/dev/null | grep -q "Label:.*dojang-demo"; then
  echo "== creating SoftHSM token 'dojang-demo' in $state/tokens"
  softhsm2-util --init-token --free --label dojang-demo \
    --pin "$(cat "$state/pin")" --so-pin "$(cat "$state/so-pin")" >/dev/null
fi
cat > "$state/dojang.toml" <<TOML
# Dojang dev configuration written by make demo.
[keys]
backend = "pkcs11"

[keys.pkcs11]
module = "$module"
token_label = "dojang-demo"
pin = { file = "$state/pin" }

[pki]
dir = "$state/pki"
country = "KR"
organization = "Dojang Demo Issuing Authority"
iaca_common_name = "Dojang Demo IACA"
issuer_alt_name = "https://dojang.example.kr"
crl_url = "https://dojang.example.kr/iaca.crl"

[credential]
issuer = "https://dojang.example.kr"
issuing_authority = "서울특별시 종로구청장"
TOML

ctl() { "$bin/dojangctl" --config "$state/dojang.toml" "$@"; }
echo "== checking the configuration and the token"
"$bin/dojangd" validate --probe --config "$state/dojang.toml"

echo "== key ceremony: IACA root and first document signer, keys born in the token"
if [ ! -f "$state/pki/iaca.pem" ]; then
  ctl pki init
else
  echo "(reusing $state/pki)"
fi
ctl keys list --json | grep -q '"label": "status-list-1"' || ctl keys generate --label status-list-1 --purpose status-list
ctl keys list --json | grep -q '"label": "audit-1"' || ctl keys generate --label audit-1 --purpose audit
ctl keys list --json | grep -q '"label": "pseudonym"' || ctl keys generate --label pseudonym --purpose pseudonym --alg HS256

echo
echo "== keys in the token"
ctl keys list
echo
echo "== certificates"
openssl x509 -in "$state/pki/iaca.pem" -noout -subject -dates
openssl verify -CAfile "$state/pki/iaca.pem" "$state/pki/ds/ds-1.pem"

for format in mdoc sd-jwt; do
  echo
  echo "== a sample $format credential for 홍길동 (fictional), signed in the token"
  ctl credential sample --format "$format" > "$state/sample.$format"
  cut -c1-160 "$state/sample.$format"; echo "…"
  echo "-- verified offline against the IACA:"
  "$bin/dojangctl" verify --iaca "$state/pki/iaca.pem" "$state/sample.$format"
done
echo
cat <<MSG
== try it yourself
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  $bin/dojangctl --config $state/dojang.toml credential sample --format sd-jwt > my.sd-jwt
  $bin/dojangctl verify --iaca $state/pki/iaca.pem my.sd-jwt
  $bin/dojangctl --config $state/dojang.toml pki issue-ds --label ds-2
  $bin/dojangctl --config $state/dojang.toml keys list
  make demo-clean      # remove the demo token and state
MSG
