package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/socksgate/socksgate/admin"
	"github.com/socksgate/socksgate/configs"
)

// statusMain is `socksgate status [-c FILE] [-a HOST:PORT]`: the live flows and upstream
// health of a running socksgate, read from its admin endpoint, as tables. With -c the address
// (unless -a is given) and the secret come from the config's admin: key.
func statusMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("a", "127.0.0.1:9091", "admin endpoint address (the config's admin.listen)")
	path := fs.String("c", "", "config file: the admin endpoint's address and secret")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	base, secret := *addr, ""
	if *path != "" {
		cfg, err := configs.Load(*path)
		if err != nil {
			fmt.Fprintf(stderr, "socksgate status: %v\n", err)
			return 2
		}
		if cfg.Admin.Listen == "" {
			fmt.Fprintf(stderr, "socksgate status: %s has no admin endpoint (admin: is not set)\n", *path)
			return 2
		}
		secret = string(cfg.Admin.Secret)
		aGiven := false
		fs.Visit(func(f *flag.Flag) { aGiven = aGiven || f.Name == "a" })
		if !aGiven {
			base = dialable(cfg.Admin.Listen)
		}
	}
	if !strings.Contains(base, "://") {
		if _, _, err := net.SplitHostPort(base); err != nil {
			fmt.Fprintf(stderr, "socksgate status: -a %q: want HOST:PORT\n", *addr)
			return 2
		}
		base = "http://" + base
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := admin.Client{Base: strings.TrimRight(base, "/"), Secret: secret}
	ups, err := c.Upstreams(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate status: %v (is admin: set in the config?)\n", err)
		return 1
	}
	flows, err := c.Flows(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "socksgate status: %v\n", err)
		return 1
	}
	printStatus(stdout, ups, flows)
	return 0
}

// dialable turns a listen address into one to connect to: every address (":9091",
// "0.0.0.0:9091", "[::]:9091") is reached on loopback.
func dialable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if err == nil && ip.Is6() {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// printStatus writes the upstream and flow tables.
func printStatus(w io.Writer, ups []admin.Upstream, flows []admin.Flow) {
	fmt.Fprintf(w, "UPSTREAMS (%d)\n", len(ups))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tGROUP\tSTATE\tSINCE\tURL\tREASON")
	for _, u := range ups {
		state := "down"
		if u.Up {
			state = "up"
		}
		since := "-"
		if !u.Since.IsZero() {
			since = time.Since(u.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", u.Name, dash(u.Group), state, since, dash(u.URL), dash(u.Reason))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nFLOWS (%d)\n", len(flows))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tSRC\tDST\tNAME\tINBOUND\tUPSTREAM\tRULE\tAGE\tUP\tDOWN")
	for _, f := range flows {
		age := (time.Duration(f.Age*1000) * time.Millisecond).Round(time.Second)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Network, f.Src, dash(f.Dst), dash(f.Name),
			f.Inbound, dash(f.Upstream), dash(f.Rule), age, humanBytes(f.BytesUp), humanBytes(f.BytesDown))
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// humanBytes prints n with a binary unit: 512B, 1.5KiB, 3.2MiB.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
