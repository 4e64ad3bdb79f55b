#!/bin/sh
# Starts the gateway locally: tools, local D1 with migrations, a ready token, then wrangler dev.
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
sh scripts/build.sh

PORT="${PORT:-8787}"
if [ ! -f .dev.vars ]; then
  # A local admin token so the admin routes work out of the box; never committed (.gitignore).
  echo "ADMIN_TOKEN=$(node -e 'console.log(require("crypto").randomBytes(24).toString("hex"))')" > .dev.vars
  echo "[dev] wrote .dev.vars with a fresh ADMIN_TOKEN"
fi

CI=1 npx wrangler d1 migrations apply DB --local >/dev/null
# A development token for user "dev", minted straight into local D1 (stored as its SHA-256, like any token).
TOKEN=$(node -e 'console.log("dev_" + require("crypto").randomBytes(24).toString("hex"))')
HASH=$(printf '%s' "$TOKEN" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(require("crypto").createHash("sha256").update(s).digest("hex")))')
NOW=$(node -e 'console.log(Date.now())')
npx wrangler d1 execute DB --local --command \
  "DELETE FROM api_tokens WHERE name = 'dev'; INSERT INTO api_tokens (token_hash, user_id, name, created_at) VALUES ('$HASH', 'dev', 'dev', $NOW);" >/dev/null

cat <<MSG

  Gateway:   http://localhost:$PORT/          (chat page)
  WebSocket: ws://localhost:$PORT/chat?token=$TOKEN
  socket.io: io("http://localhost:$PORT/chat", { transports: ["websocket"], auth: { token: "$TOKEN" } })
  Token:     $TOKEN

MSG
exec npx wrangler dev --port "$PORT" --ip 127.0.0.1
