package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// Access is who may use the endpoint. With a Secret, every request but /healthz and the
// dashboard's static assets under /ui/ (which hold no data: the page asks for the secret and
// sends it with every call) must carry `Authorization: Bearer SECRET` or `?token=SECRET` (the
// way browsers' WebSocket clients, which cannot set headers, send it); others get 401. The
// comparison takes the same time whatever the guess. CORSOrigins are the origins whose pages
// may call the API from a browser ("*": any); without them no CORS header is ever sent.
type Access struct {
	Secret      string
	CORSOrigins []string
}

// Guarded serves h to the clients a lets in, as Listen does (for tests and embedders).
func Guarded(h http.Handler, a Access) http.Handler { return newGuard(h, a) }

// guard applies an Access, which a reload may replace, in front of the endpoint's handler.
type guard struct {
	next   http.Handler
	access atomic.Pointer[Access]
}

func newGuard(next http.Handler, a Access) *guard {
	g := &guard{next: next}
	g.set(a)
	return g
}

func (g *guard) set(a Access) {
	a.CORSOrigins = slices.Clone(a.CORSOrigins)
	g.access.Store(&a)
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a := g.access.Load()
	origin := r.Header.Get("Origin")
	allowed := origin != "" && a.allowsOrigin(origin)
	if site := r.Header.Get("Sec-Fetch-Site"); (site == "cross-site" || site == "same-site") && !allowed {
		// A browser sending a request on behalf of another site's page (an <img>, a form):
		// without a secret nothing else would stop it from, say, making socksgate fetch a URL
		// through DIRECT. A configured origin's dashboard is let through.
		writeError(w, http.StatusForbidden, "cross-site request from an origin not in admin.cors_origins")
		return
	}
	if allowed {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			// A preflight: answered here, before authentication (a browser sends no
			// Authorization header with it).
			h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
			h.Set("Access-Control-Max-Age", "300")
			if r.Header.Get("Access-Control-Request-Private-Network") == "true" {
				h.Set("Access-Control-Allow-Private-Network", "true")
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	if a.Secret != "" && !publicPath(r.URL.Path) && !a.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="socksgate"`)
		writeError(w, http.StatusUnauthorized, "Unauthorized")
		return
	}
	// Bounds for a request that is not a stream; a stream lifts them (liftDeadlines).
	rc := http.NewResponseController(w)
	now := time.Now()
	rc.SetReadDeadline(now.Add(10 * time.Second))
	rc.SetWriteDeadline(now.Add(30 * time.Second))
	g.next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), accessKey{}, a)))
}

// accessKey holds the request's *Access in its context (the WebSocket origin check).
type accessKey struct{}

// liftDeadlines clears the request bounds guard set, for a stream that lasts as long as its
// client (a WebSocket keeps the connection's deadlines after the upgrade).
func liftDeadlines(w http.ResponseWriter) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Time{})
	rc.SetWriteDeadline(time.Time{})
}

// publicPath reports whether path is served without the secret: the liveness probe, and the
// dashboard's static files.
func publicPath(path string) bool {
	return path == "/healthz" || path == "/ui" || strings.HasPrefix(path, "/ui/")
}

func (a *Access) allowsOrigin(origin string) bool {
	for _, o := range a.CORSOrigins {
		if o == "*" || strings.EqualFold(strings.TrimSuffix(o, "/"), origin) {
			return true
		}
	}
	return false
}

// authorized reports whether r carries the secret, as a bearer token or a token query.
func (a *Access) authorized(r *http.Request) bool {
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return sameSecret(strings.TrimSpace(tok), a.Secret)
	}
	if tok := r.URL.Query().Get("token"); tok != "" {
		return sameSecret(tok, a.Secret)
	}
	return false
}

// sameSecret compares in constant time, lengths included (both sides are hashed first).
func sameSecret(got, want string) bool {
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}
