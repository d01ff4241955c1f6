#!/usr/bin/env bash
# Make a throw-away CA and certificates for trying Sandglass over TLS:
#   DIR/ca.pem                      the CA (agents: [tls] ca; receiver: [tls] client_ca)
#   DIR/receiver.pem, receiver.key  for the receiver, valid for NAMES
#   DIR/agent.pem, agent.key        a client certificate for agents
# Usage: scripts/make-test-ca.sh DIR [NAMES...]   (default names: localhost 127.0.0.1)
# For tests and trials only: the CA key sits beside the certificates. In
# production use your own CA (docs/tls.md).
set -euo pipefail
dir=${1:?usage: make-test-ca.sh DIR [NAMES...]}
shift
if [ $# -eq 0 ]; then names=(localhost 127.0.0.1); else names=("$@"); fi
command -v openssl >/dev/null || {
  echo "installing openssl" >&2
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
}
mkdir -p "$dir"
cd "$dir"
umask 077

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

# EC P-256 keys: small and fast, and rustls takes them.
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 825 -subj "/CN=Sandglass test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.pem 2>/dev/null

issue() { # name subject extensions
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 -sha256 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue receiver "${names[0]}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
issue agent "sandglass-agent" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
echo "test CA and certificates in $(pwd) for ${names[*]}"
