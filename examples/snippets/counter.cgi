#!/bin/sh
# A CGI script behind sessiongate: a visit counter kept in the session.
# No session code: the proxy passes the session in, the script writes back
# with a response header, and the proxy stores it (the browser never sees it).
#
# The web server turns the request header X-Session-Data into the CGI
# variable HTTP_X_SESSION_DATA, e.g. "count=3&user=alice" (form-urlencoded,
# keys sorted, unset when the session is empty).
set -f                                  # the data is split below, never globbed

count=0
IFS='&'
for pair in ${HTTP_X_SESSION_DATA:-}; do
    case $pair in
        count=*) count=${pair#count=} ;;
    esac
done
unset IFS
case $count in
    '' | *[!0-9]*) count=0 ;;           # not a number: start again
esac
count=$((count + 1))

printf 'Content-Type: text/plain; charset=utf-8\n'
printf 'Cache-Control: no-store\n'
printf 'X-Session-Set: count=%s\n' "$count"   # consumed by sessiongate
printf '\n'
printf 'Visit number %s in this session.\n' "$count"
