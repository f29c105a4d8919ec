package admin

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// The dashboard's assets (admin/ui/*.html, *.js, *.css) are committed beside their gzip
// compression, and only the .gz files are embedded: the binary carries about a third of the
// bytes, and a browser (they all accept gzip) gets them as they are. A client that does not
// accept gzip gets them decompressed on the fly. TestUIAssetsMatchSources keeps the two in
// step; `go test ./admin -run TestUIAssetsMatchSources -update` rewrites the .gz files.
// Each file is its own []byte rather than an embed.FS: the FS and io/fs code would cost the
// binary more than the page's CSS.
var (
	//go:embed ui/index.html.gz
	uiIndexHTML []byte
	//go:embed ui/app.js.gz
	uiAppJS []byte
	//go:embed ui/app.css.gz
	uiAppCSS []byte
)

// uiAsset is one embedded file, ready to serve.
type uiAsset struct {
	gz    []byte // gzip-compressed content
	ctype string
	etag  string // of the content; the gzip representation adds -gz
}

// uiAssets are the files under /ui/ by name.
var uiAssets = func() map[string]uiAsset {
	assets := map[string]uiAsset{}
	for name, gz := range map[string][]byte{"index.html": uiIndexHTML, "app.js": uiAppJS, "app.css": uiAppCSS} {
		sum := sha256.Sum256(gz)
		assets[name] = uiAsset{gz: gz, ctype: uiContentType(name), etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return assets
}()

func uiContentType(name string) string {
	switch path.Ext(name) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	case ".txt":
		return "text/plain; charset=utf-8"
	}
	return "application/octet-stream"
}

// uiCSP keeps the page to its own origin: scripts and styles only from the embedded files,
// API calls and WebSockets only to the endpoint that served it, and no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// registerUI serves the dashboard at /ui/. The assets hold no data (the page asks for the
// secret and sends it with each API call), so they need no authentication.
func registerUI(mux *http.ServeMux) {
	mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
	mux.HandleFunc("GET /ui/{file...}", serveUI)
}

func serveUI(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if name == "" {
		name = "index.html"
	}
	a, ok := uiAssets[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache") // revalidate: a new binary brings new assets
	h.Set("Vary", "Accept-Encoding")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	if a.ctype == "text/html; charset=utf-8" {
		h.Set("Content-Security-Policy", uiCSP)
	}
	gzipped := acceptsGzip(r.Header.Values("Accept-Encoding"))
	etag := a.etag
	if gzipped {
		etag = a.etag[:len(a.etag)-1] + `-gz"`
	}
	h.Set("ETag", etag)
	if inm := r.Header.Get("If-None-Match"); inm != "" && etagListHas(inm, etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	if gzipped {
		h.Set("Content-Encoding", "gzip")
		h.Set("Content-Length", strconv.Itoa(len(a.gz)))
		if r.Method != http.MethodHead {
			w.Write(a.gz)
		}
		return
	}
	zr, err := gzip.NewReader(bytes.NewReader(a.gz))
	if err != nil {
		http.Error(w, "corrupt embedded asset", http.StatusInternalServerError)
		return
	}
	if r.Method != http.MethodHead {
		io.Copy(w, zr)
	}
}

// acceptsGzip reports whether Accept-Encoding header values (RFC 9110 §12.5.3) accept
// gzip: listed as gzip, x-gzip or * with a q above zero. An explicit gzip;q=0 refuses it
// even when * is accepted.
func acceptsGzip(values []string) bool {
	star := false
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			coding, params, _ := strings.Cut(item, ";")
			coding = strings.ToLower(strings.TrimSpace(coding))
			if coding != "gzip" && coding != "x-gzip" && coding != "*" {
				continue
			}
			q := 1.0
			for _, p := range strings.Split(params, ";") {
				k, val, ok := strings.Cut(strings.TrimSpace(p), "=")
				if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
					f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
					if err != nil {
						f = 0
					}
					q = f
				}
			}
			if coding == "*" {
				star = q > 0
				continue
			}
			return q > 0
		}
	}
	return star
}

// etagListHas reports whether an If-None-Match value names etag (weak comparison, as
// RFC 9110 §13.1.2 has it for If-None-Match).
func etagListHas(list, etag string) bool {
	if strings.TrimSpace(list) == "*" {
		return true
	}
	for _, t := range strings.Split(list, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag {
			return true
		}
	}
	return false
}
