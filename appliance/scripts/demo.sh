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
TOML

ctl() { "$bin/dojangctl" --config "$state/dojang.toml" "$@"; }
echo "== checking the configuration and the token"
"$bin/dojangd" validate --probe --config "$state/dojang.toml"

echo "== key ceremony: keys are generated inside the token and never leave it"
ctl keys list --json | grep -q '"label": "iaca-root"' || ctl keys generate --label iaca-root --purpose iaca
ctl keys list --json | grep -q '"label": "ds-mdoc-1"' || ctl keys generate --label ds-mdoc-1 --purpose document-signer
ctl keys list --json | grep -q '"label": "status-list-1"' || ctl keys generate --label status-list-1 --purpose status-list
ctl keys list --json | grep -q '"label": "audit-1"' || ctl keys generate --label audit-1 --purpose audit
ctl keys list --json | grep -q '"label": "pseudonym"' || ctl keys generate --label pseudonym --purpose pseudonym --alg HS256

echo
echo "== keys in the token"
ctl keys list
echo
echo "== the document signer's public key (what verifiers will get)"
ctl keys show ds-mdoc-1
echo
cat <<MSG
== try it yourself
  export SOFTHSM2_CONF=$SOFTHSM2_CONF
  $bin/dojangctl --config $state/dojang.toml keys generate --label ds-extra --purpose document-signer --alg ES384
  $bin/dojangctl --config $state/dojang.toml keys list --json
  make demo-clean      # remove the demo token and state
MSG
