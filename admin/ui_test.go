package admin

import (
	"bytes"
	"compress/gzip"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var updateUI = flag.Bool("update", false, "rewrite admin/ui/*.gz from the sources beside them")

// uiSources are the dashboard's source files, the ones a person edits.
func uiSources(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, pat := range []string{"*.html", "*.js", "*.css", "*.txt", "*.svg"} {
		m, err := filepath.Glob(filepath.Join("ui", pat))
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, m...)
	}
	if len(names) == 0 {
		t.Fatal("no dashboard sources in admin/ui")
	}
	return names
}

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(b) // no name, no time: the same source gives the same bytes
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gunzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The embedded .gz files are the sources beside them, compressed, and nothing else: a
// source edited without `-update` fails here, as does a stray .gz.
func TestUIAssetsMatchSources(t *testing.T) {
	srcs := uiSources(t)
	want := map[string]bool{}
	var raw, packed int
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(src)
		want[name] = true
		if *updateUI {
			if err := os.WriteFile(src+".gz", gzipBytes(t, b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		a, ok := uiAssets[name]
		gz := a.gz
		if *updateUI {
			gz, err = os.ReadFile(src + ".gz")
			if err != nil {
				t.Fatal(err)
			}
		} else if !ok {
			t.Errorf("%s is not embedded: add its .gz to admin/ui.go", src)
			continue
		}
		if !bytes.Equal(gunzipBytes(t, gz), b) {
			t.Errorf("%s.gz is not %s compressed: run go test ./admin -run TestUIAssetsMatchSources -update", src, src)
		}
		raw += len(b)
		packed += len(gz)
	}
	for name := range uiAssets {
		if !want[name] {
			t.Errorf("ui/%s.gz is embedded without a source beside it", name)
		}
	}
	// The budget: at most 300 KB of assets.
	if raw > 300_000 {
		t.Errorf("dashboard assets are %d bytes, over the 300 KB budget", raw)
	}
	t.Logf("dashboard assets: %d bytes, %d gzip-compressed", raw, packed)
}

func TestUIServesPrecompressed(t *testing.T) {
	h := Handler(fakeSource{}, "test")
	index, err := os.ReadFile("ui/index.html")
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string, hdr ...string) *http.Response {
		t.Helper()
		req := httptest.NewRequest("GET", path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}

	t.Run("gzip to a client that accepts it", func(t *testing.T) {
		r := get("/ui/", "Accept-Encoding", "gzip, deflate, br")
		body, _ := io.ReadAll(r.Body)
		if r.StatusCode != 200 || r.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("status %d, Content-Encoding %q; want 200 gzip", r.StatusCode, r.Header.Get("Content-Encoding"))
		}
		if !bytes.Equal(gunzipBytes(t, body), index) {
			t.Error("the gzip body is not index.html")
		}
		if got := r.Header.Get("Content-Type"); got != "text/html; charset=utf-8" {
			t.Errorf("Content-Type %q", got)
		}
		if r.Header.Get("Vary") != "Accept-Encoding" || r.Header.Get("Content-Security-Policy") == "" {
			t.Errorf("Vary %q, CSP %q", r.Header.Get("Vary"), r.Header.Get("Content-Security-Policy"))
		}
	})
	t.Run("plain to a client that does not", func(t *testing.T) {
		for _, ae := range []string{"", "identity", "gzip;q=0", "br, gzip;q=0, *"} {
			r := get("/ui/index.html", "Accept-Encoding", ae)
			body, _ := io.ReadAll(r.Body)
			if r.StatusCode != 200 || r.Header.Get("Content-Encoding") != "" || !bytes.Equal(body, index) {
				t.Errorf("Accept-Encoding %q: status %d, Content-Encoding %q, body equal %v",
					ae, r.StatusCode, r.Header.Get("Content-Encoding"), bytes.Equal(body, index))
			}
		}
	})
	t.Run("revalidation", func(t *testing.T) {
		r := get("/ui/app.js", "Accept-Encoding", "gzip")
		etag := r.Header.Get("ETag")
		if etag == "" || r.Header.Get("Content-Type") != "text/javascript; charset=utf-8" {
			t.Fatalf("ETag %q, Content-Type %q", etag, r.Header.Get("Content-Type"))
		}
		if r := get("/ui/app.js", "Accept-Encoding", "gzip", "If-None-Match", etag); r.StatusCode != http.StatusNotModified {
			t.Errorf("If-None-Match its own ETag: %d, want 304", r.StatusCode)
		}
		if r := get("/ui/app.js", "If-None-Match", etag); r.StatusCode != 200 {
			t.Errorf("the gzip ETag matched the plain representation: %d", r.StatusCode)
		}
	})
	t.Run("redirect and not found", func(t *testing.T) {
		if r := get("/ui"); r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "/ui/" {
			t.Errorf("/ui: %d to %q", r.StatusCode, r.Header.Get("Location"))
		}
		for _, p := range []string{"/ui/nope.js", "/ui/app.js.gz", "/ui/sub/index.html"} {
			if r := get(p, "Accept-Encoding", "gzip"); r.StatusCode != http.StatusNotFound {
				t.Errorf("%s: %d, want 404", p, r.StatusCode)
			}
		}
		// ServeMux cleans the path first (a redirect to /admin.go, which is not served).
		if r := get("/ui/../admin.go"); r.StatusCode == http.StatusOK {
			t.Errorf("/ui/../admin.go: %d", r.StatusCode)
		}
	})
	t.Run("HEAD has no body", func(t *testing.T) {
		req := httptest.NewRequest("HEAD", "/ui/app.css", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 || rec.Body.Len() != 0 || rec.Header().Get("Content-Length") == "" {
			t.Errorf("HEAD: %d, %d body bytes, Content-Length %q", rec.Code, rec.Body.Len(), rec.Header().Get("Content-Length"))
		}
	})
}

func TestAcceptsGzip(t *testing.T) {
	for _, c := range []struct {
		in   string
		want bool
	}{
		{"", false},
		{"gzip", true},
		{"GZIP", true},
		{"x-gzip", true},
		{"deflate, gzip;q=0.5", true},
		{"gzip;q=0", false},
		{"gzip; q=0.000", false},
		{"*", true},
		{"*;q=0", false},
		{"gzip;q=0, *", false},
		{"br, identity", false},
		{"gzip;q=bogus", false},
	} {
		if got := acceptsGzip([]string{c.in}); got != c.want {
			t.Errorf("acceptsGzip(%q) = %v, want %v", c.in, got, c.want)
		}
	}
	if !acceptsGzip([]string{"br", "gzip"}) {
		t.Error("gzip in a second Accept-Encoding header was missed")
	}
}

// The page loads nothing from elsewhere (scripts, styles, fonts, images: only its own
// files), so it works without a network beyond the admin endpoint. The CSP says the same to
// the browser.
func TestUIWorksOffline(t *testing.T) {
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?\s*(https?:)?//|@import|import\s*\(|fetch\(\s*["'](https?:)?//|new WebSocket\(\s*["']`)
	for _, src := range uiSources(t) {
		b, _ := os.ReadFile(src)
		for _, loc := range remote.FindAllIndex(b, -1) {
			line := 1 + bytes.Count(b[:loc[0]], []byte("\n"))
			t.Errorf("%s:%d loads %q from elsewhere: the dashboard must work offline", src, line, b[loc[0]:loc[1]])
		}
	}
	index, _ := os.ReadFile("ui/index.html")
	for _, ref := range []string{`src="app.js"`, `href="app.css"`} {
		if !strings.Contains(string(index), ref) {
			t.Errorf("index.html lacks %s", ref)
		}
	}
}
