#!/bin/sh
# The official nginx image's templates step, then nginx in the foreground.
set -eu
mkdir -p /etc/nginx/conf.d
for t in /etc/nginx/templates/*.template; do
    [ -e "$t" ] || continue
    vars=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
    envsubst "$vars" <"$t" >"/etc/nginx/conf.d/$(basename "$t" .template)"
done
exec nginx -g 'daemon off;'
