#!/usr/bin/env bash
# Rebuild tests/fixtures/kyutai-web-client/ (Kyutai's web client, built unchanged) from a checkout
# of kyutai-labs/moshi: a work tree or a bare git directory (its HEAD).
#
#   scripts/build_kyutai_web_client.sh /path/to/moshi        # needs node 20 and npm's registry
#
# Their `client/` is copied out, installed from its lock file (`npm ci`) and built with their own
# script (`npm run build`: tsc, then vite); the fixture gets their built `dist` (as web/), their
# LICENSE, the commit and the bundled packages' licenses. Their build is reproducible: rebuilding
# from the same commit gives the same files (`git status` shows none changed).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=${1:?usage: $0 KYUTAI_MOSHI_CHECKOUT (a work tree or a git directory)}
out=tests/fixtures/kyutai-web-client
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -f "$checkout/client/package.json" ]; then
  cp -r "$checkout/client" "$work/client"
  commit=$(git -C "$checkout" rev-parse HEAD)
else
  git --git-dir="$checkout" archive HEAD client | tar -x -C "$work"
  commit=$(git --git-dir="$checkout" rev-parse HEAD)
fi
rm -rf "$work/client/node_modules" "$work/client/dist"
(cd "$work/client" && npm ci --no-audit --no-fund && npm run build)

rm -rf "$out/web"
mkdir -p "$out"
cp -r "$work/client/dist" "$out/web"
cp "$work/client/LICENSE" "$out/LICENSE"
# the packages bundled into web/assets (their production dependencies), with their licenses
(cd "$work/client" && node -e '
  const lock = require("./package-lock.json");
  for (const [path, p] of Object.entries(lock.packages)) {
    if (!path || p.dev) continue;
    const license = require(`./${path}/package.json`).license || "?";
    console.log(`${path.replace(/^.*node_modules\//, "")} ${p.version} ${license}`);
  }') | sort > "$out/BUNDLED_LICENSES.txt"
cat > "$out/SOURCE.txt" <<EOF
Kyutai's web client (https://github.com/kyutai-labs/moshi, folder client/), built unchanged.
commit: $commit
built with: node $(node --version), npm $(npm --version); npm ci, then npm run build (tsc && vite build)
license: MIT (LICENSE, from client/LICENSE); bundled packages: BUNDLED_LICENSES.txt
rebuild: scripts/build_kyutai_web_client.sh CHECKOUT
EOF
echo "built $out/web from $commit ($(du -sh "$out/web" | cut -f1))"
