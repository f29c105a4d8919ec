package configs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"path/filepath"
	"strings"
)

// UpstreamTLS configures the TLS that an https:// or socks5+tls:// upstream is spoken over.
// The zero value verifies the proxy's certificate against the system's roots and the URL's
// host.
type UpstreamTLS struct {
	// ServerName is the name sent as SNI and that the certificate must be valid for. Default:
	// the URL's host (an IP literal is checked against the certificate's IP addresses and sends
	// no SNI).
	ServerName string `yaml:"server_name"`
	// CA is a PEM file of the certificates the proxy's chain must lead to, instead of the
	// system's roots.
	CA string `yaml:"ca"`
	// PinSHA256 are SHA-256 hashes of the SubjectPublicKeyInfo of the proxy's own (leaf)
	// certificate, as curl's --pinnedpubkey sha256//; when set, the key must be one of them, on
	// top of the chain's verification (or instead of it, with Insecure).
	PinSHA256 []Pin `yaml:"pin_sha256"`
	// Insecure skips the verification of the chain and the name. With PinSHA256 the pin is
	// still checked (the way to trust a self-signed proxy); without, anyone on the path can
	// pose as the proxy (check warns).
	Insecure bool `yaml:"insecure"`
}

// Pin is the SHA-256 of a certificate's DER-encoded SubjectPublicKeyInfo.
type Pin [sha256.Size]byte

// PinOf is the pin of cert's public key.
func PinOf(cert *x509.Certificate) Pin { return sha256.Sum256(cert.RawSubjectPublicKeyInfo) }

// ParsePin reads a pin written as curl writes it ("sha256//" and base64), as plain base64
// (padded or not), or as 64 hex digits (with or without colons between the bytes, as openssl
// prints a fingerprint).
func ParsePin(s string) (Pin, error) {
	var p Pin
	s = strings.TrimSpace(s)
	v := strings.TrimPrefix(s, "sha256//")
	var b []byte
	var err error
	switch {
	case v == "":
		return p, errors.New("empty pin (want sha256//BASE64, BASE64 or 64 hex digits of the SHA-256 of the certificate's SubjectPublicKeyInfo)")
	case strings.Contains(v, ";"):
		return p, errorf("pin %q: one pin per entry (curl's \";\" list is written as a YAML list here)", s)
	case v != s: // curl's form: base64 only
		b, err = decodeBase64(v)
	case len(v) == 2*sha256.Size || len(v) == 3*sha256.Size-1 && strings.Count(v, ":") == sha256.Size-1:
		b, err = hex.DecodeString(strings.ReplaceAll(v, ":", ""))
	default:
		b, err = decodeBase64(v)
	}
	if err != nil || len(b) != sha256.Size {
		return p, errorf("invalid pin %q: want sha256//BASE64, BASE64 or 64 hex digits of the SHA-256 (32 bytes) of the certificate's SubjectPublicKeyInfo", s)
	}
	copy(p[:], b)
	return p, nil
}

func decodeBase64(s string) ([]byte, error) {
	if strings.HasSuffix(s, "=") {
		return base64.StdEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// String is the pin in curl's form, sha256//BASE64.
func (p Pin) String() string { return "sha256//" + base64.StdEncoding.EncodeToString(p[:]) }

// MarshalText writes the pin in curl's form.
func (p Pin) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads a pin as ParsePin does.
func (p *Pin) UnmarshalText(b []byte) error {
	v, err := ParsePin(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// IsTLS reports whether the upstream's scheme is spoken over TLS (https, socks5+tls).
func (u *Upstream) IsTLS() bool {
	return u.URL != nil && (u.URL.Scheme == SchemeHTTPS || u.URL.Scheme == SchemeSOCKS5TLS)
}

// validateTLS checks an upstream's tls block: only on a TLS scheme, a readable CA file, a
// server name that can be one.
func validateTLS(p *problems, path string, u *Upstream) {
	t := u.TLS
	if t == nil {
		return
	}
	if u.URL != nil && u.urlErr == "" && !u.IsTLS() {
		p.add(path, "applies only to https:// and socks5+tls:// upstreams, not %s://", u.URL.Scheme)
		return
	}
	if t.ServerName != "" && !validHost(t.ServerName) {
		p.add(path+".server_name", "invalid name %q", t.ServerName)
	}
	if t.CA != "" {
		if _, err := LoadCertPool(t.CA); err != nil {
			p.add(path+".ca", "%v", err)
		}
	}
}

// tlsWarnings are the findings about upstreams' tls blocks: no verification at all, or a CA
// file that insecure makes unused.
func (c *Config) tlsWarnings() []string {
	var w []string
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		t := u.TLS
		if t == nil || !t.Insecure {
			continue
		}
		if len(t.PinSHA256) == 0 {
			w = append(w, sprintf("upstreams[%d] (%q).tls.insecure: true verifies nothing of the proxy's certificate: "+
				"anyone on the path can pose as the proxy and read the flows and the proxy's password; "+
				"give the proxy's CA (ca: FILE) or pin its key (pin_sha256)", i, u.Name))
		}
		if t.CA != "" {
			w = append(w, sprintf("upstreams[%d] (%q).tls.ca is not used: insecure: true skips the chain's verification", i, u.Name))
		}
	}
	return w
}

// resolveFiles makes the relative tls.ca file names absolute against dir, the directory of the
// config file ("": left as they are, relative to the working directory): a daemon's working
// directory is /, and a file beside the config is what a relative name in it means.
func (c *Config) resolveFiles(dir string) {
	if dir == "" {
		return
	}
	for i := range c.Upstreams {
		if t := c.Upstreams[i].TLS; t != nil && t.CA != "" && !filepath.IsAbs(t.CA) {
			t.CA = filepath.Join(dir, t.CA)
		}
	}
}
