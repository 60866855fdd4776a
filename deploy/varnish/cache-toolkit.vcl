vcl 4.1;

# Varnish in front of a service that uses cache-runtime (the fourth cache layer).
#
# What this VCL does, on top of Varnish's built-in behaviour (which still runs: every
# subroutine here falls through to the built-in one unless it returns):
#
# * Purges, from the ACL below only (see docs/EDGE.md and cache_runtime::edge):
#     PURGE /some/path                        -> drops that URL (every Vary variant) for this Host
#     PURGE /  with  xkey-purge: k1 k2 ...     -> drops every object tagged with any of the keys
#     PURGE /  with  xkey-softpurge: k1 ...    -> marks them stale (kept for grace/conditional use)
#     BAN /                                   -> drops every object of this Host (what the purge
#                                                queue sends when it folded more purges than it holds)
#   Surrogate keys come from the backend's `xkey` response header (vmod xkey), or from
#   `Surrogate-Key` when the backend only sends that one. Keys are space (or comma) separated
#   and percent-encoded by cache_runtime::edge::encode_surrogate_key on both sides.
# * Caching follows the backend's Cache-Control: s-maxage, then max-age, set the TTL (the
#   built-in behaviour); `private`, `no-store` and `no-cache` responses and responses with
#   Set-Cookie are never stored (built-in: they become "hit-for-miss" markers); a
#   stale-while-revalidate becomes grace (built-in).
# * Requests with Authorization or Cookie are passed to the backend, never answered from the
#   cache (built-in), as are methods other than GET and HEAD.
# * Conditional requests (If-None-Match / If-Modified-Since) are answered by Varnish from the
#   cached object's ETag / Last-Modified with a 304 (built-in).
# * Every response carries `x-cache: HIT | MISS | PASS` and `x-cache-hits: <n>` for the
#   object's hit count; the internal key headers are removed.

import std;
import xkey;

# BEGIN backend
# The service behind Varnish. The test harness (cache_tests::VarnishServer) replaces the
# lines between the BEGIN and END markers with its own backend.
backend default {
    .host = "127.0.0.1";
    .port = "8080";
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
}
# END backend

# Who may purge. Keep this to the application servers (or a purge proxy).
acl purgers {
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        # Objects keep their request's Host in obj.http.x-host (set in vcl_backend_response),
        # so the ban is checked by the ban lurker in the background.
        ban("obj.http.x-host == " + req.http.host);
        return (synth(200, "Banned"));
    }
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.xkey-purge) {
            set req.http.n-gone = xkey.purge(req.http.xkey-purge);
            return (synth(200, "Invalidated " + req.http.n-gone + " objects"));
        }
        if (req.http.xkey-softpurge) {
            set req.http.n-gone = xkey.softpurge(req.http.xkey-softpurge);
            return (synth(200, "Softpurged " + req.http.n-gone + " objects"));
        }
        # The object for this URL and Host, with all its Vary variants.
        return (purge);
    }
    # Per-user responses are never shared. (The built-in vcl_recv also passes these, and
    # requests with a Cookie; it is explicit here because it matters.)
    if (req.http.Authorization) {
        return (pass);
    }
    # Everything else: the built-in vcl_recv (GET/HEAD are looked up, other methods passed).
}

sub vcl_synth {
    if (req.method == "PURGE" || req.method == "BAN") {
        # A small plain body: purgers read it for their logs.
        set resp.http.Content-Type = "text/plain; charset=utf-8";
        set resp.body = resp.reason + {"
"};
        return (deliver);
    }
}

sub vcl_backend_response {
    # For host-wide bans (BAN /): lurker-friendly, removed before delivery.
    set beresp.http.x-host = bereq.http.host;
    # vmod xkey indexes objects by their `xkey` header; accept the Fastly-style header too.
    if (!beresp.http.xkey && beresp.http.Surrogate-Key) {
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    }
    # `private` is already uncacheable through the built-in vcl_backend_response; this only
    # makes sure an `s-maxage` next to `private` (a contradictory header) cannot store it.
    if (beresp.http.Cache-Control ~ "(?i)(^|[ ,])private([ ,=]|$)") {
        set beresp.uncacheable = true;
        set beresp.ttl = 120s;
        return (deliver);
    }
    # Falls through to the built-in vcl_backend_response: TTL from s-maxage / max-age /
    # Expires, no storing of no-store / no-cache / Set-Cookie / Vary: * responses.
}

sub vcl_deliver {
    if (obj.uncacheable) {
        set resp.http.x-cache = "PASS";
    } else if (obj.hits > 0) {
        set resp.http.x-cache = "HIT";
    } else {
        set resp.http.x-cache = "MISS";
    }
    set resp.http.x-cache-hits = obj.hits;
    # Surrogate keys are for this cache only.
    unset resp.http.xkey;
    unset resp.http.Surrogate-Key;
    unset resp.http.x-host;
}
