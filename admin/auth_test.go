package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// With a secret every path but /healthz and the dashboard's static files answers 401 unless
// the request carries the secret as a bearer token or a token query.
func TestSecretIsRequired(t *testing.T) {
	h := Guarded(Handler(testSource, "test"), Access{Secret: "s3cret"})
	for _, c := range []struct {
		name, path, auth string
		want             int
	}{
		{"no secret", "/flows", "", 401},
		{"wrong secret", "/flows", "Bearer nope", 401},
		{"prefix of the secret", "/flows", "Bearer s3cre", 401},
		{"basic, not bearer", "/flows", "Basic czNjcmV0", 401},
		{"bearer", "/flows", "Bearer s3cret", 200},
		{"bearer, any case", "/upstreams", "bearer s3cret", 200},
		{"token query", "/flows?token=s3cret", "", 200},
		{"wrong token query", "/flows?token=x", "", 401},
		{"metrics too", "/metrics", "", 401},
		{"the clash api too", "/version", "", 401},
		{"healthz is open", "/healthz", "", 200},
		{"unknown path", "/nothing", "", 401},
		{"the dashboard's files are open", "/ui/", "", 200},
		{"and its script", "/ui/app.js", "", 200},
		{"a missing file is a 404, not a 401", "/ui/nope.js", "", 404},
	} {
		r := httptest.NewRequest(http.MethodGet, c.path, nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != c.want {
			t.Errorf("%s: GET %s: %d, want %d (%s)", c.name, c.path, rec.Code, c.want, rec.Body)
		}
		if rec.Code == 401 {
			if got := rec.Body.String(); got != "{\"message\":\"Unauthorized\"}\n" {
				t.Errorf("%s: 401 body %q", c.name, got)
			}
			if rec.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("%s: 401 without WWW-Authenticate", c.name)
			}
		}
	}
	open := Guarded(Handler(testSource, "test"), Access{})
	if code, body := get(t, open, "/flows"); code != 200 {
		t.Errorf("no secret configured: %d %s", code, body)
	}
}

// CORS headers go only to the configured origins; a preflight from one is answered without
// the secret (browsers send none with it), anything else from it still needs the secret.
func TestCORSOnlyForConfiguredOrigins(t *testing.T) {
	h := Guarded(Handler(testSource, "test"), Access{Secret: "s", CORSOrigins: []string{"http://192.168.1.1:8080"}})
	pre := func(origin string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodOptions, "/connections", nil)
		r.Header.Set("Origin", origin)
		r.Header.Set("Access-Control-Request-Method", "DELETE")
		r.Header.Set("Access-Control-Request-Private-Network", "true")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	ok := pre("http://192.168.1.1:8080")
	if ok.Code != 204 || ok.Header().Get("Access-Control-Allow-Origin") != "http://192.168.1.1:8080" ||
		ok.Header().Get("Access-Control-Allow-Headers") != "Authorization, Content-Type" ||
		ok.Header().Get("Access-Control-Allow-Private-Network") != "true" {
		t.Errorf("preflight from the configured origin: %d %v", ok.Code, ok.Header())
	}
	other := pre("http://evil.example")
	if other.Code != 401 || other.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin: %d %v", other.Code, other.Header())
	}
	r := httptest.NewRequest(http.MethodGet, "/version", nil)
	r.Header.Set("Origin", "http://192.168.1.1:8080")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != 401 || rec.Header().Get("Access-Control-Allow-Origin") == "" {
		t.Errorf("GET from the origin without the secret: %d %v (want 401 the page can read)", rec.Code, rec.Header())
	}
	none := Guarded(Handler(testSource, "test"), Access{})
	r = httptest.NewRequest(http.MethodGet, "/flows", nil)
	r.Header.Set("Origin", "http://192.168.1.1:8080")
	rec = httptest.NewRecorder()
	none.ServeHTTP(rec, r)
	for k := range rec.Header() {
		if len(k) > 15 && k[:15] == "Access-Control-" {
			t.Errorf("no origins configured, yet %s: %s", k, rec.Header().Get(k))
		}
	}
}

// The secret of a running endpoint changes with SetAccess, for the next request.
func TestSetAccessAppliesToNextRequest(t *testing.T) {
	s, err := Listen("127.0.0.1:0", testSource, "test", Access{Secret: "old"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := Client{Base: "http://" + s.Addr().String(), Secret: "old"}
	if _, err := c.Flows(t.Context()); err != nil {
		t.Fatalf("old secret: %v", err)
	}
	s.SetAccess(Access{Secret: "new"})
	if _, err := c.Flows(t.Context()); err == nil {
		t.Fatal("old secret still accepted")
	}
	c.Secret = "new"
	if _, err := c.Flows(t.Context()); err != nil {
		t.Fatalf("new secret: %v", err)
	}
}

// A browser's request made for another site's page (Sec-Fetch-Site cross-site or same-site) is
// refused unless it comes from a configured origin; the endpoint's own pages, typed URLs and
// clients that are not browsers are not affected.
func TestCrossSiteBrowserRequestsAreRefused(t *testing.T) {
	h := Guarded(Handler(testSource, "test"), Access{CORSOrigins: []string{"http://dash.example"}})
	for _, c := range []struct {
		site, origin string
		want         int
	}{
		{"", "", 200},
		{"none", "", 200},
		{"same-origin", "", 200},
		{"cross-site", "", 403},
		{"same-site", "http://other.example", 403},
		{"cross-site", "http://evil.example", 403},
		{"cross-site", "http://dash.example", 200},
	} {
		r := httptest.NewRequest(http.MethodGet, "/flows", nil)
		if c.site != "" {
			r.Header.Set("Sec-Fetch-Site", c.site)
		}
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != c.want {
			t.Errorf("Sec-Fetch-Site %q, Origin %q: %d, want %d", c.site, c.origin, rec.Code, c.want)
		}
	}
}
